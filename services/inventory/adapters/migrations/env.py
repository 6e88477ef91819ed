from services.inventory.adapters.tables import InventoryTable
from shared.db import run_alembic_env

run_alembic_env(InventoryTable.metadata)
