"""The services' uvicorn server (shared.runtime.QuietServer): its main loop ticks once a
second instead of every 100 ms, and a signal to stop ends it at once, not at the next tick."""

import signal
import socket
import threading
import time

import httpx
import uvicorn
from starlette.types import Receive, Scope, Send

from shared.runtime import QuietServer


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"hello"})


class SlowTicks(QuietServer):
    TICK_S = 30.0  # a stop that waited for the tick would take this long
    ticks = 0

    async def on_tick(self, counter: int) -> bool:
        self.ticks += 1
        return await super().on_tick(counter)


def test_a_signal_to_stop_ends_the_server_at_once_not_at_its_next_tick() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = SlowTicks(uvicorn.Config(hello, lifespan="off", log_config=None, loop="uvloop"))
    # Outside the main thread uvicorn installs no signal handlers (nor raises the signal
    # again when it ends): the test calls the handler itself, as the signal would.
    running = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    running.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        answer = httpx.get(f"http://127.0.0.1:{port}/")
        assert (answer.status_code, answer.text) == (200, "hello")
        assert answer.headers["date"]  # set by the first tick, as uvicorn's loop does
    finally:
        asked = time.monotonic()
        server.handle_exit(signal.SIGTERM, None)
        running.join(10)
    assert not running.is_alive()
    assert time.monotonic() - asked < 2.0, "the stop waited for the tick"
    assert server.ticks == 2  # the first, and the one the stop woke
