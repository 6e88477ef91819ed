"""How an account receives PINs (docs/api.md, "PIN format"). Accounts that exist keep
`string`, what their clients have always decoded; new accounts default to `integer`, EZ's
wire type.

Revision ID: 0012
"""

from shared.db import run_script

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        ALTER TABLE accounts ADD COLUMN pin_format text NOT NULL DEFAULT 'string'
            CHECK (pin_format IN ('integer', 'string'));
        ALTER TABLE accounts ALTER COLUMN pin_format SET DEFAULT 'integer';
        """
    )


def downgrade() -> None:
    run_script("ALTER TABLE accounts DROP COLUMN pin_format")
