from services.fulfilment.app import SERVICE, create_app
from shared.runtime import serve
from shared.settings import FulfilmentSettings

settings = FulfilmentSettings()
serve(SERVICE, settings, settings.port, lambda: create_app(settings))
