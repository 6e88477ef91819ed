"""The outbox's dead letters (shared.ddl_history.OUTBOX_DEAD_LETTERS_1).

Revision ID: 0002
"""

from shared.db import run_script
from shared.ddl_history import OUTBOX_DEAD_LETTERS_1, OUTBOX_DEAD_LETTERS_1_UNDO

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    run_script(OUTBOX_DEAD_LETTERS_1)


def downgrade() -> None:
    run_script(OUTBOX_DEAD_LETTERS_1_UNDO)
