"""A bulk order's units carry its clientOrderNumber, so that the public events of a unit name
the number the client gave (docs/events.md). The dup check and the listing's filter look at
instant orders only (a unit is found through its bulk order), so the partial index on the
number leaves units out.

Revision ID: 0013
"""

from shared.db import run_script

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        UPDATE orders AS u SET client_order_number = b.client_order_number
        FROM bulk_orders AS b
        WHERE u.bulk_id = b.transaction_id AND u.client_order_number <> b.client_order_number;
        DROP INDEX orders_account_client_number;
        CREATE INDEX orders_account_client_number ON orders (account_id, client_order_number)
            WHERE client_order_number <> '' AND bulk_id IS NULL;
        """
    )


def downgrade() -> None:
    run_script(
        """
        DROP INDEX orders_account_client_number;
        UPDATE orders SET client_order_number = '' WHERE bulk_id IS NOT NULL;
        CREATE INDEX orders_account_client_number ON orders (account_id, client_order_number)
            WHERE client_order_number <> '';
        """
    )
