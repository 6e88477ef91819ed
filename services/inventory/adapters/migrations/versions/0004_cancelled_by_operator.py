"""An operator can cancel an order: CANCELLED_BY_OPERATOR is a cancel reason.

Revision ID: 0004
"""

from shared.db import run_script

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(
        """
        ALTER TABLE decisions DROP CONSTRAINT decisions_cancel_reason_check;
        ALTER TABLE decisions ADD CONSTRAINT decisions_cancel_reason_check
            CHECK (cancel_reason IN
                   ('DEADLINE_PASSED', 'PRODUCT_WITHDRAWN', 'CANCELLED_BY_OPERATOR'));
        """
    )


def downgrade() -> None:
    # The older code knows no operator's cancellation: those become deadline ones.
    run_script(
        """
        UPDATE decisions SET cancel_reason = 'DEADLINE_PASSED'
        WHERE cancel_reason = 'CANCELLED_BY_OPERATOR';
        ALTER TABLE decisions DROP CONSTRAINT decisions_cancel_reason_check;
        ALTER TABLE decisions ADD CONSTRAINT decisions_cancel_reason_check
            CHECK (cancel_reason IN ('DEADLINE_PASSED', 'PRODUCT_WITHDRAWN'));
        """
    )
