"""Several worker processes of one service on one port, each with its own listening socket.

uvicorn's own `workers` share ONE listening socket, and Linux then hands nearly every new
connection to the same worker (measured: 41 of 41 keep-alive connections on one of two
workers), so a second worker added CPU and no throughput. Here every worker binds the port
with SO_REUSEPORT, and the kernel spreads connections over the workers by their address hash.

The supervisor (the process `serve` was called in) starts the workers as fresh interpreters
(`python -m services.<service>` with WORKER_INDEX set), restarts one that dies with a growing
delay, stops all of them on SIGTERM/SIGINT, and stops altogether when a worker exits before
any worker has started (a broken configuration would fail the same way on every restart). A
worker asks the kernel to end it if the supervisor dies, so none is left holding the port.
"""

import contextlib
import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from types import FrameType

log = logging.getLogger(__name__)

WORKER_INDEX = "WORKER_INDEX"
# uvicorn's exit status when the app did not start (lifespan startup failed, port taken).
STARTUP_FAILURE = 3
RESTART_DELAYS_S = (0.5, 1.0, 2.0, 5.0, 10.0)
# A worker that ran this long before dying restarts at the shortest delay again.
STABLE_AFTER_S = 30.0
# More than uvicorn's graceful shutdown (10 s) plus the broker's and pool's own.
STOP_TIMEOUT_S = 30.0
# A worker alive this long has started; until one has, any exit means the service cannot
# start (a broken configuration, the port taken) and restarting it would fail the same way.
STARTED_AFTER_S = 10.0
SUPERVISOR_PID = "SUPERVISOR_PID"
_PR_SET_PDEATHSIG = 1


def bound_socket(host: str, port: int, *, reuse_port: bool) -> socket.socket:
    """A socket bound to host:port; with `reuse_port`, one that other workers bind too
    (SO_REUSEPORT). It is not listening yet: uvicorn listens once the app has started, so
    the kernel sends no connection to a process that is still starting (or fails to)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.set_inheritable(False)
    return sock


def die_with_parent() -> None:
    """Linux: SIGTERM this process when its parent (the supervisor) dies; exit at once if it
    already has (it died between starting us and this call)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    supervisor = os.environ.get(SUPERVISOR_PID, "")
    if supervisor.isdigit() and os.getppid() != int(supervisor):
        log.error("the supervisor (pid %s) is gone: exiting", supervisor)
        sys.exit(1)


def multiprocess_metrics_dir(service: str) -> tuple[str, bool]:
    """Where the workers write their metrics (prometheus_client's multiprocess mode), set in
    the environment they inherit: PROMETHEUS_MULTIPROC_DIR, emptied (a previous run's values
    would be added to ours), or a temporary directory of our own (returns True then)."""
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if given:
        os.makedirs(given, exist_ok=True)
        for name in os.listdir(given):
            if name.endswith(".db"):
                os.unlink(os.path.join(given, name))
        path, own = given, False
    else:
        path, own = tempfile.mkdtemp(prefix=f"{service}-metrics-"), True
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path, own


def _forget_gauges_of(pid: int, metrics_dir: str) -> None:
    """A dead worker's `live*` gauges (background_task_up) must not count any more."""
    from prometheus_client import multiprocess

    with contextlib.suppress(OSError):
        multiprocess.mark_process_dead(pid, metrics_dir)  # type: ignore[no-untyped-call]


class Supervisor:
    def __init__(self, service: str, processes: int) -> None:
        self.service = service
        self.processes = processes
        self._workers: dict[int, subprocess.Popen[bytes]] = {}
        self._started_at: dict[int, float] = {}
        self._failures: dict[int, int] = {}
        self._stopping = False
        self._started = False  # some worker has been up for STARTED_AFTER_S
        self._metrics_dir = ""

    def run(self) -> int:
        """Runs the workers until SIGTERM/SIGINT; returns the exit status."""
        metrics_dir, own_dir = multiprocess_metrics_dir(self.service)
        self._metrics_dir = metrics_dir
        log.info(
            "starting %d %s worker processes (metrics merged in %s)",
            self.processes,
            self.service,
            metrics_dir,
        )
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, self._stop)
        try:
            for index in range(self.processes):
                self._start(index)
            return self._watch()
        finally:
            self._stop_all()
            if own_dir:
                shutil.rmtree(metrics_dir, ignore_errors=True)

    def _start(self, index: int) -> None:
        env = {**os.environ, WORKER_INDEX: str(index), SUPERVISOR_PID: str(os.getpid())}
        self._workers[index] = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", f"services.{self.service}"], env=env
        )
        self._started_at[index] = time.monotonic()
        log.info("worker %d started (pid %d)", index, self._workers[index].pid)

    def _watch(self) -> int:
        restart_at: dict[int, float] = {}
        while not self._stopping:
            now = time.monotonic()
            for index, proc in list(self._workers.items()):
                code = proc.poll()
                if code is None:
                    if now - self._started_at[index] > STARTED_AFTER_S:
                        self._started = True
                    continue
                if index in restart_at:
                    continue
                _forget_gauges_of(proc.pid, self._metrics_dir)
                # A worker killed by a signal (kill -9, the OOM killer) did not fail on its
                # own: it is replaced however early. One that exited by itself before any
                # worker got going is a broken configuration: restarting would loop.
                if not self._started and code >= 0:
                    log.error(
                        "worker %d (pid %d) exited with status %s before any worker started; "
                        "stopping the %s (see its log above)",
                        index,
                        proc.pid,
                        code,
                        self.service,
                    )
                    return STARTUP_FAILURE
                if now - self._started_at[index] > STABLE_AFTER_S:
                    self._failures[index] = 0
                failures = self._failures.get(index, 0)
                delay = RESTART_DELAYS_S[min(failures, len(RESTART_DELAYS_S) - 1)]
                self._failures[index] = failures + 1
                log.error(
                    "worker %d (pid %d) died with status %s; restarting it in %.1fs",
                    index,
                    proc.pid,
                    code,
                    delay,
                )
                restart_at[index] = now + delay
            for index, when in list(restart_at.items()):
                if now >= when and not self._stopping:
                    del restart_at[index]
                    self._start(index)
            with contextlib.suppress(InterruptedError):
                time.sleep(0.5)
        return 0

    def _stop(self, signum: int, _frame: FrameType | None) -> None:
        self._stopping = True

    def _stop_all(self) -> None:
        for proc in self._workers.values():
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for proc in self._workers.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
