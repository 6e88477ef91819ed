from services.fulfilment.adapters.tables import FulfilmentTable
from shared.db import run_alembic_env

run_alembic_env(FulfilmentTable.metadata)
