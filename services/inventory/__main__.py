from services.inventory.app import SERVICE, create_app
from shared.runtime import serve
from shared.settings import InventorySettings

settings = InventorySettings()
serve(SERVICE, settings, settings.port, lambda: create_app(settings), processes=settings.processes)
