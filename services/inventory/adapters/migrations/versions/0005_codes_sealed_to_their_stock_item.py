"""Codes say what their ciphertext is bound to: 1 their SKU (every code stocked until now),
2 their stock item (SKU and id; shared/crypto.py Binding).

The default 1 stays: it is right for every writer older than this revision (they seal to
the SKU), so an old inventory still running while the schema moves on keeps stocking
(docs/runbook.md: the deploy order). The column comes with a constant default and its check
NOT VALID, so the table is locked for an instant, not for a scan (under a lock timeout: a
migration waiting behind a long transaction fails instead of queueing every order behind
it); the check is validated after the migration's transaction, under a lock that lets
orders go on.

Revision ID: 0005
"""

from shared.db import run_script, run_script_outside_transaction

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        SET LOCAL lock_timeout = '5s';
        ALTER TABLE codes ADD COLUMN binding smallint NOT NULL DEFAULT 1;
        ALTER TABLE codes ADD CONSTRAINT codes_binding_check CHECK (binding IN (1, 2)) NOT VALID;
        """
    )
    run_script_outside_transaction("ALTER TABLE codes VALIDATE CONSTRAINT codes_binding_check;")


def downgrade() -> None:
    # Refused while a code is sealed to its stock item: revision 0004 could not open it. The
    # table is locked first, so no such code can be stocked between the check and the drop.
    run_script(
        """
        LOCK TABLE codes IN ACCESS EXCLUSIVE MODE;
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
