"""Codes say which version their fingerprint is: 1 the HMAC of the code as given (every code
stocked until now), 2 the HMAC of its normal form (shared/crypto.py normal_form). A code
found on re-fingerprinting to be the same code as another holds no fingerprint and, unless
already sold, is set aside (DUPLICATE); so is a code that cannot be opened (UNREADABLE).

A migration holds no keys, so inventory itself re-fingerprints the version 1 rows
(services/inventory/service_layer/catalog.py refingerprint_stock, in a loop). Meanwhile only
version 2 codes are sold and deliveries wait in pending_deliveries. The default 1 stays: an
older inventory still writing (it fingerprints the old way) labels its rows rightly, and
they are re-fingerprinted like the others.

As in 0005: constant defaults, checks NOT VALID then validated outside the migration's
transaction, the index built CONCURRENTLY, a lock timeout on the brief exclusive lock.

Revision ID: 0006
"""

from shared.db import run_script, run_script_outside_transaction

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        SET LOCAL lock_timeout = '5s';
        ALTER TABLE codes ADD COLUMN fingerprint_version smallint NOT NULL DEFAULT 1;
        ALTER TABLE codes ADD CONSTRAINT codes_fingerprint_version_check
            CHECK (fingerprint_version IN (1, 2)) NOT VALID;
        ALTER TABLE codes ALTER COLUMN fingerprint DROP NOT NULL;
        ALTER TABLE codes DROP CONSTRAINT codes_status_check;
        ALTER TABLE codes ADD CONSTRAINT codes_status_check
            CHECK (status IN ('AVAILABLE', 'SOLD', 'DUPLICATE', 'UNREADABLE')) NOT VALID;
        ALTER TABLE codes ADD CONSTRAINT codes_for_sale_has_fingerprint
            CHECK (status <> 'AVAILABLE' OR fingerprint IS NOT NULL) NOT VALID;
        CREATE TABLE pending_deliveries (
            delivery_id text PRIMARY KEY,
            sku text NOT NULL,
            command jsonb NOT NULL,
            received_at timestamptz NOT NULL DEFAULT now()
        );
        """
    )
    run_script_outside_transaction(
        """
        ALTER TABLE codes VALIDATE CONSTRAINT codes_fingerprint_version_check;
        ALTER TABLE codes VALIDATE CONSTRAINT codes_status_check;
        ALTER TABLE codes VALIDATE CONSTRAINT codes_for_sale_has_fingerprint;
        CREATE INDEX CONCURRENTLY IF NOT EXISTS codes_old_fingerprints
            ON codes ((status <> 'SOLD'), id) WHERE fingerprint_version = 1;
        """
    )


def downgrade() -> None:
    # Refused once a code has a version 2 fingerprint (or none): revision 0005 would take
    # it for version 1, and could not tell a code set aside from a code for sale; and while
    # a delivery waits (0005 has nowhere to keep it). The table is locked first, so nothing
    # changes between the check and the drop.
    run_script(
        """
        LOCK TABLE codes IN ACCESS EXCLUSIVE MODE;
        LOCK TABLE pending_deliveries IN ACCESS EXCLUSIVE MODE;
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM codes WHERE fingerprint_version <> 1) THEN
                RAISE EXCEPTION 'codes have version 2 fingerprints: revision 0005 cannot '
                    'read them, so the downgrade stops here';
            END IF;
            IF EXISTS (SELECT 1 FROM pending_deliveries) THEN
                RAISE EXCEPTION 'deliveries wait in pending_deliveries: revision 0005 would '
                    'lose them, so the downgrade stops here';
            END IF;
        END $$;
        DROP TABLE pending_deliveries;
        DROP INDEX codes_old_fingerprints;
        ALTER TABLE codes DROP CONSTRAINT codes_for_sale_has_fingerprint;
        ALTER TABLE codes DROP CONSTRAINT codes_status_check;
        ALTER TABLE codes ADD CONSTRAINT codes_status_check
            CHECK (status IN ('AVAILABLE', 'SOLD'));
        ALTER TABLE codes ALTER COLUMN fingerprint SET NOT NULL;
        ALTER TABLE codes DROP COLUMN fingerprint_version;
        """
    )
