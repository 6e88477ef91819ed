"""The three services: start, readiness, staleness, and the `instant-orders` CLI runs."""

# ruff: noqa: S603 - this module exists to run the stack's programs by name

from __future__ import annotations

import contextlib
import subprocess
import time
from collections.abc import Sequence
from typing import NoReturn

from .config import (
    APP_SERVICES,
    APP_STOP_TIMEOUT,
    CLI,
    INFRA,
    ROOT,
    VENV_PYTHON,
    Config,
    fail,
    rel,
    say,
    sha256_of,
    tail,
)
from .environment import tuning_env
from .processes import Launch, forget_pid, log_since, record_child, running_pid, terminate
from .system import http_status

APP_READY_TIMEOUT = 90.0


def code_digest() -> str:
    """Cheap fingerprint of the service code and tuning variables, to tell when running
    services are stale (then `up` restarts them)."""
    parts: list[bytes] = [repr(sorted(tuning_env().items())).encode()]
    for top in ("services", "shared"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.suffix in (".py", ".ini", ".mako", ".sql", ".json", ".yaml", ".toml"):
                with contextlib.suppress(OSError):
                    st = path.stat()
                    parts.append(f"{path}:{st.st_size}:{st.st_mtime_ns}".encode())
    parts.append((ROOT / "pyproject.toml").read_bytes())
    return sha256_of(*parts)


def launch_app(cfg: Config, name: str, env: dict[str, str]) -> Launch:
    if not VENV_PYTHON.exists():
        fail("the virtualenv .venv does not exist: run `python3 deploy/local/stack.py install`.")
    log = cfg.log(name)
    with log.open("ab") as out:
        out.write(f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting {name} =====\n".encode())
        offset = out.tell()
        proc = subprocess.Popen(
            [str(VENV_PYTHON), "-m", f"services.{name}"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    record_child(cfg, name, proc)
    cfg.codefile(name).write_text(code_digest() + "\n")
    return Launch(name, proc, log, offset)


def wait_apps_ready(cfg: Config, launches: Sequence[Launch]) -> None:
    started = time.monotonic()
    pending = {launch.name: launch for launch in launches}
    last: dict[str, str] = {}
    # Ready means /readyz answers 200. With PostgreSQL or Kafka stopped on purpose (a test of
    # what a service does without them), it cannot be: then wait for /healthz (alive) only.
    missing = [n for n in INFRA if running_pid(cfg, n) is None]
    probe = "/healthz" if missing else "/readyz"
    if missing and pending:
        say(f"  {' and '.join(missing)} not running: waiting for /healthz, not /readyz")
    while pending:
        for name, launch in list(pending.items()):
            if launch.proc.poll() is not None:
                forget_pid(cfg, name)
                _fail_app(cfg, launches, launch, f"it exited with code {launch.proc.returncode}")
            # Every listener of the service (the api's public and admin ports) must answer.
            answers = {
                var: http_status(f"http://127.0.0.1:{port}{probe}")
                for var, port in cfg.ports_of(name)
            }
            waiting = {var: status for var, status in answers.items() if status != 200}
            if not waiting:
                say(f"  {name} ready in {time.monotonic() - started:.1f}s")
                del pending[name]
            else:
                last[name] = ", ".join(
                    f"{var}: last answer {status}" if status else f"{var}: no answer yet"
                    for var, status in waiting.items()
                )
        if pending and time.monotonic() - started > APP_READY_TIMEOUT:
            launch = next(iter(pending.values()))
            _fail_app(
                cfg,
                launches,
                launch,
                f"GET {probe} did not answer 200 within {APP_READY_TIMEOUT:.0f}s "
                f"({last.get(launch.name)})",
            )
        if pending:
            time.sleep(0.2)


def _fail_app(cfg: Config, launches: Sequence[Launch], failed: Launch, why: str) -> NoReturn:
    for launch in launches:
        if launch.proc.poll() is None:
            terminate(launch.name, launch.proc.pid, APP_STOP_TIMEOUT)
        forget_pid(cfg, launch.name)
    infra = [n for n in INFRA if running_pid(cfg, n) is None]
    hint = (
        f" ({' and '.join(infra)} not running: start with `make up`)"
        if infra
        else " (PostgreSQL and Kafka are running: the log below says what the service lacks)"
    )
    fail(
        f"the {failed.name} service did not become ready: {why}{hint}. Last lines of "
        f"{rel(failed.log)}:\n{log_since(failed)}"
    )


def run_cli(
    cfg: Config,
    env: dict[str, str],
    *args: str,
    state: str = "PostgreSQL and Kafka are running; no service was started",
) -> str:
    if not CLI.exists():
        fail(
            f"{rel(CLI)} does not exist: the project is not installed in the virtualenv. Run "
            f"`python3 deploy/local/stack.py install`."
        )
    what = "instant-orders " + " ".join(args)
    say(f"running {what}")
    log = cfg.logs / f"cli-{'-'.join(args)}.log"
    result = subprocess.run(
        [str(CLI), *args], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        fail(
            f"`{what}` failed with exit code {result.returncode} ({state}). Its output "
            f"({rel(log)}):\n{tail(log, 40)}"
        )
    return result.stdout


def stale_apps(cfg: Config) -> list[str]:
    digest = code_digest()
    stale = []
    for name in APP_SERVICES:
        path = cfg.codefile(name)
        if running_pid(cfg, name) and path.exists() and path.read_text().strip() != digest:
            stale.append(name)
    return stale
