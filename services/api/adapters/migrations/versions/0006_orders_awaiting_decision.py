"""An index of the orders awaiting inventory's decision (PROCESSING, never backordered): the
stuck-order gauge and the deadline sweep read them without walking every backorder.

Built CONCURRENTLY (outside the migration's transaction), so orders keep being written
while it builds on a large table.

Revision ID: 0006
"""

from shared.db import run_script_outside_transaction

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script_outside_transaction(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_awaiting_decision ON orders "
        "(created_at) WHERE status = 'PROCESSING' AND backordered_at IS NULL"
    )


def downgrade() -> None:
    run_script_outside_transaction("DROP INDEX CONCURRENTLY IF EXISTS orders_awaiting_decision")
