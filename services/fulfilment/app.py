"""The fulfilment service: the life of a backorder after inventory could not serve it at once."""

import asyncio
import contextlib
from collections.abc import AsyncIterator

from fastapi import FastAPI

from services.fulfilment import metrics
from services.fulfilment.adapters.postgres import PostgresUnitOfWork
from services.fulfilment.adapters.supplier import NoSupplier, SimulatedSupplier
from services.fulfilment.entrypoints import admin, consumers
from services.fulfilment.service_layer import backorders
from services.fulfilment.service_layer.backorders import Policy, Supplier
from shared.db import Conn
from shared.runtime import Runtime, every, lifespan_for, when_due
from shared.settings import FulfilmentSettings
from shared.web import AdminGuard, OnScrape, install_common

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
    policy = Policy(settings.backorder_deadline_s, supplier, settings.supplier_batch)

    def new_uow() -> PostgresUnitOfWork:
        return PostgresUnitOfWork(runtime.pool)

    def uow_on(conn: Conn) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(conn=conn)

    # The deadline scan and the supplier's deliveries sleep until their next due time. A
    # commit of this process that may bring one sooner (a waiting backorder, a supplier
    # request) wakes them; they look anyway every FULFILMENT_SCAN_INTERVAL_S, for what
    # another instance committed.
    deadlines_changed, requests_changed = asyncio.Event(), asyncio.Event()

    def committed() -> None:
        deadlines_changed.set()
        requests_changed.set()

    consumers.register(
        runtime.broker,
        lambda: runtime.pool,
        lambda: runtime.producer,
        new_uow,
        uow_on,
        policy,
        settings,
        committed,
    )

    async def refresh_gauges() -> None:
        skus = await backorders.open_backorders(new_uow())
        metrics.BACKORDERS_WAITING.clear()
        for sku in skus:
            metrics.BACKORDERS_WAITING.labels(sku.sku).set(sku.count)
        metrics.OLDEST_WAITING_AGE.set(max((s.oldest_age_s for s in skus), default=0.0))

    runtime.on_scrape.append(OnScrape("counting open backorders", refresh_gauges))

    @contextlib.asynccontextmanager
    async def loops() -> AsyncIterator[None]:
        start = runtime.background.start
        start(
            "deadline-scan",
            lambda: when_due(
                "deadline scan",
                lambda: backorders.scan_deadlines(new_uow),
                deadlines_changed,
                look_every_s=settings.scan_interval_s,
            ),
        )
        start(
            "stalled-retry",
            lambda: every(
                settings.retry_after_s / 3,
                "retrying stalled backorders",
                lambda: backorders.retry_stalled(new_uow, settings.retry_after_s),
            ),
        )
        if simulated is not None:
            start(
                "supplier",
                lambda: when_due(
                    "supplier deliveries",
                    lambda: simulated.deliver_round(new_uow),
                    requests_changed,
                    look_every_s=settings.scan_interval_s,
                ),
            )
        yield

    app = FastAPI(title="instant-orders fulfilment", lifespan=lifespan_for(runtime, loops))
    app.state.runtime = runtime
    app.state.settings = settings
    app.state.new_uow = new_uow
    app.state.admin_guard = AdminGuard.from_settings(SERVICE, settings)
    install_common(app, SERVICE, runtime.readiness(), on_scrape=runtime.on_scrape)
    app.include_router(admin.router)
    return app
