"""The fulfilment service: the life of a backorder after inventory could not serve it at once."""

import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.fulfilment import metrics
from services.fulfilment.adapters import repository as repo
from services.fulfilment.adapters.supplier import NoSupplier, SimulatedSupplier, Supplier
from services.fulfilment.entrypoints import admin, consumers
from services.fulfilment.service_layer.backorders import Backorders
from shared.runtime import Runtime, every, lifespan_for
from shared.settings import FulfilmentSettings
from shared.web import install_common

SERVICE = "fulfilment"


def create_app(settings: FulfilmentSettings | None = None) -> FastAPI:
    settings = settings or FulfilmentSettings()
    runtime = Runtime(SERVICE, settings, settings.database_url)
    simulated = (
        SimulatedSupplier(settings.code_vault(), settings.supplier_delay_s)
        if settings.supplier_enabled
        else None
    )
    supplier: Supplier = simulated or NoSupplier()
    backorders = Backorders(settings.backorder_deadline_s, supplier, settings.supplier_batch)
    consumers.register(
        runtime.broker, lambda: runtime.pool, lambda: runtime.producer, backorders, settings
    )

    async def refresh_gauges() -> None:
        async with runtime.pool.acquire() as conn:
            rows = await repo.waiting_by_sku(conn)
        metrics.BACKORDERS_WAITING.clear()
        for row in rows:
            metrics.BACKORDERS_WAITING.labels(row["sku"]).set(row["waiting"])
        metrics.OLDEST_WAITING_AGE.set(max((float(r["oldest"]) for r in rows), default=0.0))

    @contextlib.asynccontextmanager
    async def loops() -> AsyncIterator[None]:
        start = runtime.background.start
        start(
            "deadline-scan",
            lambda: every(
                settings.deadline_scan_interval_s,
                "deadline scan",
                lambda: backorders.cancel_overdue(runtime.pool),
            ),
        )
        start("gauges", lambda: every(5.0, "gauges", refresh_gauges))
        start(
            "stalled-retry",
            lambda: every(
                settings.retry_after_s / 3,
                "retrying stalled backorders",
                lambda: backorders.retry_stalled(runtime.pool, settings.retry_after_s),
            ),
        )
        if simulated is not None:
            start(
                "supplier",
                lambda: every(
                    0.5, "supplier deliveries", lambda: simulated.deliver_due(runtime.pool)
                ),
            )
        yield

    app = FastAPI(title="instant-orders fulfilment", lifespan=lifespan_for(runtime, loops))
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.admin_token = settings.admin_token
    install_common(app, SERVICE, runtime.readiness())
    app.include_router(admin.router)
    return app
