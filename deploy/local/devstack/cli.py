"""The command line of deploy/local/stack.py: one mutating command at a time, errors as messages."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from .apps import stale_apps
from .commands import cmd_clean, cmd_down, cmd_env, cmd_install, cmd_service, cmd_status, cmd_up
from .config import Config, StackError, fail, say
from .install import ensure_venv
from .prometheus import prometheus_stale

USAGE = """Run the whole instant-orders stack on this machine, without Docker.

Usage: python3 deploy/local/stack.py COMMAND [SERVICE ...]

  install              virtualenv + Python deps, JDK, Maven, PostgreSQL, Kafka jars,
                       Prometheus
  venv                 only the virtualenv + Python deps (for lint and unit tests)
  up                   install, then start PostgreSQL, Kafka, the three services and
                       Prometheus
  down                 stop everything this stack started (Prometheus, services, Kafka,
                       PostgreSQL)
  status               one line per process: running/stopped, pid, port
  env                  `export VAR=value` lines of the stack's settings
  start|stop|restart|kill SERVICE...
                       one or more of: api inventory fulfilment kafka postgres prometheus
                       (`kill` sends SIGKILL, for crash tests)
  clean                down, then remove the stack's state (data, logs, jars, secrets)

Everything the stack keeps (data, logs, PIDs, jars, secrets) lives in one folder, `.run/` at
the repository root, or IO_RUN_DIR. Ports come from API_PORT, API_ADMIN_PORT (the api's admin
endpoints and /metrics), INVENTORY_PORT, FULFILMENT_PORT, KAFKA_PORT, KAFKA_CONTROLLER_PORT,
PG_PORT and PROMETHEUS_PORT.

Standard library only: this script runs before the project's virtualenv exists.
"""


@contextlib.contextmanager
def _exclusive(path: Path, waiting: str) -> Iterator[None]:
    with path.open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say(waiting)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def stack_lock(cfg: Config) -> Iterator[None]:
    """One mutating command at a time per stack (two `up`s at once would race)."""
    cfg.make_dirs()
    waiting = "another stack.py command is running on this stack: waiting for it"
    with _exclusive(cfg.run / "stack.lock", waiting):
        yield


@contextlib.contextmanager
def tests_lock(cfg: Config) -> Iterator[None]:
    """Exclusive hold of `.run/tests.lock`, which `make test` holds shared while pytest runs:
    `up` restarts stale services, or gives Prometheus another interval (`make test` asks for
    2 s, `make up` for 15 s), only between test runs, never under one. Taken before the
    stack lock (tests call `stack.py restart ...`, which needs the stack lock)."""
    cfg.make_dirs()
    waiting = (
        "a test run is using this stack: waiting for it to end before restarting services "
        "or reloading Prometheus"
    )
    with _exclusive(cfg.run / "tests.lock", waiting):
        yield


COMMANDS: dict[str, Callable[[Config, list[str]], None]] = {
    "install": lambda cfg, _: print(f"installed; Kafka runs on {cmd_install(cfg)}"),
    "venv": lambda cfg, _: ensure_venv(cfg),
    "up": lambda cfg, _: cmd_up(cfg),
    "down": lambda cfg, _: cmd_down(cfg),
    "status": lambda cfg, _: cmd_status(cfg),
    "env": lambda cfg, _: cmd_env(cfg),
    "clean": lambda cfg, _: cmd_clean(cfg),
    "start": lambda cfg, names: cmd_service(cfg, "start", names),
    "stop": lambda cfg, names: cmd_service(cfg, "stop", names),
    "restart": lambda cfg, names: cmd_service(cfg, "restart", names),
    "kill": lambda cfg, names: cmd_service(cfg, "kill", names),
}
READ_ONLY = ("status", "env")


def main(argv: Sequence[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0 if argv else 2
    command, names = argv[0], list(argv[1:])
    if command not in COMMANDS:
        fail(
            f"unknown command {command!r}. Use one of: {', '.join(COMMANDS)} "
            f"(`python3 deploy/local/stack.py --help` explains them)."
        )
    if names and command not in ("start", "stop", "restart", "kill"):
        fail(f"`{command}` takes no arguments (got {' '.join(names)}).")
    cfg = Config.from_env()
    if command in READ_ONLY:
        COMMANDS[command](cfg, names)
    elif command == "up" and (stale_apps(cfg) or prometheus_stale(cfg)):
        with tests_lock(cfg), stack_lock(cfg):
            cmd_up(cfg)
    else:
        with stack_lock(cfg):
            COMMANDS[command](cfg, names)
    return 0


def entrypoint() -> None:
    try:
        code = main(sys.argv[1:])
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    except BrokenPipeError:  # the reader went away (`stack.py status | head -1`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    except KeyboardInterrupt:
        print(
            "error: interrupted; processes already started keep running (see `status`).",
            file=sys.stderr,
        )
        code = 130
    except Exception as exc:
        if os.environ.get("IO_STACK_DEBUG"):
            raise
        print(
            f"error: unexpected failure in deploy/local/stack.py: {type(exc).__name__}: {exc}. "
            f"Run it again with IO_STACK_DEBUG=1 for the traceback, and report it.",
            file=sys.stderr,
        )
        code = 1
    sys.exit(code)
