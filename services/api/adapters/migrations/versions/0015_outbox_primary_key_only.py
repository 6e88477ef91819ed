"""The outbox keeps only its primary key (shared.ddl_history.OUTBOX_PRIMARY_KEY_ONLY): one
index entry fewer to write for every event. Dropped CONCURRENTLY, so events keep being
written meanwhile.

Revision ID: 0015
"""

from shared.db import run_script_outside_transaction
from shared.ddl_history import OUTBOX_PRIMARY_KEY_ONLY, OUTBOX_PRIMARY_KEY_ONLY_UNDO

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script_outside_transaction(OUTBOX_PRIMARY_KEY_ONLY)


def downgrade() -> None:
    run_script_outside_transaction(OUTBOX_PRIMARY_KEY_ONLY_UNDO)
