"""The api service: the thin ingress of instant-orders."""

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from services.api import metrics
from services.api.adapters.kafka import BrokerHealth, KafkaPublisher, ReplyListener
from services.api.adapters.postgres import PostgresUnitOfWork
from services.api.entrypoints import admin, consumers, http
from services.api.service_layer import read_model
from services.api.service_layer.accounts import Authenticator
from services.api.service_layer.orders import OrderDesk, ask_again_about_undecided
from shared import topics
from shared.db import Conn
from shared.runtime import Runtime, every, lifespan_for
from shared.settings import ApiSettings
from shared.web import install_common, without_fastapi_422

SERVICE = "api"
# How often the orders_processing gauges are recounted from the read model.
PROCESSING_GAUGE_INTERVAL_S = 2.0
# An order still PROCESSING is asked about again at most this often.
ASK_AGAIN_AFTER_S = 600.0


def create_app(settings: ApiSettings | None = None) -> FastAPI:
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

    @contextlib.asynccontextmanager
    async def started() -> AsyncIterator[None]:
        replies = ReplyListener(settings.kafka_bootstrap_servers, topics.ORDER_REPLIES.name)
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
                max_in_flight=settings.max_in_flight,
            ),
            auth=Authenticator(new_uow, settings.auth_cache_ttl_s),
            vault=vault,
            limiter=http.RateLimiter(settings.rate_limit_per_s, settings.rate_limit_burst),
        )
        runtime.background.start(
            "processing-gauges",
            lambda: every(
                PROCESSING_GAUGE_INTERVAL_S, "counting PROCESSING orders", count_processing
            ),
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
            await runtime.background.stop()
            await health.stop()
            await replies.stop()

    app = FastAPI(
        title="instant-orders API",
        version="2",
        description="EZ Cards v2 compatible ordering API.",
        lifespan=lifespan_for(runtime, started),
    )
    app.state.settings = settings
    app.state.admin_token = settings.admin_token
    app.state.runtime = runtime
    install_common(
        app,
        SERVICE,
        runtime.readiness(),
        max_body_bytes=settings.max_body_bytes,
        live_collectors=[metrics.STUCK_ORDER],
    )
    app.include_router(http.router)
    app.include_router(admin.router)

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
