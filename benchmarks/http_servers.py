"""What the HTTP server costs per request on this machine: uvicorn as the services run it
(uvloop, httptools, the project's protocol subclass) against granian (HTTP in Rust, the ASGI
app on a Python event loop), each serving the same app in a process of its own, driven by
benchmarks/loadgen at fixed rates. No stack is needed, only Go for the generator.

Two apps, each on every server (uvicorn, and granian with the settings GRANIAN_FLAVOURS
names):
- `raw`: a bare ASGI callable answering a fixed body: the server alone.
- `route`: the api's public app shape without the order: `HotRoutes` with the common
  middleware (request id, body bound, HTTP metrics), a hot route that reads and validates an
  instant order's body with the api's own model and answers a created order's JSON. What is
  left out is what the server does not touch: authentication (cached), the order desk.

Printed per server, app and rate: the server process's CPU time per request (its children
and threads included: granian runs the app in a worker process with Rust threads beside the
Python loop), the generator's, p50/p99/max latency from each request's scheduled send, and
how far the generator fell behind its schedule at worst. Every answer must be a 200 saying
COMPLETED, and the server must live through the run: if not, the benchmark stops and says so.

    .venv/bin/python benchmarks/http_servers.py --rates 1000,3000 --seconds 10 --rounds 2

granian is not one of the project's dependencies: the script installs it into the
virtualenv it runs in if it is missing.
"""

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from instant_orders import (  # noqa: E402
    START_LEAD_S,
    Result,
    Schedule,
    go_answers,
    loadgen_binary,
    tree_cpu_seconds,
)

GRANIAN = "granian==2.8.9"
# granian's settings tried: its defaults (on uvloop), a single-threaded Rust runtime, and
# that with granian's tasks implemented in Rust.
GRANIAN_FLAVOURS: dict[str, dict[str, str]] = {
    "granian": {},
    "granian-st": {"runtime_mode": "st"},
    "granian-st-rust": {"runtime_mode": "st", "task_impl": "rust"},
}
SERVERS = ("uvicorn", *GRANIAN_FLAVOURS)
APPS = ("raw", "route")
PATH = "/v2/orders/instant"
CONNECTIONS = 64
BODY = json.dumps({"sku": "BENCH-SKU-0001", "clientOrderNumber": "c-1"})
# About the size of a created instant order's answer (services/api: created_order_out).
ANSWER: dict[str, Any] = {
    "requestId": "6b9d2c2e-6a3f-4b0e-9b7e-1f2d3c4b5a69",
    "data": {
        "transactionId": "0f7e2c1a-3b4d-4e5f-8a9b-0c1d2e3f4a5b",
        "ezOrderNumber": "EZ-0F7E2C1A3B4D",
        "clientOrderNumber": "c-1",
        "sku": "BENCH-SKU-0001",
        "quantity": 1,
        "unitPrice": "10.00",
        "grandTotal": "10.00",
        "currency": "USD",
        "status": "COMPLETED",
        "createdAt": "2026-12-08T05:00:00.000Z",
    },
}
RAW_BODY = json.dumps(ANSWER).encode()


# --- the apps (imported by the server process) ------------------------------------------------


async def raw_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    more = True
    while more:
        more = (await receive()).get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(RAW_BODY)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": RAW_BODY})


def route_app() -> Any:
    from fastapi import Request
    from fastapi.responses import JSONResponse

    from services.api.entrypoints.http import CreateInstantOrderIn
    from shared.web import HotRoutes, install_common, ok

    async def create(request: Request) -> JSONResponse:
        body = CreateInstantOrderIn.model_validate_json(await request.body())
        data = dict(ANSWER["data"], sku=body.sku, clientOrderNumber=body.clientOrderNumber)
        return JSONResponse(ok(data))

    app = HotRoutes()
    install_common(app, "bench", {}, hot_routes=[("POST", PATH, create)])
    return app


def app() -> Any:
    """The app HTTP_BENCH_APP names (granian's factory target)."""
    return raw_app if os.environ.get("HTTP_BENCH_APP") == "raw" else route_app()


# --- the servers ------------------------------------------------------------------------------


def serve(server: str, port: int) -> None:
    if server == "uvicorn":
        import uvicorn

        from shared.runtime import QuietServer
        from shared.web import JsonErrorsHttpToolsProtocol

        config = uvicorn.Config(
            app(),
            host="127.0.0.1",
            port=port,
            log_config=None,
            access_log=False,
            loop="uvloop",
            http=JsonErrorsHttpToolsProtocol,
        )
        QuietServer(config).run()
        return
    from granian import Granian
    from granian.constants import HTTPModes, Interfaces, Loops, RuntimeModes, TaskImpl

    flavour = dict(GRANIAN_FLAVOURS[server])
    Granian(
        "http_servers:app",
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        factory=True,
        workers=1,
        runtime_threads=1,
        runtime_mode=RuntimeModes(flavour.get("runtime_mode", "auto")),
        task_impl=TaskImpl(flavour.get("task_impl", "asyncio")),
        loop=Loops(flavour.get("loop", "uvloop")),
        http=HTTPModes.http1,
        websockets=False,
        log_access=False,
        working_dir=REPO / "benchmarks",
    ).serve()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_listening(
    port: int, proc: asyncio.subprocess.Process, deadline_s: float = 30
) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.returncode is not None:
            raise SystemExit(f"the server exited ({proc.returncode}) before it listened")
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.05)  # a port not open yet, polled; bounded by the deadline
    raise SystemExit(f"no server on port {port} within {deadline_s:.0f} s")


