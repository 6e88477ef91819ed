"""Backorders, what fulfilment knows of each SKU, supplier requests, and the outbox.

Revision ID: 0001
"""

from shared.db import run_script
from shared.ddl_history import OUTBOX_0001

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(OUTBOX_0001)
    run_script(
        """
        -- One row per order inventory could not serve at once.
        --   WAITING     no code yet
        --   ALLOCATING  AllocateBackorder sent, answer pending
        --   CANCELLING  CancelBackorder sent (deadline passed or product withdrawn)
        --   COMPLETED / CANCELLED  final, as inventory decided
        CREATE TABLE backorders (
            transaction_id text PRIMARY KEY,
            account_id     uuid        NOT NULL,
            sku            text        NOT NULL,
            placed_at      timestamptz NOT NULL,
            deadline_at    timestamptz NOT NULL,
            state          text        NOT NULL DEFAULT 'WAITING'
                CHECK (state IN ('WAITING', 'ALLOCATING', 'CANCELLING', 'COMPLETED',
                                 'CANCELLED')),
            cancel_reason  text,
            created_at     timestamptz NOT NULL DEFAULT now(),
            updated_at     timestamptz NOT NULL DEFAULT now()
        );
        CREATE INDEX backorders_queue ON backorders (sku, placed_at, transaction_id)
            WHERE state IN ('WAITING', 'ALLOCATING', 'CANCELLING');
        CREATE INDEX backorders_deadline ON backorders (deadline_at) WHERE state = 'WAITING';

        -- What fulfilment knows of a SKU from catalog.products and inventory.events.
        -- stock_hint is how many codes inventory last said were available, less what was
        -- taken since: a hint (inventory decides), used to size allocation rounds.
        CREATE TABLE skus (
            sku                text PRIMARY KEY,
            active             boolean NOT NULL DEFAULT true,
            deadline_seconds   integer,
            version            bigint  NOT NULL DEFAULT 0,
            stock_hint         integer NOT NULL DEFAULT 0 CHECK (stock_hint >= 0)
        );

        CREATE TABLE supplier_requests (
            id           bigserial PRIMARY KEY,
            sku          text        NOT NULL,
            quantity     integer     NOT NULL CHECK (quantity > 0),
            requested_at timestamptz NOT NULL DEFAULT now(),
            due_at       timestamptz NOT NULL,
            delivered_at timestamptz
        );
        -- At most one open request per SKU.
        CREATE UNIQUE INDEX supplier_requests_open ON supplier_requests (sku)
            WHERE delivered_at IS NULL;
        """
    )


def downgrade() -> None:
    run_script(
        "DROP TABLE supplier_requests; DROP TABLE skus; DROP TABLE backorders; "
        "DROP TABLE outbox; DROP FUNCTION outbox_notify();"
    )
