from services.api.app import SERVICE, listeners
from shared.runtime import serve
from shared.settings import ApiSettings

settings = ApiSettings()
serve(SERVICE, settings, lambda: listeners(settings), processes=settings.processes)
