"""Per-account request rate limit set by operators (NULL: the service default).

Revision ID: 0002
"""

from shared.db import run_script

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        "ALTER TABLE accounts ADD COLUMN rate_limit_per_s numeric(10,2) "
        "CHECK (rate_limit_per_s > 0)"
    )


def downgrade() -> None:
    run_script("ALTER TABLE accounts DROP COLUMN rate_limit_per_s")
