"""Why a backorder was cancelled, so its cancellation can be announced again.

Revision ID: 0002
"""

from shared.db import run_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        "ALTER TABLE decisions ADD COLUMN cancel_reason text "
        "CHECK (cancel_reason IN ('DEADLINE_PASSED', 'PRODUCT_WITHDRAWN'))"
    )


def downgrade() -> None:
    run_script("ALTER TABLE decisions DROP COLUMN cancel_reason")
