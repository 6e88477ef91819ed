"""An operator can disable an account: while `disabled_at` is set, none of its credentials
authenticates (NULL: the account is enabled).

Revision ID: 0007
"""

from shared.db import run_script

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script("ALTER TABLE accounts ADD COLUMN disabled_at timestamptz")


def downgrade() -> None:
    run_script("ALTER TABLE accounts DROP COLUMN disabled_at")