# --- a measured run ---------------------------------------------------------------------------


def children_cpu_s() -> float:
    """CPU time of this process's reaped children: the generators that have exited."""
    times = os.times()
    return times.children_user + times.children_system


async def measured(
    schedule: Schedule, binary: Path, server: asyncio.subprocess.Process
) -> tuple[Result, float, float, float]:
    """One run of `schedule`: its result, the server's and the generator's CPU ms per request,
    and how far the generator fell behind its schedule at worst (ms). A run
    in which the server died or any answer was not a COMPLETED order ends the benchmark: its
    numbers would be those of refused connections."""
    server_before, generator_before = tree_cpu_seconds(server.pid), children_cpu_s()
    answers = await go_answers(schedule, binary, lambda _: None)
    server_s, generator_s = (
        tree_cpu_seconds(server.pid) - server_before,
        children_cpu_s() - generator_before,
    )
    if server.returncode is not None:
        raise SystemExit(f"the server exited ({server.returncode}) during the run")
    result = Result(schedule.rate, schedule.total / schedule.rate)
    result.elapsed = max(a.answered for a in answers) - min(a.scheduled for a in answers)
    for a in answers:
        result.latencies.append(a.answered - a.scheduled)
        result.statuses[a.answer] = result.statuses.get(a.answer, 0) + 1
    if set(result.statuses) != {"COMPLETED"}:
        raise SystemExit(f"not every answer was a COMPLETED order: {result.statuses}")
    behind_ms = max(a.woke - a.scheduled for a in answers) * 1000
    n = len(answers)
    return result, server_s / n * 1000, generator_s / n * 1000, behind_ms


def schedule_for(port: int, rate: int, count: int) -> Schedule:
    return Schedule(
        url=httpx.URL(f"http://127.0.0.1:{port}"),
        body=BODY.encode(),
        creds=[{}],  # loadgen sends Content-Type itself; no credentials are needed
        rate=rate,
        total=count,
        connections=CONNECTIONS,
        start=time.perf_counter() + START_LEAD_S,
    )


async def one_server(server: str, app_name: str, rates: list[int], seconds: float) -> None:
    """Starts `server` with `app_name` on a port of its own, warms it, runs each rate."""
    port = free_port()
    env = {**os.environ, "HTTP_BENCH_APP": app_name}
    cmd = [sys.executable, __file__, "--serve", server, "--port", str(port)]
    proc = await asyncio.create_subprocess_exec(*cmd, env=env, stdout=asyncio.subprocess.DEVNULL)
    try:
        await wait_listening(port, proc)
        binary = loadgen_binary()
        await measured(schedule_for(port, 200, 400), binary, proc)  # the server's code warm
        for rate in rates:
            result, server_ms, generator_ms, behind_ms = await measured(
                schedule_for(port, rate, int(rate * seconds)), binary, proc
            )
            print(
                f"| {server} | {app_name} | {rate} | {result.answered_per_s:.0f} | "
                f"{server_ms:.3f} | {generator_ms:.3f} | {result.pct(0.50):.2f} | "
                f"{result.pct(0.99):.2f} | {max(result.latencies) * 1000:.1f} | "
                f"{behind_ms:.1f} |",
                flush=True,
            )
    finally:
        await stop(proc)


async def stop(proc: asyncio.subprocess.Process) -> None:
    """Stops the server (SIGTERM, then SIGKILL after 30 s), whatever the run ended with."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="1000,3000")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--servers", default=",".join(SERVERS))
    parser.add_argument("--apps", default=",".join(APPS))
    args = parser.parse_args()
    for option, wanted, known in (
        ("--servers", args.servers, SERVERS),
        ("--apps", args.apps, APPS),
    ):
        if unknown := set(wanted.split(",")) - set(known):
            parser.error(
                f"{option}: unknown {', '.join(sorted(unknown))} (known: {', '.join(known)})"
            )
    from optional import installed

    installed("granian", GRANIAN)
    rates = [int(r) for r in args.rates.split(",")]
    print(
        "| server | app | offered/s | answered/s | server CPU ms/request | generator CPU ms/request"
        " | p50 ms | p99 ms | max ms | generator behind, at most ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for _ in range(args.rounds):
        for app_name in args.apps.split(","):
            for server in args.servers.split(","):
                await one_server(server, app_name, rates, args.seconds)


if __name__ == "__main__":
    if "--serve" in sys.argv:
        serve(sys.argv[sys.argv.index("--serve") + 1], int(sys.argv[sys.argv.index("--port") + 1]))
    else:
        asyncio.run(main())
