"""Products, codes, decisions and the outbox.

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
        CREATE TABLE products (
            sku        text PRIMARY KEY CHECK (length(sku) BETWEEN 1 AND 64),
            name       text          NOT NULL,
            price      numeric(18,2) NOT NULL CHECK (price > 0),
            currency   text          NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
            is_instant boolean       NOT NULL,
            active     boolean       NOT NULL,
            version    bigint        NOT NULL CHECK (version > 0),
            record     jsonb         NOT NULL,
            created_at timestamptz   NOT NULL DEFAULT now(),
            updated_at timestamptz   NOT NULL DEFAULT now()
        );

        -- id is the public stockId. A code is sold at most once: it is SOLD exactly when it
        -- names its order, and an order can be named by one code only.
        CREATE TABLE codes (
            id             bigserial PRIMARY KEY,
            sku            text        NOT NULL REFERENCES products (sku),
            key_id         text        NOT NULL,
            sealed         bytea       NOT NULL,
            fingerprint    bytea       NOT NULL UNIQUE CHECK (length(fingerprint) = 32),
            status         text        NOT NULL DEFAULT 'AVAILABLE'
                CHECK (status IN ('AVAILABLE', 'SOLD')),
            transaction_id text UNIQUE,
            created_at     timestamptz NOT NULL DEFAULT now(),
            sold_at        timestamptz,
            CONSTRAINT codes_sold_to_one_order
                CHECK ((status = 'SOLD') = (transaction_id IS NOT NULL)),
            CONSTRAINT codes_sold_at CHECK ((status = 'SOLD') = (sold_at IS NOT NULL))
        );
        CREATE INDEX codes_available ON codes (sku, id) WHERE status = 'AVAILABLE';
        CREATE INDEX codes_sku_status ON codes (sku, status);

        -- One row per order ever placed: the idempotency record of PlaceOrder. stock_id names
        -- the code sold to it (codes.transaction_id is what makes that one code only).
        CREATE TABLE decisions (
            transaction_id text PRIMARY KEY,
            account_id     uuid        NOT NULL,
            sku            text        NOT NULL,
            state          text        NOT NULL
                CHECK (state IN ('RESERVED', 'BACKORDERED', 'ALLOCATED', 'CANCELLED')),
            stock_id       bigint,
            reply_to       text,
            placed_at      timestamptz NOT NULL,
            created_at     timestamptz NOT NULL DEFAULT now(),
            updated_at     timestamptz NOT NULL DEFAULT now(),
            CONSTRAINT decisions_code_iff_served
                CHECK ((state IN ('RESERVED', 'ALLOCATED')) = (stock_id IS NOT NULL))
        );
        CREATE INDEX decisions_waiting ON decisions (sku, placed_at) WHERE state = 'BACKORDERED';
        """
    )


def downgrade() -> None:
    run_script(
        "DROP TABLE decisions; DROP TABLE codes; DROP TABLE products; DROP TABLE outbox; "
        "DROP FUNCTION outbox_notify();"
    )
