"""Several api worker processes on one port (API_PROCESSES): each has its own reply path, the
kernel spreads connections over them, and one that dies is replaced while the others serve.
Each also listens on the operators' port (API_ADMIN_PORT)."""

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from shared.cli.common import run_dir
from tests.conftest import Stack, StackCtl
from tests.e2e.conftest import Client, NewClient, NewProduct, order_retrying_503
from tests.e2e.test_observability import scrape
from tests.helpers import wait_until


def has_exited(pid: int) -> bool:
    """The process is gone, or a zombie: its sockets are closed either way."""
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state in ("Z", "X")


def api_workers() -> list[int]:
    """The api supervisor's worker processes (its children running services.api)."""
    supervisor = (run_dir() / "pids" / "api.pid").read_text().split()[0]
    workers = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except (OSError, IndexError):
            continue
        if fields[1] == supervisor and b"services.api" in cmdline:
            workers.append(int(stat.parent.name))
    return sorted(workers)


def listening(pid: int, port: int) -> bool:
    """Whether process `pid` has a socket listening on `port` (from /proc/net/tcp*)."""
    inodes = set()
    for line in [*_lines("/proc/net/tcp"), *_lines("/proc/net/tcp6")]:
        fields = line.split()
        if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
            inodes.add(fields[9])
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    return any(link == f"socket:[{inode}]" for link in links for inode in inodes)


def _lines(path: str) -> list[str]:
    try:
        return Path(path).read_text().splitlines()[1:]
    except OSError:
        return []


def api_ports(stack: Stack) -> list[int]:
    """The public port and the operators' one: every worker serves both."""
    return [httpx.URL(str(url)).port or 80 for url in (stack.api_url, stack.api_admin_url)]


def all_listening(stack: Stack) -> bool:
    workers = api_workers()
    return len(workers) == 2 and all(
        listening(pid, port) for pid in workers for port in api_ports(stack)
    )


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.fixture
async def two_api_processes(
    stack: Stack, stackctl: StackCtl, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[None]:
    monkeypatch.setenv("API_PROCESSES", "2")
    # A wide decision window: an order answered PROCESSING then means its reply went astray,
    # not that a busy machine was slow to decide the burst that follows a restart.
    monkeypatch.setenv("ORDERS_DECISION_WINDOW_MS", "5000")
    await stackctl("restart", "api")
    try:
        await wait_until(
            lambda: all_listening(stack), timeout=30, message="2 api workers listening"
        )
        yield
    finally:
        monkeypatch.delenv("API_PROCESSES")
        monkeypatch.delenv("ORDERS_DECISION_WINDOW_MS")
        await stackctl("restart", "api")


async def orders_over_separate_connections(
    stack: Stack, client_headers: httpx.Headers, sku: str, count: int
) -> list[httpx.Response]:
    """`count` orders, each on a connection of its own, all at once."""
    clients = [
        httpx.AsyncClient(base_url=str(stack.api_url), headers=client_headers, timeout=30)
        for _ in range(count)
    ]
    try:
        return list(await asyncio.gather(*(order_retrying_503(c, {"sku": sku}) for c in clients)))
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))


async def test_two_api_processes_each_get_their_own_replies_and_survive_a_kill(
    two_api_processes: None, new_client: NewClient, new_product: NewProduct, stack: Stack
) -> None:
    sku = await new_product(price="1.00", stock=200)
    client = await new_client(balance="1000.00")
    workers = api_workers()
    before = {pid: cpu_ticks(pid) for pid in workers}

    responses = await orders_over_separate_connections(stack, client.http.headers, sku, 60)

    # Every order COMPLETED in its window: a reply that went to the other process would have
    # left its order PROCESSING.
    assert [r.status_code for r in responses] == [200] * 60, [r.text for r in responses]
    assert [r.json()["data"]["status"] for r in responses] == ["COMPLETED"] * 60
    used = {pid: cpu_ticks(pid) - before[pid] for pid in workers}
    assert all(ticks >= 2 for ticks in used.values()), f"CPU ticks per worker: {used}"

    # Each worker froze its start (one full collection each), and its pauses, noted outside
    # any metrics lock, reach the merged /metrics once it has answered a request.
    async def both_workers_counted() -> bool:
        merged = await scrape(str(stack.api_admin_url))
        full = merged.value("python_gc_pause_seconds_count", generation="2")
        return full >= 2 and merged.value("python_gc_frozen_objects") > 10_000

    await wait_until(both_workers_counted, timeout=10, message="both workers' gc pauses")

    os.kill(workers[0], signal.SIGKILL)
    # A keep-alive connection to the killed worker is gone with it: connect afresh.
    old, client.http = (
        client.http,
        httpx.AsyncClient(base_url=str(stack.api_url), headers=client.http.headers, timeout=30),
    )
    await old.aclose()
    try:
        await serve_on_after_the_kill(stack, client, sku, responses, workers[0])
    finally:
        await client.http.aclose()


async def serve_on_after_the_kill(
    stack: Stack, client: Client, sku: str, before: list[httpx.Response], killed: int
) -> None:
    """The other worker serves on; the supervisor starts a new one in the killed one's place."""
    # kill() returns before the worker is gone: until then a new connection can still land
    # on its listening socket (SO_REUSEPORT) and be reset. Once it has exited, the other
    # worker alone takes connections.
    await wait_until(lambda: has_exited(killed), timeout=10, message="the killed worker gone")
    assert (await client.http.get("/readyz")).status_code == 200
    await wait_until(
        lambda: killed not in api_workers() and all_listening(stack),
        timeout=30,
        message="the killed api worker replaced",
    )
    again = await orders_over_separate_connections(stack, client.http.headers, sku, 20)
    assert [r.json()["data"]["status"] for r in again] == ["COMPLETED"] * 20, [
        r.text for r in again
    ]
    codes = {
        (await client.codes(r.json()["data"]["transactionId"]))[0]["redeemCode"]
        for r in [*before, *again]
    }
    assert len(codes) == 80
    assert await client.balance() == 1000 - 80
