"""Bulk orders (POST /v2/orders): one row per bulk order, and its units as rows of `orders`
marked with the bulk order's transactionId.

Revision ID: 0011
"""

from shared.db import run_script, run_script_outside_transaction

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        CREATE TABLE bulk_orders (
            transaction_id      text          PRIMARY KEY,
            account_id          uuid          NOT NULL REFERENCES accounts (id),
            client_order_number text          NOT NULL DEFAULT '',
            currency            char(3)       NOT NULL,
            grand_total         numeric(18,2) NOT NULL,
            created_at          timestamptz   NOT NULL DEFAULT now()
        );
        CREATE INDEX bulk_orders_account_newest ON bulk_orders (account_id, transaction_id DESC);
        CREATE INDEX bulk_orders_account_client_number ON bulk_orders
            (account_id, client_order_number) WHERE client_order_number <> '';
        ALTER TABLE orders ADD COLUMN bulk_id text REFERENCES bulk_orders (transaction_id);
        """
    )
    # CONCURRENTLY (as 0006): orders keep being written while it builds on a large table.
    run_script_outside_transaction(
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS orders_units_of_bulk ON orders (bulk_id) "
        "WHERE bulk_id IS NOT NULL"
    )


def downgrade() -> None:
    run_script(
        """
        DROP INDEX IF EXISTS orders_units_of_bulk;
        ALTER TABLE orders DROP COLUMN bulk_id;
        DROP TABLE bulk_orders;
        """
    )
