"""Exchange rates set by operators, and on each order paid in another currency the product's
price and currency and the rate it was converted with.

Revision ID: 0010
"""

from shared.db import run_script

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        CREATE TABLE fx_rates (
            base       char(3)       NOT NULL,
            quote      char(3)       NOT NULL,
            rate       numeric(18,6) NOT NULL CHECK (rate > 0),
            updated_at timestamptz   NOT NULL DEFAULT now(),
            PRIMARY KEY (base, quote),
            CHECK (base <> quote),
            CHECK (base ~ '^[A-Z]{3}$' AND quote ~ '^[A-Z]{3}$')
        );
        ALTER TABLE orders
            ADD COLUMN product_currency    char(3),
            ADD COLUMN unit_price_original numeric(18,2),
            ADD COLUMN fx_rate             numeric(18,6),
            ADD COLUMN fx_as_of            timestamptz;
        """
    )


def downgrade() -> None:
    run_script(
        """
        ALTER TABLE orders DROP COLUMN product_currency, DROP COLUMN unit_price_original,
            DROP COLUMN fx_rate, DROP COLUMN fx_as_of;
        DROP TABLE fx_rates;
        """
    )
