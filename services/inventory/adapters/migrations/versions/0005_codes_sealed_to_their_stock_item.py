"""Codes say what their ciphertext is bound to: 1 their SKU (every code stocked until now),
2 their stock item (SKU and id; shared/crypto.py Binding).

No default once the existing rows have theirs: an inventory older than this revision cannot
stock a code sealed to its SKU only.

Revision ID: 0005
"""

from shared.db import run_script

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        ALTER TABLE codes
            ADD COLUMN binding smallint NOT NULL DEFAULT 1 CHECK (binding IN (1, 2));
        ALTER TABLE codes ALTER COLUMN binding DROP DEFAULT;
        """
    )


def downgrade() -> None:
    # Refused while a code is sealed to its stock item: revision 0004 could not open it.
    run_script(
        """
        DO $$
        BEGIN
            IF EXISTS (SELECT 1 FROM codes WHERE binding <> 1) THEN
                RAISE EXCEPTION 'codes are sealed to their stock item (binding 2): '
                    'revision 0004 cannot open them, so the downgrade stops here';
            END IF;
        END $$;
        ALTER TABLE codes DROP COLUMN binding;
        """
    )
