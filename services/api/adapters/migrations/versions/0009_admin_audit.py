"""The audit of admin actions (shared.audit): one row per admin request that was not a read.

Revision ID: 0009
"""

from shared.db import run_script

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        CREATE TABLE admin_audit (
            id         bigserial   PRIMARY KEY,
            at         timestamptz NOT NULL DEFAULT now(),
            operator   text        NOT NULL CHECK (length(operator) BETWEEN 1 AND 64),
            client     text        NOT NULL CHECK (length(client) <= 64),
            method     text        NOT NULL CHECK (length(method) <= 16),
            route      text        NOT NULL CHECK (length(route) <= 200),
            ids        jsonb       NOT NULL DEFAULT '{}'::jsonb,
            status     smallint    NOT NULL,
            request_id text        NOT NULL CHECK (length(request_id) <= 64)
        )
        """
    )


def downgrade() -> None:
    run_script("DROP TABLE admin_audit")
