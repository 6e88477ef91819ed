"""The products' pinKind (ProductSnapshot.pin_kind), read by the instant path: an account
receiving integer PINs may buy only a product whose PINs are integers (docs/api.md, "PIN
format"). Products whose snapshot predates it are `string`, as they took any PIN.

Revision ID: 0014
"""

from shared.db import run_script

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        ALTER TABLE products ADD COLUMN pin_kind text NOT NULL DEFAULT 'string'
            CHECK (pin_kind IN ('integer', 'string'));
        UPDATE products SET pin_kind = record->>'pinKind'
        WHERE record->>'pinKind' IN ('integer', 'string');
        """
    )


def downgrade() -> None:
    run_script("ALTER TABLE products DROP COLUMN pin_kind")
