"""credentials.revoked_at was read (`IS NULL`) but nothing ever set it: dropped. Ending a
credential is `expires_at`, which the token endpoint sets when it rotates tokens. A credential
an operator revoked by hand (revoked_at set) stays ended: its revocation becomes its expiry.

Revision ID: 0004
"""

from shared.db import run_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        "UPDATE credentials SET expires_at = LEAST(COALESCE(expires_at, revoked_at), revoked_at) "
        "WHERE revoked_at IS NOT NULL;"
        "ALTER TABLE credentials DROP COLUMN revoked_at"
    )


def downgrade() -> None:
    run_script("ALTER TABLE credentials ADD COLUMN revoked_at timestamptz")
