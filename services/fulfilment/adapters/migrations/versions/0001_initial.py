"""Backorders and the outbox.

Revision ID: 0001
"""

from shared.db import run_script
from shared.messaging import OUTBOX_DDL

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(OUTBOX_DDL)
    run_script(
        """
        CREATE TABLE backorders (
            transaction_id text PRIMARY KEY,
            account_id     uuid        NOT NULL,
            sku            text        NOT NULL,
            placed_at      timestamptz NOT NULL,
            deadline_at    timestamptz NOT NULL,
            state          text        NOT NULL DEFAULT 'WAITING'
                CHECK (state IN ('WAITING', 'ALLOCATING', 'COMPLETED', 'CANCELLING', 'CANCELLED')),
            updated_at     timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX backorders_waiting ON backorders (sku, placed_at, transaction_id)
            WHERE state IN ('WAITING', 'ALLOCATING');
        CREATE INDEX backorders_deadline ON backorders (deadline_at)
            WHERE state IN ('WAITING', 'ALLOCATING');
        """
    )


def downgrade() -> None:
    run_script("DROP TABLE backorders; DROP TABLE outbox; DROP FUNCTION outbox_notify();")
