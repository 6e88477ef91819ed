"""The stack's state folder and ports (from the environment), and the helpers all parts use."""

from __future__ import annotations

import hashlib
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[3]
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
CLI = VENV / "bin" / "instant-orders"
VENV_STAMP = VENV / ".instant-orders-install.sha256"

APP_SERVICES = ("api", "inventory", "fulfilment")
INFRA = ("postgres", "kafka")
MONITORING = ("prometheus",)
ALL_PROCESSES = (*INFRA, *APP_SERVICES, *MONITORING)

STOP_TIMEOUT = {"kafka": 60.0, "postgres": 60.0, "prometheus": 30.0}
APP_STOP_TIMEOUT = 20.0


class StackError(Exception):
    """A failure with a message that says what went wrong and what to do."""


def say(message: str) -> None:
    print(f"[stack] {message}", file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    raise StackError(message)


def rel(path: Path) -> str:
    """A path as the user would type it: relative to the repository when inside it."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return f"({path} does not exist)"
    kept = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in kept) or "    (empty)"


def sha256_of(*parts: bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
        digest.update(b"\0")
    return digest.hexdigest()


def _port(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        fail(
            f"{name}={raw!r} is not a TCP port number. Set {name} to a number between 1024 and "
            f"65535 (or unset it to use {default}) and run the command again."
        )
    return int(raw)


# How often the local Prometheus scrapes the services and evaluates the alert rules. `up`'s
# default is Prometheus's own; `make test` sets 2s, so that tests see a service go down (and
# its consumers' lag grow) within seconds. Every scrape costs each service the rendering of
# its /metrics: at 2 s, about 0.015 cores of the idle stack (docs/benchmarks.md).
PROMETHEUS_INTERVAL_DEFAULT = "15s"
_INTERVAL = re.compile(r"[1-9][0-9]*(ms|s|m)")


def _interval(name: str, default: str) -> str:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    if not _INTERVAL.fullmatch(raw):
        fail(
            f"{name}={raw!r} is not a Prometheus duration. Set {name} to a number followed by "
            f"ms, s or m (e.g. 2s, 15s; or unset it to use {default}) and run the command again."
        )
    return raw


@dataclass(frozen=True)
class Config:
    run: Path
    api_port: int
    api_admin_port: int
    inventory_port: int
    fulfilment_port: int
    kafka_port: int
    kafka_controller_port: int
    pg_port: int
    prometheus_port: int
    prometheus_interval: str = PROMETHEUS_INTERVAL_DEFAULT

    @classmethod
    def from_env(cls) -> Config:
        run_dir = os.environ.get("IO_RUN_DIR", "").strip()
        cfg = cls(
            run=Path(run_dir).expanduser().resolve() if run_dir else ROOT / ".run",
            api_port=_port("API_PORT", 8000),
            api_admin_port=_port("API_ADMIN_PORT", 8010),
            inventory_port=_port("INVENTORY_PORT", 8001),
            fulfilment_port=_port("FULFILMENT_PORT", 8002),
            kafka_port=_port("KAFKA_PORT", 9092),
            kafka_controller_port=_port("KAFKA_CONTROLLER_PORT", 9093),
            pg_port=_port("PG_PORT", 5432),
            prometheus_port=_port("PROMETHEUS_PORT", 9090),
            prometheus_interval=_interval(
                "PROMETHEUS_SCRAPE_INTERVAL", PROMETHEUS_INTERVAL_DEFAULT
            ),
        )
        seen: dict[int, str] = {}
        for var, port in cfg.port_vars():
            if port in seen:
                fail(
                    f"{seen[port]} and {var} are both {port}. Every process of the stack needs "
                    f"its own port: change one of them and run the command again."
                )
            seen[port] = var
        return cfg

    def port_vars(self) -> list[tuple[str, int]]:
        return [
            ("API_PORT", self.api_port),
            ("API_ADMIN_PORT", self.api_admin_port),
            ("INVENTORY_PORT", self.inventory_port),
            ("FULFILMENT_PORT", self.fulfilment_port),
            ("KAFKA_PORT", self.kafka_port),
            ("KAFKA_CONTROLLER_PORT", self.kafka_controller_port),
            ("PG_PORT", self.pg_port),
            ("PROMETHEUS_PORT", self.prometheus_port),
        ]

    def ports_of(self, name: str) -> list[tuple[str, int]]:
        """Every port a process listens on; a service's public one first."""
        return {
            "api": [("API_PORT", self.api_port), ("API_ADMIN_PORT", self.api_admin_port)],
            "inventory": [("INVENTORY_PORT", self.inventory_port)],
            "fulfilment": [("FULFILMENT_PORT", self.fulfilment_port)],
            "kafka": [
                ("KAFKA_PORT", self.kafka_port),
                ("KAFKA_CONTROLLER_PORT", self.kafka_controller_port),
            ],
            "postgres": [("PG_PORT", self.pg_port)],
            "prometheus": [("PROMETHEUS_PORT", self.prometheus_port)],
        }[name]

    def admin_port(self, name: str) -> int:
        """Where a service answers its admin endpoints and /metrics: the api on a listener
        of its own, inventory and fulfilment (internal services) on their one port."""
        return self.ports_of(name)[-1][1]

    @property
    def logs(self) -> Path:
        return self.run / "logs"

    @property
    def pids(self) -> Path:
        return self.run / "pids"

    @property
    def kafka_dir(self) -> Path:
        return self.run / "kafka"

    @property
    def kafka_libs(self) -> Path:
        return self.kafka_dir / "libs"

    @property
    def kafka_data(self) -> Path:
        return self.kafka_dir / "data"

    @property
    def kafka_properties(self) -> Path:
        return self.kafka_dir / "server.properties"

    @property
    def prometheus_dir(self) -> Path:
        return self.run / "prometheus"

    @property
    def prometheus_config(self) -> Path:
        return self.prometheus_dir / "prometheus.yml"

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.prometheus_port}"

    @property
    def secrets_file(self) -> Path:
        return self.run / "secrets.env"

    @property
    def seeded_marker(self) -> Path:
        return self.run / "demo-seeded"

    @property
    def demo_credentials(self) -> Path:
        return self.run / "demo-credentials.txt"

    def pidfile(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def codefile(self, name: str) -> Path:
        return self.pids / f"{name}.code"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def make_dirs(self) -> None:
        for path in (self.run, self.logs, self.pids):
            path.mkdir(parents=True, exist_ok=True)
            path.chmod(0o755)
