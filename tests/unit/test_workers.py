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


def test_workers_that_cannot_start_stop_the_supervisor() -> None:
    env = {
        **os.environ,
        "APP_ENV": "dev",
        "API_PROCESSES": "2",
        "API_PORT": str(free_port()),
        "CODE_ENCRYPTION_KEYS": "not-a-key",  # every worker fails building its app
    }
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
    assert b"before any worker started" in done.stdout
    assert b"not-a-key" not in done.stdout + done.stderr  # no key material in the log
