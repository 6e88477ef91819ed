"""What every service process runs: an asyncpg pool, a durable producer, a FastStream broker
for its subscribers, and its outbox relay, started and stopped with the HTTP app."""

import asyncio
import contextlib
import errno
import logging
import os
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

import asyncpg
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI
from faststream.kafka import KafkaBroker
from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from shared import db, logs, metrics
from shared.gc_pauses import freeze_startup_objects, watch_gc_pauses
from shared.lag import LagMonitor, watched_groups
from shared.outbox import OutboxRelay
from shared.producers import durable_producer, new_broker
from shared.settings import CommonSettings
from shared.web import Check, JsonErrorsHttpToolsProtocol, NotReady, OnScrape
from shared.workers import (
    STABLE_AFTER_S,
    STARTUP_FAILURE,
    WORKER_INDEX,
    Supervisor,
    bound_socket,
    die_with_parent,
)

log = logging.getLogger(__name__)

# How long an HTTP connection may stay idle before the server closes it (see serve).
KEEP_ALIVE_S = 75


class Background:
    """The background tasks of a service process that must keep running (the reply listener,
    periodic loops, monitors). One that raises is logged with its error, counted, shown down
    (`background_task_up` 0, `/readyz` failing) and restarted after a growing delay; one
    that returns has finished its job."""

    RESTART_DELAYS_S: tuple[float, ...] = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)

    def __init__(self, service: str) -> None:
        self.service = service
        self.down: dict[str, str] = {}  # task name -> the error that took it down
        self._tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, run: Callable[[], Awaitable[object]]) -> None:
        self._tasks[name] = asyncio.create_task(self._keep_running(name, run), name=name)

    async def _keep_running(self, name: str, run: Callable[[], Awaitable[object]]) -> None:
        up = metrics.BACKGROUND_UP.labels(self.service, name)
        failures = 0
        while True:
            up.set(1)
            self.down.pop(name, None)
            started = time.monotonic()
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() - started > STABLE_AFTER_S:
                    failures = 0
                delay = self.RESTART_DELAYS_S[min(failures, len(self.RESTART_DELAYS_S) - 1)]
                failures += 1
                up.set(0)
                self.down[name] = type(exc).__name__
                metrics.BACKGROUND_RESTARTS.labels(self.service, name).inc()
                log.exception("background task %s died; restarting it in %.1fs", name, delay)
                await asyncio.sleep(delay)

    def check(self) -> Check:
        async def background_tasks() -> None:
            if self.down:
                raise NotReady(", ".join(sorted(self.down)))

        return background_tasks

    async def stop(self) -> None:
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        self._tasks.clear()


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
    background: Background = field(init=False)
    # Gauges read when /metrics is scraped (shared.web.OnScrape); a service adds its own.
    on_scrape: list[OnScrape] = field(init=False)

    def __post_init__(self) -> None:
        self.broker = new_broker(self.settings.kafka_bootstrap_servers, self.service)
        self.background = Background(self.service)
        watch_gc_pauses(self.service)
        lag_of = ", ".join(watched_groups(self.service))
        self.on_scrape = [
            OnScrape(f"reading the consumer lag of {lag_of}", lambda: self.lag.read())
        ]

    async def start(self) -> None:
        self.pool = await db.create_pool(
            self.database_url,
            self.settings.db_pool_size,
            self.settings.db_acquire_timeout_s,
            self.settings.db_plan_cache_mode,
        )
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

    async def start_consumers(self) -> None:
        await self.broker.start()

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.background.stop()
        for refresh in self.on_scrape:
            with contextlib.suppress(Exception):
                await refresh.stop()
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

        return {"database": database, "kafka": broker, "background": self.background.check()}


async def every(
    interval_s: float,
    name: str,
    step: Callable[[], Awaitable[object]],
    *,
    escalate: tuple[type[Exception], ...] = (),
) -> None:
    """Run `step` forever, `interval_s` apart (a background refresh of gauges, for instance).

    A failing step is logged once, with the error's type, and again when it works again; the
    loop goes on either way. An error of a type in `escalate` (one an operator must act on,
    whose message is safe to log) ends the loop instead: its supervisor (`Background`) logs
    it in full, reports the task down (metric, /readyz) and starts it again after a backoff.
    """
    report = logs.FailureReport(log, name, f"retrying every {interval_s:.1f}s")
    while True:
        try:
            await step()
            report.worked()
        except escalate:
            raise
        except Exception as exc:
            report.failed(exc)
        await asyncio.sleep(interval_s)


async def when_due(
    name: str,
    step: Callable[[], Awaitable[float | None]],
    wake: asyncio.Event,
    *,
    look_every_s: float,
    at_most_every_s: float = 1.0,
) -> None:
    """Run `step` forever, each time its work is due, instead of on a timer that wakes an idle
    process for nothing (docs/benchmarks.md, "Idle").

    `step` does what is due and returns the seconds until more will be (None: nothing is
    scheduled). It runs again then; or when `wake` is set, which a caller does after it
    committed work that may be due sooner (never before the commit: the round would not see
    it); and at least every `look_every_s`, for work that another instance committed. Rounds
    are at least `at_most_every_s` apart. Failures are reported as `every` reports them, and
    the step is tried again after `at_most_every_s`.
    """
    report = logs.FailureReport(log, name, f"retrying in {at_most_every_s:g}s")
    while True:
        started = time.monotonic()
        # Cleared before the round: work committed while it runs wakes the next one.
        wake.clear()
        try:
            due_in = await step()
            report.worked()
        except Exception as exc:
            report.failed(exc)
            due_in = 0.0
        wait_s = look_every_s if due_in is None else min(max(due_in, 0.0), look_every_s)
        if wait_s > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), wait_s)
        await asyncio.sleep(max(0.0, at_most_every_s - (time.monotonic() - started)))


