from services.fulfilment.app import SERVICE, create_app
from shared.runtime import Listener, serve
from shared.settings import FulfilmentSettings

settings = FulfilmentSettings()
serve(
    SERVICE,
    settings,
    lambda: [
        Listener(create_app(settings), settings.bind_host, settings.port, "http", "FULFILMENT_PORT")
    ],
)
