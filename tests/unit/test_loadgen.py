"""The benchmark's Go load generator (benchmarks/loadgen), driven as the benchmark drives it,
against a small HTTP server in this process: requests on schedule, each credentials set in
turn, answers read from the body, keep-alive connections, and every time counted from the
schedule, so that a request that waited for a connection is late by that wait."""

import asyncio
import json
import shutil
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from benchmarks.instant_orders import Answer, Schedule, go_answers, loadgen_binary

pytestmark = pytest.mark.skipif(shutil.which("go") is None, reason="needs Go to build loadgen")

Handler = Callable[[dict[str, str], bytes], Awaitable[tuple[int, bytes]]]


class Server:
    """HTTP/1.1 keep-alive, Content-Length bodies only: what the generator speaks."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections = 0
        self.received: list[float] = []  # time.perf_counter() of each request read
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> httpx.URL:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        return httpx.URL(f"http://127.0.0.1:{port}")

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while line := await reader.readline():
                assert line.startswith(b"POST /v2/orders/instant HTTP/1.1"), line
                headers = {}
                while (header := await reader.readline()) != b"\r\n":
                    name, _, value = header.decode().partition(":")
                    headers[name.strip().lower()] = value.strip()
                body = await reader.readexactly(int(headers["content-length"]))
                self.received.append(time.perf_counter())
                status, payload = await self.handler(headers, body)
                if status == 0:  # hang up without an answer
                    return
                writer.write(
                    f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(payload)}\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
        finally:
            writer.close()


def completed() -> bytes:
    return json.dumps({"data": {"status": "COMPLETED"}}).encode()


async def run(
    url: httpx.URL,
    creds: list[dict[str, str]],
    rate: int,
    total: int,
    connections: int,
    lead_s: float = 0.3,
) -> tuple[float, list[Answer]]:
    binary = loadgen_binary()
    start = time.perf_counter() + lead_s
    pids: list[int] = []
    answers = await go_answers(
        Schedule(url, b'{"sku": "S"}', creds, rate, total, connections, start),
        binary,
        pids.append,
    )
    assert len(pids) == 1
    return start, answers


async def test_requests_go_out_on_schedule_with_each_credentials_set_in_turn() -> None:
    bodies: list[bytes] = []

    async def handler(headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        bodies.append(body)
        if headers["x-answer"] == "busy":
            return 503, b'{"error": {"code": "SERVICE_UNAVAILABLE"}}'
        return 200, completed()

    server = Server(handler)
    async with server as url:
        start, answers = await run(url, [{"x-answer": "ok"}, {"x-answer": "busy"}], 200, 20, 4)

    assert [a.answer for a in answers] == ["COMPLETED", "HTTP 503"] * 10
    assert bodies == [b'{"sku": "S"}'] * 20
    assert server.connections <= 4  # kept alive, not one per request
    for i, a in enumerate(answers):
        assert a.scheduled == i / 200
        assert a.scheduled - 1e-6 <= a.woke <= a.written <= a.answered
    # Its start is this process's `start`, through the wall clock: the first request is not
    # read before it is due, nor long after.
    assert start - 0.005 <= server.received[0] <= start + 0.5


async def test_a_request_that_waits_for_a_busy_connection_is_late_by_that_wait() -> None:
    async def slow(headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        await asyncio.sleep(0.03)
        return 200, completed()

    async with Server(slow) as url:
        _, answers = await run(url, [{"x-answer": "ok"}], 100, 10, 1)

    assert {a.answer for a in answers} == {"COMPLETED"}
    last = answers[-1]
    # Due at 90 ms, written only when the nine before it (30 ms each) were answered.
    assert last.written - last.woke >= 0.1
    assert last.answered - last.scheduled >= 0.2


async def test_a_connection_closed_without_an_answer_is_an_error_and_the_run_goes_on() -> None:
    seen = 0

    async def hang_up_once(headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        nonlocal seen
        seen += 1
        return (0, b"") if seen == 1 else (200, completed())

    async with Server(hang_up_once) as url:
        _, answers = await run(url, [{"x-answer": "ok"}], 50, 4, 1)

    assert [a.answer for a in answers] == ["error", "COMPLETED", "COMPLETED", "COMPLETED"]


async def test_a_start_that_has_passed_makes_the_first_requests_late_by_it() -> None:
    async def quick(headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        return 200, completed()

    async with Server(quick) as url:
        _, answers = await run(url, [{"x-answer": "ok"}], 100, 3, 1, lead_s=-0.25)

    # Due at 0, 10 and 20 ms after a start 0.25 s before the generator was even asked.
    assert all(a.woke - a.scheduled >= 0.2 for a in answers)
    assert all(a.answered - a.scheduled >= 0.2 for a in answers)
