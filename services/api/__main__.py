from services.api.app import SERVICE, create_app
from shared.runtime import serve
from shared.settings import ApiSettings

settings = ApiSettings()
serve(SERVICE, settings, settings.port, lambda: create_app(settings), processes=settings.processes)
