"""The api service: the thin ingress of instant-orders."""

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.api import metrics
from services.api.adapters.kafka import BrokerHealth, KafkaPublisher, ReplyListener
from services.api.adapters.postgres import PostgresUnitOfWork
from services.api.entrypoints import admin, consumers, http
from services.api.entrypoints import audit as audit_routes
from services.api.service_layer import audit, read_model
from services.api.service_layer.accounts import Authenticator
from services.api.service_layer.fx import CachedRates, OperatorRates
from services.api.service_layer.orders import OrderDesk, ask_again_about_undecided
from shared import topics
from shared.audit import AdminAudit
from shared.db import Conn
from shared.runtime import Listener, Runtime, every, lifespan_for
from shared.settings import ApiSettings
from shared.web import AdminGuard, HotRoutes, OnScrape, install_common, without_fastapi_422
from shared.workers import WORKER_INDEX

SERVICE = "api"
# An order still PROCESSING is asked about again at most this often.
ASK_AGAIN_AFTER_S = 600.0
# How long shutdown waits for reservations still being recorded (answered PROCESSING late)
# before the pool closes; one not recorded by then is recorded from inventory's event.
RECORDINGS_AT_SHUTDOWN_S = 5.0


def listeners(settings: ApiSettings) -> list[Listener]:
    """The public API on API_PORT; the operators' endpoints and /metrics on API_ADMIN_PORT."""
    public = create_app(settings)
    return [
        Listener(public, settings.bind_host, settings.port, "public", "API_PORT"),
        Listener(
            public.state.admin_app,
            settings.admin_bind_host,
            settings.admin_port,
            "admin",
            "API_ADMIN_PORT",
        ),
    ]


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """The public app (/v2, health); `app.state.admin_app` is the operators' app (/admin,
    /metrics, health), which shares its state and is started by its lifespan."""
    settings = settings or ApiSettings()
    runtime = Runtime(SERVICE, settings, settings.database_url)
    vault = settings.code_vault()

    def new_uow() -> PostgresUnitOfWork:
        return PostgresUnitOfWork(runtime.pool)

    def uow_on(conn: Conn) -> PostgresUnitOfWork:
        return PostgresUnitOfWork(conn=conn)

    consumers.register(
        runtime.broker, lambda: runtime.pool, lambda: runtime.producer, new_uow, uow_on, settings
    )

    async def count_processing() -> None:
        metrics.set_processing(await read_model.processing_summary(new_uow()))
        metrics.name_stuck(await read_model.oldest_stuck(new_uow(), metrics.STUCK_AFTER_S))

    runtime.on_scrape.append(OnScrape("counting PROCESSING orders", count_processing))

    @contextlib.asynccontextmanager
    async def started() -> AsyncIterator[None]:
        replies = ReplyListener(
            settings.kafka_bootstrap_servers,
            topics.ORDER_REPLIES.name,
            instance=int(os.environ.get(WORKER_INDEX) or 0),
        )
        await replies.start(runtime.producer, runtime.background)
        health = BrokerHealth(runtime.producer)
        app.state.services = http.ApiServices(
            new_uow=new_uow,
            order_desk=OrderDesk(
                new_uow=new_uow,
                publisher=KafkaPublisher(runtime.producer),
                replies=replies,
                health=health,
                decision_window_s=settings.decision_window_ms / 1000,
                max_in_flight=settings.max_in_flight_per_process,
                rates=CachedRates(OperatorRates(new_uow)),
                linger_s=settings.group_commit_linger_ms / 1000,
            ),
            auth=Authenticator(
                new_uow,
                settings.auth_cache_ttl_s,
                max_lookups=settings.auth_max_lookups,
                failures_burst=settings.auth_failure_burst,
                failures_per_s=settings.auth_failure_rate_per_s,
            ),
            vault=vault,
            limiter=http.RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
        )
        runtime.background.start(
            "ask-again",
            lambda: every(
                settings.nudge_interval_s,
                "asking inventory again about undecided orders",
                lambda: ask_again_about_undecided(
                    new_uow(),
                    settings.nudge_after_s,
                    ASK_AGAIN_AFTER_S,
                    settings.backorder_deadline_s,
                ),
            ),
        )
        try:
            yield
        finally:
            await app.state.services.order_desk.finish_recordings(RECORDINGS_AT_SHUTDOWN_S)
            await runtime.background.stop()
            await health.stop()
            await replies.stop()

    app = HotRoutes(
        title="instant-orders API",
        version="2",
        description="EZ Cards v2 compatible ordering API.",
        lifespan=lifespan_for(runtime, started),
    )
    app.state.settings = settings
    app.state.admin_guard = AdminGuard.from_settings(SERVICE, settings)
    app.state.runtime = runtime
    readiness = runtime.readiness()
    install_common(
        app,
        SERVICE,
        readiness,
        max_body_bytes=settings.max_body_bytes,
        serve_metrics=False,
        hot_routes=[("POST", http.INSTANT_ORDER_PATH, http.create_instant_order)],
    )
    app.include_router(http.router)

    # The operators' app: served on its own listener (API_ADMIN_PORT) by the same process,
    # with the same state; it has no lifespan of its own (the public app's starts both).
    operators = FastAPI(
        title="instant-orders API: operators", openapi_url=None, docs_url=None, redoc_url=None
    )
    operators.state = app.state
    install_common(
        operators,
        SERVICE,
        readiness,
        max_body_bytes=settings.max_body_bytes,
        live_collectors=[metrics.STUCK_ORDER],
        on_scrape=runtime.on_scrape,
    )
    operators.include_router(admin.router)
    operators.include_router(audit_routes.router)
    operators.add_middleware(
        AdminAudit,
        service=SERVICE,
        record=lambda action: audit.record_admin_action(new_uow(), action),
    )
    app.state.admin_app = operators

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = without_fastapi_422(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
