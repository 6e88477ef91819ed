from services.api.adapters.tables import ApiTable
from shared.db import run_alembic_env

run_alembic_env(ApiTable.metadata)
