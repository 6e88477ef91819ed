"""Operators' credits by idempotency key: a credit retried with its key is applied once (the
primary key refuses the second, in the credit's own transaction).

Revision ID: 0008
"""

from shared.db import run_script

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        CREATE TABLE operator_credits (
            idempotency_key text PRIMARY KEY
                CHECK (length(idempotency_key) BETWEEN 1 AND 200),
            account_id      uuid          NOT NULL REFERENCES accounts (id),
            currency        char(3)       NOT NULL,
            amount          numeric(18,2) NOT NULL CHECK (amount > 0),
            created_at      timestamptz   NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    run_script("DROP TABLE operator_credits")
