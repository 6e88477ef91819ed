"""The fulfilment service: the life of a backorder after inventory could not serve it at once."""

from fastapi import FastAPI

from shared.runtime import Runtime, lifespan_for
from shared.settings import FulfilmentSettings
from shared.web import install_common

SERVICE = "fulfilment"


def create_app(settings: FulfilmentSettings | None = None) -> FastAPI:
    settings = settings or FulfilmentSettings()
    runtime = Runtime(SERVICE, settings, settings.database_url)
    app = FastAPI(title="instant-orders fulfilment", lifespan=lifespan_for(runtime))
    app.state.runtime = runtime
    install_common(app, SERVICE, runtime.readiness())
    return app