class QuietServer(uvicorn.Server):
    """uvicorn's server, whose main loop wakes once a second instead of every 100 ms, and at
    once when a signal asks it to stop. A wake-up of an idle process costs 0.15-0.22 ms of
    CPU on the 2-core machine (benchmarks/idle_probes.py ticks): uvicorn's ten a second were
    0.0015-0.002 cores in each of the four service processes (docs/benchmarks.md, "Idle").
    The loop refreshes the `date` header on every tick, as uvicorn's does once a second."""

    TICK_S = 1.0

    _loop: asyncio.AbstractEventLoop | None = None
    _stop_asked: asyncio.Event | None = None

    async def main_loop(self) -> None:
        self._loop, self._stop_asked = asyncio.get_running_loop(), asyncio.Event()
        if self.should_exit:  # a signal came before the loop started
            self._stop_asked.set()
        counter = 0
        should_exit = await self.on_tick(counter)
        while not should_exit:
            counter = (counter + 10) % 864000  # a multiple of 10: on_tick's "each second"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop_asked.wait(), self.TICK_S)
            should_exit = await self.on_tick(counter)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._stop_asked is not None:
            with contextlib.suppress(RuntimeError):  # the loop has closed: nothing waits
                self._loop.call_soon_threadsafe(self._stop_asked.set)


def lifespan_for(
    runtime: Runtime,
    on_start: Callable[[], "contextlib.AbstractAsyncContextManager[None]"] | None = None,
) -> Callable[[FastAPI], "contextlib.AbstractAsyncContextManager[None]"]:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await runtime.start()
        try:
            async with on_start() if on_start is not None else contextlib.nullcontext():
                await runtime.start_consumers()
                freeze_startup_objects(runtime.service)
                yield
        finally:
            await runtime.stop()

    return lifespan


@dataclass(frozen=True)
class Listener:
    """An address a service process answers on, and the app that answers there. The first
    listener's app is the service's own: its lifespan starts and stops what every listener's
    app shares (pool, producer, services)."""

    app: ASGIApp
    host: str
    port: int
    name: str  # in log lines: "public", "admin"
    setting: str  # the variable that sets the port, named when it cannot be bound


class ByListener:
    """One ASGI app for a process with several listeners: each request goes to the app of the
    listener its connection came in on (the socket's local port, never a header), lifespan
    events to the first app. The first app sees X-Forwarded-For from the proxies uvicorn
    trusts (FORWARDED_ALLOW_IPS) as uvicorn would show it to a lone app; the others see the
    connection's own peer, so that no client can choose the address an operator's request is
    throttled and recorded under."""

    def __init__(self, apps: Sequence[tuple[int, ASGIApp]]) -> None:
        first = apps[0][1]
        trusted = os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")  # uvicorn's default
        self._main: ASGIApp = ProxyHeadersMiddleware(first, trusted_hosts=trusted)  # type: ignore[arg-type, assignment]
        self._by_port: dict[int, ASGIApp] = {port: app for port, app in apps[1:]}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server") if scope["type"] != "lifespan" else None
        app = self._by_port.get(server[1]) if server else None
        await (app or self._main)(scope, receive, send)


def serve(
    service: str,
    settings: CommonSettings,
    listeners: Callable[[], Sequence[Listener]],
    *,
    processes: int = 1,
) -> None:
    """Serve the apps `listeners` builds, each on its address, in this process or, with
    `processes` > 1, in that many worker processes that each bind every address
    (shared.workers: this process supervises them)."""
    worker = os.environ.get(WORKER_INDEX)
    logs.configure(service, settings.log_level, worker)
    if processes > 1 and worker is None:
        sys.exit(Supervisor(service, processes).run())
    if worker is not None:
        die_with_parent()
    served = listeners()
    sockets: list[socket.socket] = []
    for listener in served:
        try:
            sockets.append(
                bound_socket(listener.host, listener.port, reuse_port=worker is not None)
            )
        except OSError as exc:
            advice = (
                f"another process listens there: stop it, or set {listener.setting} to a free port"
                if exc.errno == errno.EADDRINUSE
                else f"check that {listener.host} is an address of this machine and "
                f"{listener.port} a port this user may bind"
            )
            log.error(
                "cannot listen on %s:%d (%s, the %s listener): %s; %s.",
                listener.host,
                listener.port,
                listener.setting,
                listener.name,
                exc.strerror or exc,
                advice,
            )
            sys.exit(STARTUP_FAILURE)
    ports = [int(sock.getsockname()[1]) for sock in sockets]  # a port 0 is bound by now
    app: ASGIApp = served[0].app
    if len(served) > 1:
        app = ByListener([(port, ln.app) for port, ln in zip(ports, served, strict=True)])
    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        loop="uvloop",
        http=JsonErrorsHttpToolsProtocol,
        timeout_graceful_shutdown=10,
        # Longer than the idle expiry of clients' connection pools (httpx 5 s, aiohttp 15 s,
        # load balancers 60 s): at uvicorn's 5 s a client's request on a connection idle just
        # that long raced the server's close of it, and failed with a reset.
        timeout_keep_alive=KEEP_ALIVE_S,
        # Several listeners: ByListener applies the proxy headers to the first one only.
        proxy_headers=len(served) == 1,
    )
    server = QuietServer(config)
    where = ", ".join(
        f"{ln.host}:{port} ({ln.name})" for port, ln in zip(ports, served, strict=True)
    )
    if worker is None:
        log.info("starting %s on %s", service, where)
    else:
        log.info("worker %s of %s on %s", worker, service, where)
    server.run(sockets=sockets)
    if not server.started:
        sys.exit(STARTUP_FAILURE)
