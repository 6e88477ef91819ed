"""The inventory service: catalog and prices, the stock of codes, and every allocation of a code
to an order (it is their only writer)."""

import contextlib
import logging
from collections.abc import AsyncIterator, Callable

from fastapi import FastAPI

from services.inventory import metrics
from services.inventory.adapters.postgres import PostgresUnitOfWork
from services.inventory.entrypoints import admin, commands
from services.inventory.service_layer import catalog
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared.runtime import Runtime, every, lifespan_for
from shared.settings import InventorySettings
from shared.web import AdminGuard, install_common

SERVICE = "inventory"
# The available-codes gauge follows every claim and delivery of this instance; a recount
# from the database also covers other instances and operators' direct changes. Every 5
# minutes: it counts every code for sale (a third of a second of the database's CPU for
# 465,000 of them), and the alert that reads the gauge (StockOutWithBackordersWaiting) waits
# 15 minutes.
STOCK_RECOUNT_INTERVAL_S = 300.0
# How often inventory looks for codes with a version 1 fingerprint (restored, written by an
# older inventory, or left after migration 0006): one indexed look-up when there is none.
REFINGERPRINT_INTERVAL_S = 10.0

log = logging.getLogger(__name__)


def create_app(settings: InventorySettings | None = None) -> FastAPI:
    settings = settings or InventorySettings()
    runtime = Runtime(SERVICE, settings, settings.database_url)
    vault = settings.code_vault()

    def new_uow() -> PostgresUnitOfWork:
        return PostgresUnitOfWork(runtime.pool, on_commit=metrics.observe_committed)

    commands.subscribe(
        runtime.broker,
        commands.CommandConsumer(
            new_uow,
            lambda: runtime.producer,
            max_retries=settings.consumer_max_retries,
            vault=vault,
        ),
    )

    @contextlib.asynccontextmanager
    async def background() -> AsyncIterator[None]:
        # Codes with a version 1 fingerprint are not sold, and stock waits, until they have
        # their version 2 one: looked for all the time, not only at start.
        runtime.background.start(
            "stock-refingerprint",
            lambda: every(
                REFINGERPRINT_INTERVAL_S,
                "re-fingerprinting the stock",
                lambda: catalog.refingerprint_stock(new_uow, vault),
                escalate=(catalog.RefingerprintBlocked,),
            ),
        )
        runtime.background.start(
            "stock-recount",
            lambda: every(
                STOCK_RECOUNT_INTERVAL_S,
                "recounting the stock",
                lambda: _recount_stock(new_uow),
            ),
        )
        yield

    app = FastAPI(
        title="instant-orders inventory", lifespan=lifespan_for(runtime, on_start=background)
    )
    app.state.runtime = runtime
    app.state.admin = admin.AdminContext(new_uow, vault)
    app.state.admin_guard = AdminGuard.from_settings(SERVICE, settings)
    install_common(
        app,
        SERVICE,
        runtime.readiness(),
        max_body_bytes=admin.MAX_BODY_BYTES,
        on_scrape=runtime.on_scrape,
    )
    app.include_router(admin.router)
    return app


async def _recount_stock(new_uow: Callable[[], UnitOfWork]) -> None:
    metrics.set_available(await catalog.available_per_product(new_uow()))
