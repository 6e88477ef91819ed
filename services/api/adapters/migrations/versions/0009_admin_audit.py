"""The audit of admin actions (shared.audit): one row per admin request that was not a read.

Numbered 0009 after 0006 on purpose: 0007 and 0008 are left to another branch's migrations,
and the chain is mended when the branches are merged.

Revision ID: 0009
"""

from shared.db import run_script

revision = "0009"
down_revision = "0006"
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
