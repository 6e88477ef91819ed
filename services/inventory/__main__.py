from services.inventory.app import SERVICE, create_app
from shared.runtime import Listener, serve
from shared.settings import InventorySettings

settings = InventorySettings()
serve(
    SERVICE,
    settings,
    lambda: [
        Listener(create_app(settings), settings.bind_host, settings.port, "http", "INVENTORY_PORT")
    ],
    processes=settings.processes,
)
