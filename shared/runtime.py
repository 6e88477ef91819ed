"""What every service process runs: an asyncpg pool, a durable producer, a FastStream broker
for its subscribers, and its outbox relay, started and stopped with the HTTP app."""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from faststream.kafka import KafkaBroker

from shared import db, logs
from shared.lag import LagMonitor, watched_groups
from shared.messaging import OutboxRelay, durable_producer, new_broker
from shared.settings import CommonSettings
from shared.web import Check

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    service: str
    settings: CommonSettings
    database_url: str
    broker: KafkaBroker = field(init=False)
    pool: asyncpg.Pool = field(init=False)
    producer: AIOKafkaProducer = field(init=False)
    relay: OutboxRelay = field(init=False)
    lag: LagMonitor = field(init=False)

    def __post_init__(self) -> None:
        self.broker = new_broker(self.settings.kafka_bootstrap_servers, self.service)

    async def start(self) -> None:
        self.pool = await db.create_pool(self.database_url, self.settings.db_pool_size)
        self.producer = durable_producer(
            self.settings.kafka_bootstrap_servers, f"{self.service}-{self.settings.instance_id}"
        )
        await self.producer.start()
        self.relay = OutboxRelay(
            self.pool, self.producer, self.service, self.settings.outbox_poll_interval_s
        )
        await self.relay.start()
        self.lag = LagMonitor(
            self.settings.kafka_bootstrap_servers,
            f"{self.service}-{self.settings.instance_id}-lag",
            watched_groups(self.service),
        )
        await self.lag.start()

    async def start_consumers(self) -> None:
        await self.broker.start()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.lag.stop()
        with contextlib.suppress(Exception):
            await self.broker.stop()
        with contextlib.suppress(Exception):
            await self.relay.stop()
        with contextlib.suppress(Exception):
            await self.producer.stop()
        with contextlib.suppress(Exception):
            await self.pool.close()

    def readiness(self) -> dict[str, Check]:
        async def database() -> None:
            async with asyncio.timeout(2):
                await self.pool.fetchval("SELECT 1")

        async def broker() -> None:
            async with asyncio.timeout(2):
                await self.producer.client.fetch_all_metadata()

        return {"database": database, "kafka": broker}


async def every(interval_s: float, name: str, step: Callable[[], Awaitable[object]]) -> None:
    """Run `step` forever, `interval_s` apart (a background refresh of gauges, for instance).

    A failing step is logged once, with the error's type, and again when it works again; the
    loop goes on either way.
    """
    failing = False
    while True:
        try:
            await step()
            if failing:
                log.info("%s works again", name)
            failing = False
        except Exception as exc:
            if not failing:
                log.warning(
                    "%s failed (%s); retrying every %.1fs", name, type(exc).__name__, interval_s
                )
            failing = True
        await asyncio.sleep(interval_s)


def lifespan_for(
    runtime: Runtime,
    on_start: Callable[[], "contextlib.AbstractAsyncContextManager[None]"] | None = None,
) -> Callable[[FastAPI], "contextlib.AbstractAsyncContextManager[None]"]:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            if on_start is None:
                await runtime.start_consumers()
                yield
            else:
                async with on_start():
                    await runtime.start_consumers()
                    yield
        finally:
            await runtime.stop()

    return lifespan


def serve(service: str, settings: CommonSettings, port: int, app: FastAPI) -> None:
    logs.configure(service, settings.log_level)
    log.info("starting %s on %s:%d", service, settings.bind_host, port)
    uvicorn.run(
        app,
        host=settings.bind_host,
        port=port,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http="httptools",
        timeout_graceful_shutdown=10,
    )
