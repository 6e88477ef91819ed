"""The api's worker supervisor (shared/workers.py): workers share the port through
SO_REUSEPORT, and a service whose workers cannot start stops instead of restarting forever."""

import os
import socket
import subprocess
import sys

from shared.workers import STARTUP_FAILURE, bound_socket
from tests.helpers import REPO_ROOT


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_two_workers_bind_one_port() -> None:
    port = free_port()
    first = bound_socket("127.0.0.1", port, reuse_port=True)
    second = bound_socket("127.0.0.1", port, reuse_port=True)
    try:
        # Bound, not listening: no connection reaches a worker that has not started.
        second.listen(8)
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            pass
    finally:
        first.close()
        second.close()


def api_that_fails_to_start(**settings: str) -> subprocess.CompletedProcess[bytes]:
    """Runs `python -m services.api` with these settings (and a free API_PORT), expecting it
    to give up; returns how it ended."""
    env = {**os.environ, "APP_ENV": "dev", "API_PORT": str(free_port()), **settings}
    env.pop("WORKER_INDEX", None)
    done = subprocess.run(
        [sys.executable, "-m", "services.api"],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == STARTUP_FAILURE, done.stdout[-2000:]
    return done


def test_workers_that_cannot_start_stop_the_supervisor() -> None:
    # every worker fails building its app
    done = api_that_fails_to_start(API_PROCESSES="2", CODE_ENCRYPTION_KEYS="not-a-key")
    assert b"before any worker started" in done.stdout
    assert b"not-a-key" not in done.stdout + done.stderr  # no key material in the log


def test_a_taken_admin_port_stops_the_api_with_the_variable_to_change() -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        done = api_that_fails_to_start(API_PROCESSES="1", API_ADMIN_PORT=str(taken))
    expected = f"cannot listen on 127.0.0.1:{taken} (API_ADMIN_PORT, the admin listener)"
    assert expected.encode() in done.stdout
    assert b"set API_ADMIN_PORT to a free port" in done.stdout
