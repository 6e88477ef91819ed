"""Codes say which version their fingerprint is: 1 the HMAC of the code as given (every code
stocked until now), 2 the HMAC of its normal form (shared/crypto.py normal_form). A code
found on re-fingerprinting to be the same code as another holds no fingerprint and, unless
already sold, is set aside (DUPLICATE).

A migration holds no keys, so inventory itself re-fingerprints the version 1 rows, at start
(services/inventory/service_layer/catalog.py refingerprint_stock), and stocks nothing until
it is done. No default once the existing rows have theirs: an inventory older than this
revision cannot stock a code with a version 1 fingerprint.

Revision ID: 0006
"""

from shared.db import run_script

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        ALTER TABLE codes ADD COLUMN fingerprint_version smallint NOT NULL DEFAULT 1
            CHECK (fingerprint_version IN (1, 2));
        ALTER TABLE codes
            ALTER COLUMN fingerprint_version DROP DEFAULT,
            ALTER COLUMN fingerprint DROP NOT NULL;
        ALTER TABLE codes DROP CONSTRAINT codes_status_check;
        ALTER TABLE codes ADD CONSTRAINT codes_status_check
            CHECK (status IN ('AVAILABLE', 'SOLD', 'DUPLICATE'));
        ALTER TABLE codes ADD CONSTRAINT codes_for_sale_has_fingerprint
            CHECK (status <> 'AVAILABLE' OR fingerprint IS NOT NULL);
        CREATE INDEX codes_old_fingerprints ON codes (id) WHERE fingerprint_version = 1;
        """
    )


def downgrade() -> None:
    # Refused once a code has a version 2 fingerprint (or none): revision 0005 would take
    # it for version 1, and could not tell a duplicate set aside from a code for sale.
    run_script(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM codes WHERE fingerprint_version <> 1) THEN
                RAISE EXCEPTION 'codes have version 2 fingerprints: revision 0005 cannot '
                    'read them, so the downgrade stops here';
            END IF;
        END $$;
        DROP INDEX codes_old_fingerprints;
        ALTER TABLE codes DROP CONSTRAINT codes_for_sale_has_fingerprint;
        ALTER TABLE codes DROP CONSTRAINT codes_status_check;
        ALTER TABLE codes ADD CONSTRAINT codes_status_check
            CHECK (status IN ('AVAILABLE', 'SOLD'));
        ALTER TABLE codes ALTER COLUMN fingerprint SET NOT NULL;
        ALTER TABLE codes DROP COLUMN fingerprint_version;
        """
    )
