"""When the api last asked inventory again about an order it heard nothing of.

Revision ID: 0003
"""

from shared.db import run_script

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("ALTER TABLE orders ADD COLUMN nudged_at timestamptz")


def downgrade() -> None:
    run_script("ALTER TABLE orders DROP COLUMN nudged_at")
