"""Accounts, credentials, wallets and ledger, the product and order read models, the outbox.

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
        CREATE TABLE accounts (
            id         uuid PRIMARY KEY,
            name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
            created_at timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE credentials (
            id          bigserial PRIMARY KEY,
            account_id  uuid  NOT NULL REFERENCES accounts (id),
            kind        text  NOT NULL CHECK (kind IN ('API_KEY', 'TOKEN')),
            secret_hash bytea NOT NULL UNIQUE,
            created_at  timestamptz NOT NULL DEFAULT now(),
            expires_at  timestamptz,
            revoked_at  timestamptz
        );
        CREATE INDEX credentials_account ON credentials (account_id, kind);

        -- One account's balance in one currency is the sum of its slots. Orders debit one slot
        -- each (SKIP LOCKED), so one busy account is not serialised on one row; no slot, and
        -- so no balance, can go negative.
        CREATE TABLE wallet_slots (
            account_id uuid          NOT NULL REFERENCES accounts (id),
            currency   char(3)       NOT NULL,
            slot       smallint      NOT NULL,
            balance    numeric(18,2) NOT NULL DEFAULT 0 CHECK (balance >= 0),
            PRIMARY KEY (account_id, currency, slot)
        );

        -- Every movement of money. The unique index makes "debited once per order, refunded
        -- once per cancelled order" a database fact.
        CREATE TABLE ledger (
            id             bigserial PRIMARY KEY,
            account_id     uuid          NOT NULL REFERENCES accounts (id),
            currency       char(3)       NOT NULL,
            amount         numeric(18,2) NOT NULL,
            kind           text          NOT NULL CHECK (kind IN ('CREDIT', 'DEBIT', 'REFUND')),
            transaction_id text,
            created_at     timestamptz   NOT NULL DEFAULT now()
        );
        CREATE UNIQUE INDEX ledger_once_per_order ON ledger (transaction_id, kind)
            WHERE transaction_id IS NOT NULL;

        CREATE TABLE products (
            sku        text PRIMARY KEY,
            record     jsonb         NOT NULL,
            currency   char(3)       NOT NULL,
            price      numeric(18,2) NOT NULL,
            is_instant boolean       NOT NULL,
            active     boolean       NOT NULL,
            version    bigint        NOT NULL,
            updated_at timestamptz   NOT NULL DEFAULT now()
        );

        CREATE TABLE orders (
            transaction_id      text PRIMARY KEY,
            account_id          uuid          NOT NULL REFERENCES accounts (id),
            client_order_number text          NOT NULL DEFAULT '',
            sku                 text          NOT NULL,
            quantity            integer       NOT NULL DEFAULT 1,
            unit_price          numeric(18,2) NOT NULL,
            currency            char(3)       NOT NULL,
            grand_total         numeric(18,2) NOT NULL,
            status              text          NOT NULL DEFAULT 'PROCESSING'
                CHECK (status IN ('PROCESSING', 'COMPLETED', 'CANCELLED')),
            created_at          timestamptz   NOT NULL DEFAULT now(),
            updated_at          timestamptz   NOT NULL DEFAULT now(),
            backordered_at      timestamptz,
            stock_id            bigint UNIQUE,
            sealed_code         text,
            cancel_reason       text,
            CHECK ((status = 'COMPLETED') = (stock_id IS NOT NULL AND sealed_code IS NOT NULL))
        );
        -- transactionId is a ULID: ordering by it is ordering by creation time.
        CREATE INDEX orders_account_newest ON orders (account_id, transaction_id DESC);
        CREATE INDEX orders_account_client_number ON orders (account_id, client_order_number)
            WHERE client_order_number <> '';
        CREATE INDEX orders_processing ON orders (created_at) WHERE status = 'PROCESSING';
        """
    )


def downgrade() -> None:
    run_script(
        "DROP TABLE orders, products, ledger, wallet_slots, credentials, accounts, outbox;"
        "DROP FUNCTION outbox_notify();"
    )
