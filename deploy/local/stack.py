#!/usr/bin/env python3
"""Run the whole instant-orders stack on this machine, without Docker.

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
the repository root, or IO_RUN_DIR. Ports come from API_PORT, INVENTORY_PORT, FULFILMENT_PORT,
KAFKA_PORT, KAFKA_CONTROLLER_PORT, PG_PORT and PROMETHEUS_PORT.

Standard library only: this script runs before the project's virtualenv exists.
"""
# ruff: noqa: S603, S607 - this script exists to run the stack's programs by name

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # noqa: UP036 - must run (and explain) on older interpreters
    major, minor = sys.version_info[:2]
    sys.stderr.write(
        f"error: deploy/local/stack.py needs Python 3.11 or newer, but it was started with "
        f"Python {major}.{minor} ({sys.executable}). Install Python 3.11+ (for example "
        f"`apt-get install python3` on Debian 12, or pyenv) and run it as "
        f"`python3.11 deploy/local/stack.py ...`.\n"
    )
    sys.exit(2)

import base64
import contextlib
import fcntl
import hashlib
import json
import os
import pwd
import re
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parents[2]
VENV = ROOT / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
CLI = VENV / "bin" / "instant-orders"
VENV_STAMP = VENV / ".instant-orders-install.sha256"
KAFKA_POM = ROOT / "deploy" / "kafka" / "pom.xml"
KAFKA_LOG4J = ROOT / "deploy" / "kafka" / "log4j2.xml"
PG_INIT_SQL = ROOT / "deploy" / "postgres" / "init-databases.sql"
PROMETHEUS_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"

APP_SERVICES = ("api", "inventory", "fulfilment")
INFRA = ("postgres", "kafka")
MONITORING = ("prometheus",)
ALL_PROCESSES = (*INFRA, *APP_SERVICES, *MONITORING)

# PostgreSQL refuses to run as root: as root, the stack runs it as this system user.
PG_SYSTEM_USER = "instant-orders"
# Variables of the caller's environment handed to the services as they are, so that tests and
# humans can tune the services (decision window, supplier delay, ...).
PASSTHROUGH_PREFIXES = ("API_", "INVENTORY_", "FULFILMENT_", "ORDERS_", "SUPPLIER_")
# ... and these settings common to every service.
PASSTHROUGH_NAMES = ("LOG_LEVEL", "DB_POOL_SIZE", "CONSUMER_MAX_RETRIES", "OUTBOX_POLL_INTERVAL_S")
# The environment every service process gets from the stack (docker-compose.yml gives the
# same names; tests/unit/test_compose.py checks that).
SERVICE_ENV_NAMES = (
    "APP_ENV",
    "KAFKA_BOOTSTRAP_SERVERS",
    "API_DATABASE_URL",
    "INVENTORY_DATABASE_URL",
    "FULFILMENT_DATABASE_URL",
    "API_PORT",
    "INVENTORY_PORT",
    "FULFILMENT_PORT",
    "ADMIN_TOKEN",
    "CODE_ENCRYPTION_KEYS",
    "CODE_FINGERPRINT_KEY",
    "API_URL",
    "INVENTORY_URL",
    "FULFILMENT_URL",
    "IO_RUN_DIR",
)
# Only these of the caller's other variables reach the services.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SSL_CERT_FILE")
APT_JDK_PACKAGES = ("openjdk-17-jdk-headless", "openjdk-21-jdk-headless", "default-jdk-headless")
MIN_JAVA = 17

KAFKA_READY_LINE = "Kafka Server started"
KAFKA_READY_TIMEOUT = 120.0
APP_READY_TIMEOUT = 90.0
STOP_TIMEOUT = {"kafka": 60.0, "postgres": 60.0, "prometheus": 30.0}
# The local Prometheus scrapes and evaluates the alert rules this often: short, so that tests
# see a service go down (and its consumers' lag grow) within seconds.
PROMETHEUS_INTERVAL = "2s"
PROMETHEUS_READY_TIMEOUT = 60.0
PROMETHEUS_RETENTION = "2d"
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


# --------------------------------------------------------------------------------------------
# Configuration


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


@dataclass(frozen=True)
class Config:
    run: Path
    api_port: int
    inventory_port: int
    fulfilment_port: int
    kafka_port: int
    kafka_controller_port: int
    pg_port: int
    prometheus_port: int

    @classmethod
    def from_env(cls) -> Config:
        run_dir = os.environ.get("IO_RUN_DIR", "").strip()
        cfg = cls(
            run=Path(run_dir).expanduser().resolve() if run_dir else ROOT / ".run",
            api_port=_port("API_PORT", 8000),
            inventory_port=_port("INVENTORY_PORT", 8001),
            fulfilment_port=_port("FULFILMENT_PORT", 8002),
            kafka_port=_port("KAFKA_PORT", 9092),
            kafka_controller_port=_port("KAFKA_CONTROLLER_PORT", 9093),
            pg_port=_port("PG_PORT", 5432),
            prometheus_port=_port("PROMETHEUS_PORT", 9090),
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
            ("INVENTORY_PORT", self.inventory_port),
            ("FULFILMENT_PORT", self.fulfilment_port),
            ("KAFKA_PORT", self.kafka_port),
            ("KAFKA_CONTROLLER_PORT", self.kafka_controller_port),
            ("PG_PORT", self.pg_port),
            ("PROMETHEUS_PORT", self.prometheus_port),
        ]

    def ports_of(self, name: str) -> list[tuple[str, int]]:
        return {
            "api": [("API_PORT", self.api_port)],
            "inventory": [("INVENTORY_PORT", self.inventory_port)],
            "fulfilment": [("FULFILMENT_PORT", self.fulfilment_port)],
            "kafka": [
                ("KAFKA_PORT", self.kafka_port),
                ("KAFKA_CONTROLLER_PORT", self.kafka_controller_port),
            ],
            "postgres": [("PG_PORT", self.pg_port)],
            "prometheus": [("PROMETHEUS_PORT", self.prometheus_port)],
        }[name]

    def app_port(self, name: str) -> int:
        return self.ports_of(name)[0][1]

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


# --------------------------------------------------------------------------------------------
# Running commands


def run_logged(
    cmd: Sequence[str | Path],
    log: Path,
    what: str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    progress_every: float = 20.0,
) -> int:
    """Run a long command with its output in `log`, printing a progress line now and then."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w") as out:
        try:
            proc = subprocess.Popen(
                [str(c) for c in cmd],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            fail(f"could not run {cmd[0]} ({exc}) while {what}.")
        next_note = started + progress_every
        while proc.poll() is None:
            time.sleep(0.2)
            if time.monotonic() >= next_note:
                say(f"  still {what} ({time.monotonic() - started:.0f}s, log: {rel(log)})")
                next_note += progress_every
    return proc.returncode


def _apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


_apt_updated = False


def apt_update(what: str) -> None:
    global _apt_updated
    if _apt_updated:
        return
    cfg = Config.from_env()
    cfg.make_dirs()
    say("apt-get update (once per run)")
    log = cfg.logs / "apt-update.log"
    if run_logged(["apt-get", "update"], log, "running apt-get update", env=_apt_env()) != 0:
        fail(
            f"`apt-get update` failed, so {what} cannot be installed. Check the network and "
            f"the apt sources, then run the command again. Last lines of {rel(log)}:\n"
            f"{tail(log)}"
        )
    _apt_updated = True


def can_apt() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(packages: Sequence[str], what: str) -> None:
    manual = f"apt-get install -y {' '.join(packages)}"
    if not can_apt():
        fail(
            f"{what} is missing and this script can install it only with apt-get as root. "
            f"Install it yourself (on Debian/Ubuntu: `sudo {manual}`), make sure it is on PATH, "
            f"and run the command again."
        )
    apt_update(what)
    cfg = Config.from_env()
    say(f"installing {what} with apt-get: {' '.join(packages)} (this can take a few minutes)")
    log = cfg.logs / "apt-install.log"
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if run_logged(cmd, log, f"installing {what}", env=_apt_env()) != 0:
        fail(
            f"`{manual}` failed, so {what} is not available. Install it yourself and run the "
            f"command again. Last lines of {rel(log)}:\n{tail(log)}"
        )


def apt_has(package: str) -> bool:
    result = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", package],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0 and bool(result.stdout.strip())


# --------------------------------------------------------------------------------------------
# Install: virtualenv, JDK, Maven, PostgreSQL, Kafka jars


def ensure_venv(cfg: Config) -> None:
    if not VENV_PYTHON.exists():
        say(f"creating the virtualenv {rel(VENV)}")
        result = subprocess.run(
            [sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            fail(
                f"`{sys.executable} -m venv .venv` failed: {result.stderr.strip()[-400:]}. On "
                f"Debian/Ubuntu install the venv module (`apt-get install -y python3-venv`), "
                f"remove the half-made .venv folder and run the command again."
            )
    probe = subprocess.run(
        [str(VENV_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    version = probe.stdout.strip()
    if probe.returncode != 0 or tuple(int(p) for p in version.split(".")) < (3, 11):
        fail(
            f"the virtualenv {rel(VENV)} is broken or older than Python 3.11 "
            f"({version or 'no answer'}). Remove it (`rm -rf .venv`) and run the command again "
            f"with Python 3.11+."
        )
    pyproject = ROOT / "pyproject.toml"
    wanted = sha256_of(pyproject.read_bytes(), version.encode())
    installed = VENV_STAMP.read_text().strip() if VENV_STAMP.exists() else ""
    if installed == wanted and CLI.exists():
        return
    log = cfg.logs / "pip.log"
    say(f"installing the project and its dependencies into {rel(VENV)} (log: {rel(log)})")
    started = time.monotonic()
    cmd: list[str | Path] = [VENV_PYTHON, "-m", "pip", "install", "--disable-pip-version-check"]
    cmd += ["-e", ".[dev]"]
    if run_logged(cmd, log, "installing Python packages", cwd=ROOT) != 0:
        fail(
            f"`pip install -e '.[dev]'` failed in {rel(VENV)}. If PyPI could not be reached, "
            f"check the network or the pip proxy settings (PIP_INDEX_URL); if a package failed "
            f"to build, the log says which. Last lines of {rel(log)}:\n{tail(log)}"
        )
    VENV_STAMP.write_text(wanted + "\n")
    say(f"  Python packages installed in {time.monotonic() - started:.0f}s")


def java_major(java: str) -> int | None:
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str | None:
    candidates: list[str] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java"))
    for candidate in candidates:
        if Path(candidate).exists() and (java_major(candidate) or 0) >= MIN_JAVA:
            return candidate
    return None


def ensure_java() -> str:
    java = find_java()
    if java:
        return java
    what = f"a Java {MIN_JAVA}+ JDK (Kafka 4 needs it)"
    package = APT_JDK_PACKAGES[0]
    if can_apt():
        apt_update(what)
        package = next((p for p in APT_JDK_PACKAGES if apt_has(p)), package)
    apt_install([package], what)
    java = find_java()
    if not java:
        fail(
            f"no Java {MIN_JAVA}+ runtime was found after installing {package}. Install a JDK "
            f"{MIN_JAVA}+, set JAVA_HOME to it, and run the command again."
        )
    return java


def java_env(java: str) -> dict[str, str]:
    java_home = Path(java).resolve().parent.parent
    return {
        **os.environ,
        "JAVA_HOME": str(java_home),
        "PATH": f"{java_home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }


def ensure_kafka_jars(cfg: Config, java: str) -> None:
    stamp = cfg.kafka_libs / ".pom.sha256"
    wanted = sha256_of(KAFKA_POM.read_bytes())
    if stamp.exists() and stamp.read_text().strip() == wanted:
        return
    if shutil.which("mvn") is None:
        apt_install(["maven"], "Maven (it fetches the Kafka jars from Maven Central)")
        if shutil.which("mvn") is None:
            fail("Maven was installed but `mvn` is not on PATH. Add it to PATH and run again.")
    log = cfg.logs / "mvn.log"
    staging = cfg.kafka_dir / "libs.tmp"
    shutil.rmtree(staging, ignore_errors=True)
    staging.parent.mkdir(parents=True, exist_ok=True)
    say(f"fetching the Kafka broker jars from Maven Central into {rel(cfg.kafka_libs)}")
    started = time.monotonic()
    cmd = [
        "mvn",
        "-B",
        "-q",
        "-f",
        str(KAFKA_POM),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={staging}",
    ]
    if run_logged(cmd, log, "downloading Kafka jars", env=java_env(java)) != 0:
        text = log.read_text(errors="replace") if log.exists() else ""
        hint = (
            "Maven could not reach Maven Central: check the network, or the proxy/mirror "
            "settings in ~/.m2/settings.xml"
            if re.search(
                r"Could not transfer|UnknownHost|Connection refused|timed out|Network is "
                r"unreachable|Could not resolve",
                text,
            )
            else "the log says why"
        )
        fail(
            f"fetching the Kafka jars with Maven failed ({hint}). Fix that and run the command "
            f"again. Last lines of {rel(log)}:\n{tail(log)}"
        )
    if not list(staging.glob("kafka_2.13-*.jar")):
        fail(f"Maven finished but no Kafka jar is in {staging}; see {rel(log)}.")
    shutil.rmtree(cfg.kafka_libs, ignore_errors=True)
    staging.rename(cfg.kafka_libs)
    stamp.write_text(wanted + "\n")
    say(f"  Kafka jars fetched in {time.monotonic() - started:.0f}s")


@dataclass(frozen=True)
class PgBin:
    initdb: str
    pg_ctl: str
    postgres: str
    psql: str


def find_pg_bin() -> PgBin | None:
    dirs: list[Path] = []
    if os.environ.get("PG_BIN"):
        dirs.append(Path(os.environ["PG_BIN"]))
    on_path = shutil.which("pg_ctl")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)

    def version_key(path: Path) -> int:
        name = path.parent.name
        return int(name) if name.isdigit() else 0

    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    for directory in dirs:
        tools = {t: directory / t for t in ("initdb", "pg_ctl", "postgres")}
        if all(p.exists() for p in tools.values()):
            psql = directory / "psql"
            psql_path = str(psql) if psql.exists() else shutil.which("psql")
            if psql_path:
                return PgBin(
                    str(tools["initdb"]), str(tools["pg_ctl"]), str(tools["postgres"]), psql_path
                )
    return None


def ensure_postgres_binaries() -> PgBin:
    found = find_pg_bin()
    if found:
        return found
    # Debian's package would create and start a "main" cluster on port 5432: the stack runs
    # its own, so ask postgresql-common not to create one (only when nobody configured it).
    conf = Path("/etc/postgresql-common/createcluster.conf")
    if os.geteuid() == 0 and not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            "# written by instant-orders deploy/local/stack.py\ncreate_main_cluster = false\n"
        )
    apt_install(["postgresql", "postgresql-client"], "the PostgreSQL server")
    found = find_pg_bin()
    if not found:
        fail(
            "PostgreSQL was installed but its server programs (initdb, pg_ctl, postgres) were "
            "not found. Set PG_BIN to the folder that has them and run the command again."
        )
    return found


@dataclass(frozen=True)
class PromBin:
    prometheus: str
    promtool: str


def find_prometheus() -> PromBin | None:
    dirs: list[Path] = []
    if os.environ.get("PROMETHEUS_BIN"):
        dirs.append(Path(os.environ["PROMETHEUS_BIN"]))
    on_path = shutil.which("prometheus")
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    dirs.append(Path("/usr/bin"))
    for directory in dirs:
        server, tool = directory / "prometheus", directory / "promtool"
        if server.exists() and tool.exists():
            return PromBin(str(server), str(tool))
    return None


POLICY_RC_D = Path("/usr/sbin/policy-rc.d")


@contextlib.contextmanager
def services_held_back() -> Iterator[None]:
    """While apt installs a package, keep its maintainer scripts from starting the package's
    own service (Debian's prometheus would start one on port 9090 with /etc/prometheus):
    the standard policy-rc.d "action forbidden" answer, only if the machine has no policy."""
    if POLICY_RC_D.exists() or os.geteuid() != 0:
        yield
        return
    POLICY_RC_D.write_text("#!/bin/sh\n# temporary, written by instant-orders stack.py\nexit 101\n")
    POLICY_RC_D.chmod(0o755)
    try:
        yield
    finally:
        POLICY_RC_D.unlink(missing_ok=True)


def ensure_prometheus() -> PromBin:
    found = find_prometheus()
    if found:
        return found
    with services_held_back():
        apt_install(
            ["prometheus"],
            "Prometheus (the stack's metrics server and its rule checker promtool)",
        )
    # The package enables its own service for the next boot: the stack runs its own process
    # (its config in .run/prometheus), so keep the package's off.
    if Path("/run/systemd/system").is_dir() and shutil.which("systemctl"):
        subprocess.run(
            ["systemctl", "disable", "--now", "prometheus.service"],
            capture_output=True,
            check=False,
        )
    found = find_prometheus()
    if not found:
        fail(
            "Prometheus was installed but `prometheus` and `promtool` were not found. Set "
            "PROMETHEUS_BIN to the folder that has both and run the command again."
        )
    return found


def cmd_install(cfg: Config) -> str:
    """Everything the stack needs on this machine; returns the java executable to use."""
    cfg.make_dirs()
    ensure_venv(cfg)
    java = ensure_java()
    ensure_postgres_binaries()
    ensure_kafka_jars(cfg, java)
    ensure_prometheus()
    return java


# --------------------------------------------------------------------------------------------
# Secrets and environment


def load_secrets(cfg: Config) -> dict[str, str]:
    values: dict[str, str] = {}
    if cfg.secrets_file.exists():
        for line in cfg.secrets_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                values[key.strip()] = value.strip()
    wanted: dict[str, Callable[[], str]] = {
        "ADMIN_TOKEN": lambda: secrets.token_urlsafe(32),
        "CODE_ENCRYPTION_KEYS": lambda: "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "CODE_FINGERPRINT_KEY": lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    missing = {k: make() for k, make in wanted.items() if not values.get(k)}
    if missing:
        values.update(missing)
        cfg.run.mkdir(parents=True, exist_ok=True)
        text = (
            "# Development secrets of the local stack, generated on its first start.\n"
            + "".join(f"{k}={v}\n" for k, v in values.items())
        )
        tmp = cfg.secrets_file.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        tmp.replace(cfg.secrets_file)
    cfg.secrets_file.chmod(0o600)
    return values


def stack_env(cfg: Config, secret: dict[str, str]) -> dict[str, str]:
    """The settings of the stack, as the services and the tests see them."""

    def db(name: str) -> str:
        return f"postgresql://{name}:{name}@127.0.0.1:{cfg.pg_port}/{name}"

    env = {
        "APP_ENV": "dev",
        "KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{cfg.kafka_port}",
        "API_DATABASE_URL": db("api"),
        "INVENTORY_DATABASE_URL": db("inventory"),
        "FULFILMENT_DATABASE_URL": db("fulfilment"),
        "API_PORT": str(cfg.api_port),
        "INVENTORY_PORT": str(cfg.inventory_port),
        "FULFILMENT_PORT": str(cfg.fulfilment_port),
        "ADMIN_TOKEN": secret["ADMIN_TOKEN"],
        "CODE_ENCRYPTION_KEYS": secret["CODE_ENCRYPTION_KEYS"],
        "CODE_FINGERPRINT_KEY": secret["CODE_FINGERPRINT_KEY"],
        "API_URL": f"http://127.0.0.1:{cfg.api_port}",
        "INVENTORY_URL": f"http://127.0.0.1:{cfg.inventory_port}",
        "FULFILMENT_URL": f"http://127.0.0.1:{cfg.fulfilment_port}",
        "IO_RUN_DIR": str(cfg.run),
    }
    assert tuple(env) == SERVICE_ENV_NAMES
    return env


def process_env(cfg: Config, secret: dict[str, str]) -> dict[str, str]:
    """The environment of a service process (and of the `instant-orders` CLI runs)."""
    env = {k: os.environ[k] for k in INHERITED_ENV if k in os.environ}
    env.update(stack_env(cfg, secret))
    env.update(tuning_env())
    env["PYTHONUNBUFFERED"] = "1"
    env["VIRTUAL_ENV"] = str(VENV)
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
    return env


def cmd_env(cfg: Config) -> None:
    env = stack_env(cfg, load_secrets(cfg))
    env.update(
        {
            "KAFKA_PORT": str(cfg.kafka_port),
            "KAFKA_CONTROLLER_PORT": str(cfg.kafka_controller_port),
            "PG_PORT": str(cfg.pg_port),
            "PROMETHEUS_PORT": str(cfg.prometheus_port),
            "PROMETHEUS_URL": cfg.prometheus_url,
        }
    )
    for key, value in env.items():
        print(f"export {key}={shlex.quote(value)}")


# --------------------------------------------------------------------------------------------
# Processes: PID files, liveness, ownership, ports

_children: dict[int, subprocess.Popen[bytes]] = {}


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().split()
    except OSError:
        return None
    return int(text[0]) if text and text[0].isdigit() else None


def alive(pid: int) -> bool:
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X")


def cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def environ_of(pid: int) -> dict[str, str] | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    env: dict[str, str] = {}
    for part in raw.split(b"\0"):
        key, _, value = part.decode(errors="replace").partition("=")
        env[key] = value
    return env


def is_ours(cfg: Config, name: str, pid: int) -> bool:
    """Whether `pid` is this stack's process `name` (not a recycled PID, not another stack)."""
    if not alive(pid):
        return False
    args = cmdline(pid)
    if name == "postgres":
        return (
            bool(args)
            and Path(args[0]).name in ("postgres", "postmaster")
            and any(str(pg_layout(cfg).data) in a for a in args)
        )
    if name == "kafka":
        return "kafka.Kafka" in args and str(cfg.kafka_properties) in args
    if name == "prometheus":
        return bool(args) and f"--config.file={cfg.prometheus_config}" in args
    if f"services.{name}" not in args:
        return False
    env = environ_of(pid)
    return env is None or env.get("IO_RUN_DIR") == str(cfg.run)


def running_pid(cfg: Config, name: str) -> int | None:
    pid = read_pid(cfg.pidfile(name))
    if pid is not None and is_ours(cfg, name, pid):
        return pid
    if name == "postgres":
        # The server's own lock file is the truth; adopt it if our record was lost.
        pid = read_pid(pg_layout(cfg).data / "postmaster.pid")
        if pid is not None and is_ours(cfg, name, pid):
            write_pid(cfg, name, pid)
            return pid
    return None


def write_pid(cfg: Config, name: str, pid: int) -> None:
    cfg.pids.mkdir(parents=True, exist_ok=True)
    cfg.pidfile(name).write_text(f"{pid}\n")


def forget_pid(cfg: Config, name: str) -> None:
    cfg.pidfile(name).unlink(missing_ok=True)
    cfg.codefile(name).unlink(missing_ok=True)


def wait_dead(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def wait_gone(pid: int, timeout: float) -> None:
    """Wait until even the zombie of `pid` is reaped: PostgreSQL refuses to start while the PID
    in its lock file exists at all, and a port may be held until then."""
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def kill_group(pid: int, sig: signal.Signals) -> None:
    """Signal the process and, when it leads its own process group (we start every process in
    a new session), the group: so children it forked die with it."""
    with contextlib.suppress(ProcessLookupError):
        if os.getpgid(pid) == pid:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def terminate(name: str, pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    if wait_dead(pid, timeout):
        return
    say(f"{name} (pid {pid}) did not stop within {timeout:.0f}s: sending SIGKILL")
    kill_group(pid, signal.SIGKILL)
    if not wait_dead(pid, 10):
        fail(f"{name} (pid {pid}) survived SIGKILL; check it with `ps -p {pid} -o pid,stat,cmd`.")


def listener_pid(port: int) -> int | None:
    """Which process listens on `port` (any address), by /proc/net/tcp{,6} and fd inodes."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    if not inodes:
        return None
    targets = {f"socket:[{inode}]" for inode in inodes}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            for fd in (proc / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in targets:
                        return int(proc.name)
        except OSError:
            continue
    return None


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))  # noqa: S104 - a bind test, closed at once
        except OSError:
            return False
    return True


def check_ports(cfg: Config, names: Iterable[str]) -> None:
    problems: list[str] = []
    for name in names:
        for var, port in cfg.ports_of(name):
            if port_free(port):
                continue
            pid = listener_pid(port)
            who = "another process"
            if pid is not None:
                args = " ".join(cmdline(pid))[:120] or "?"
                who = f"pid {pid} ({args})"
            problems.append(f"port {port} ({var}, for {name}) is already taken by {who}")
    if problems:
        first_var = cfg.ports_of(next(iter(names)))[0][0] if names else "API_PORT"
        fail(
            "; ".join(problems)
            + ". Stop that process (if it is an old stack of this repository whose .run folder "
            "was removed, stop it by its pid), or give the stack other ports through the "
            f"variables named above, for example `{first_var}=18000 make up`, and use the same "
            "variables with every later command of that stack."
        )


# --------------------------------------------------------------------------------------------
# PostgreSQL


@dataclass(frozen=True)
class PgLayout:
    base: Path
    data: Path
    socket_dir: Path
    log: Path
    uid: int
    gid: int
    user: str


def pg_layout(cfg: Config) -> PgLayout:
    base = cfg.run / "pg"
    if os.geteuid() == 0:
        try:
            entry = pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            uid = gid = -1
        else:
            uid, gid = entry.pw_uid, entry.pw_gid
        user = PG_SYSTEM_USER
        fallback = Path("/var/lib/instant-orders") / sha256_of(str(cfg.run).encode())[:16]
        if (fallback / "data").exists() or (uid >= 0 and not _reachable(cfg.run, uid, gid)):
            base = fallback
    else:
        uid, gid, user = os.getuid(), os.getgid(), pwd.getpwuid(os.getuid()).pw_name
    socket_dir = base / "socket"
    if len(str(socket_dir)) + len("/.s.PGSQL.65535") > 100:
        socket_dir = Path("/tmp") / f"instant-orders-{sha256_of(str(base).encode())[:12]}"  # noqa: S108
    log = cfg.logs / "postgres.log" if base.parent == cfg.run else base / "postgres.log"
    return PgLayout(base, base / "data", socket_dir, log, uid, gid, user)


def _reachable(run: Path, uid: int, gid: int) -> bool:
    """Whether user `uid` can traverse every folder down to `run` (it must own .run/pg)."""
    for folder in [*reversed(run.parents), run]:
        try:
            st = folder.stat()
        except OSError:
            return True  # not created yet: created below by root with mode 755
        if st.st_uid == uid:
            ok = bool(st.st_mode & 0o100)
        elif st.st_gid == gid:
            ok = bool(st.st_mode & 0o010)
        else:
            ok = bool(st.st_mode & 0o001)
        if not ok:
            return False
    return True


def ensure_pg_user() -> None:
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
        return
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        fail(
            f"PostgreSQL refuses to run as root and `useradd` is not available to create the "
            f"system user {PG_SYSTEM_USER!r}. Create it yourself (a system user with no login "
            f"shell) or run the stack as a non-root user."
        )
    say(f"creating the system user {PG_SYSTEM_USER!r} to run PostgreSQL (it refuses root)")
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            PG_SYSTEM_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        fail(
            f"`useradd {PG_SYSTEM_USER}` failed: {result.stderr.strip()}. Create the user and "
            f"run the command again."
        )


def as_pg_user(
    layout: PgLayout, cmd: Sequence[str], *, input_text: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:
        kwargs = {"user": layout.uid, "group": layout.gid, "extra_groups": []}
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LC_ALL": "C",
        "LANG": "C",
        "HOME": "/nonexistent" if os.geteuid() == 0 else os.environ.get("HOME", "/"),
        "PGTZ": "UTC",
    }
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        list(cmd),
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env=env,
        timeout=timeout,
        start_new_session=True,
        **kwargs,
    )


def _own(path: Path, layout: PgLayout, mode: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, layout.uid, layout.gid)
    path.chmod(mode)


def pg_config_text(cfg: Config, layout: PgLayout) -> str:
    return f"""# Written by deploy/local/stack.py on every start; edits are overwritten.
listen_addresses = '127.0.0.1'
port = {cfg.pg_port}
unix_socket_directories = '{layout.socket_dir}'
unix_socket_permissions = 0700
max_connections = 200
fsync = on
synchronous_commit = on
password_encryption = 'scram-sha-256'
shared_buffers = 256MB
log_line_prefix = '%m [%p] %q%u@%d '
log_timezone = 'UTC'
timezone = 'UTC'
"""


def pg_hba_text(layout: PgLayout) -> str:
    return f"""# Written by deploy/local/stack.py. The superuser connects only over the stack's unix
# socket as the OS user that runs the server; the services' roles use passwords (SCRAM).
# TYPE  DATABASE  USER  ADDRESS       METHOD
local   all       "{layout.user}"  peer
local   all       all              scram-sha-256
host    all       all   127.0.0.1/32  scram-sha-256
host    all       all   ::1/128       scram-sha-256
"""


def start_postgres(cfg: Config, pg: PgBin) -> int:
    ensure_pg_user()
    layout = pg_layout(cfg)
    for folder in (layout.base, layout.socket_dir):
        folder.mkdir(parents=True, exist_ok=True)
        _own(folder, layout, 0o700)
    if not layout.log.exists():
        layout.log.touch()
    _own(layout.log, layout, 0o644)
    old = read_pid(layout.data / "postmaster.pid")
    if old is not None:  # a server that was killed: let the kernel finish with it first
        wait_gone(old, 10)
    if not (layout.data / "PG_VERSION").exists():
        say(f"initialising a PostgreSQL cluster in {rel(layout.data)}")
        shutil.rmtree(layout.data, ignore_errors=True)
        result = as_pg_user(
            layout,
            [
                pg.initdb,
                "-D",
                str(layout.data),
                "-U",
                layout.user,
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )
        if result.returncode != 0:
            fail(f"initdb failed: {(result.stdout + result.stderr).strip()[-1500:]}")
        conf = layout.data / "postgresql.conf"
        with conf.open("a") as out:
            out.write("\ninclude_if_exists = 'instant_orders.conf'\n")
    for name, text in (
        ("instant_orders.conf", pg_config_text(cfg, layout)),
        ("pg_hba.conf", pg_hba_text(layout)),
    ):
        path = layout.data / name
        path.write_text(text)
        _own(path, layout, 0o600)
    say(f"starting PostgreSQL on 127.0.0.1:{cfg.pg_port}")
    result = as_pg_user(
        layout,
        [pg.pg_ctl, "-D", str(layout.data), "-l", str(layout.log), "-w", "-t", "90", "start"],
    )
    if result.returncode != 0:
        fail(
            f"PostgreSQL did not start ({(result.stdout + result.stderr).strip()[-300:]}). "
            f"Last lines of {rel(layout.log)}:\n{tail(layout.log)}"
        )
    pid = read_pid(layout.data / "postmaster.pid")
    if pid is None:
        fail(f"PostgreSQL started but wrote no postmaster.pid; see {rel(layout.log)}.")
    write_pid(cfg, "postgres", pid)
    setup = as_pg_user(
        layout,
        [
            pg.psql,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(layout.socket_dir),
            "-p",
            str(cfg.pg_port),
            "-U",
            layout.user,
            "-d",
            "postgres",
            "-f",
            "-",
        ],
        input_text=PG_INIT_SQL.read_text(),
    )
    if setup.returncode != 0:
        fail(
            f"creating the services' roles and databases failed: "
            f"{(setup.stdout + setup.stderr).strip()[-1500:]}"
        )
    return pid


def stop_postgres(cfg: Config, pid: int, pg: PgBin | None) -> None:
    layout = pg_layout(cfg)
    if pg is not None:
        result = as_pg_user(
            layout, [pg.pg_ctl, "-D", str(layout.data), "-m", "fast", "-w", "-t", "60", "stop"]
        )
        if result.returncode != 0:
            say(f"pg_ctl stop failed ({result.stderr.strip()[-200:]}); signalling pid {pid}")
    if alive(pid):
        terminate("postgres", pid, STOP_TIMEOUT["postgres"])


# --------------------------------------------------------------------------------------------
# Kafka


def kafka_properties_text(cfg: Config) -> str:
    return f"""# Written by deploy/local/stack.py on every start; edits are overwritten.
# Single-node KRaft: one process is both broker and controller.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{cfg.kafka_controller_port}
listeners=PLAINTEXT://127.0.0.1:{cfg.kafka_port},CONTROLLER://127.0.0.1:{cfg.kafka_controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{cfg.kafka_port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={cfg.kafka_data}
num.partitions=1
# One broker: internal topics cannot have more than one replica. Transactions and consumer
# groups need these, or they wait forever for replicas that do not exist.
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=10
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
min.insync.replicas=1
default.replication.factor=1
group.initial.rebalance.delay.ms=0
# After a crash (`stack.py kill kafka`) the restarted broker cannot register until the
# controller expires the old broker session: 9 s by default, 4 s here.
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=1000
# Topics are created by `instant-orders kafka bootstrap`, never by a typo in a client.
auto.create.topics.enable=false
# Small machine: the log cleaner's buffer defaults to 128 MiB.
log.cleaner.dedupe.buffer.size=8388608
log.retention.hours=24
# The controller appends a no-op record to the metadata log when idle, every 500 ms by
# default: the idle broker's largest cost here.
metadata.max.idle.interval.ms=5000
"""


def kafka_cluster_id(cfg: Config) -> str:
    path = cfg.kafka_dir / "cluster.id"
    if path.exists() and path.read_text().strip():
        return path.read_text().strip()
    while True:  # Kafka's own Uuid.randomUuid() avoids ids starting with "-" too
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not cluster_id.startswith("-"):
            break
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cluster_id + "\n")
    return cluster_id


def java_cmd(java: str, cfg: Config, *args: str, heap: str = "-Xmx512m") -> list[str]:
    return [
        java,
        heap,
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
        f"-Dkafka.logs.dir={cfg.logs}",
        "-cp",
        f"{cfg.kafka_libs}/*",
        *args,
    ]


@dataclass
class Launch:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    offset: int


def launch_kafka(cfg: Config, java: str) -> Launch:
    cfg.kafka_dir.mkdir(parents=True, exist_ok=True)
    cfg.kafka_properties.write_text(kafka_properties_text(cfg))
    if not (cfg.kafka_data / "meta.properties").exists():
        cluster_id = kafka_cluster_id(cfg)
        say(f"formatting Kafka storage in {rel(cfg.kafka_data)} (cluster id {cluster_id})")
        log = cfg.logs / "kafka-format.log"
        cmd = java_cmd(
            java, cfg, "kafka.tools.StorageTool", "format", "-t", cluster_id,
            "-c", str(cfg.kafka_properties), heap="-Xmx256m",
        )  # fmt: skip
        if run_logged(cmd, log, "formatting Kafka storage", env=java_env(java)) != 0:
            fail(
                f"formatting Kafka's storage failed. If {rel(cfg.kafka_data)} holds data of "
                f"another cluster, remove {rel(cfg.kafka_dir / 'data')} (its topics are lost) "
                f"and run again. Last lines of {rel(log)}:\n{tail(log)}"
            )
    log = cfg.log("kafka")
    offset = log.stat().st_size if log.exists() else 0
    say(f"starting Kafka on 127.0.0.1:{cfg.kafka_port} (controller :{cfg.kafka_controller_port})")
    out = (cfg.logs / "kafka.out").open("ab")
    proc = subprocess.Popen(
        java_cmd(java, cfg, "kafka.Kafka", str(cfg.kafka_properties)),
        cwd=cfg.kafka_dir,
        env=java_env(java),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    out.close()
    _children[proc.pid] = proc
    write_pid(cfg, "kafka", proc.pid)
    return Launch("kafka", proc, log, offset)


def wait_kafka_ready(cfg: Config, launch: Launch) -> None:
    started = time.monotonic()
    deadline = started + KAFKA_READY_TIMEOUT
    while time.monotonic() < deadline:
        if launch.log.exists():
            size = launch.log.stat().st_size
            if size < launch.offset:  # rolled over
                launch.offset = 0
            with launch.log.open("rb") as log:
                log.seek(launch.offset)
                if KAFKA_READY_LINE.encode() in log.read():
                    say(f"  Kafka ready in {time.monotonic() - started:.1f}s")
                    return
        if launch.proc.poll() is not None:
            forget_pid(cfg, "kafka")
            fail(
                f"Kafka exited with code {launch.proc.returncode} while starting. Last lines of "
                f"{rel(launch.log)}:\n{tail(launch.log)}\nand of "
                f"{rel(cfg.logs / 'kafka.out')}:\n{tail(cfg.logs / 'kafka.out', 10)}"
            )
        time.sleep(0.2)
    terminate("kafka", launch.proc.pid, 20)
    forget_pid(cfg, "kafka")
    fail(
        f"Kafka did not log {KAFKA_READY_LINE!r} within {KAFKA_READY_TIMEOUT:.0f}s. Last lines of "
        f"{rel(launch.log)}:\n{tail(launch.log)}"
    )


# --------------------------------------------------------------------------------------------
# The three services


def default_api_processes() -> int:
    """How many api worker processes `up` runs unless API_PROCESSES says: one per core, up to
    four. On two cores, two api processes sustained 577-586 orders/s at 600 offered (p99
    0.9-1.0 s) where one sustained 497-505 (p99 4.9-5.8 s), at the same CPU per order
    (docs/benchmarks.md, "Several api processes")."""
    return max(1, min(4, os.cpu_count() or 1))


def tuning_env() -> dict[str, str]:
    """The caller's variables passed to the services, with the stack's defaults: the
    simulated supplier delivers to backorders in the demo unless SUPPLIER_ENABLED says
    otherwise (`make test` turns it off)."""
    env = {"SUPPLIER_ENABLED": "true", "API_PROCESSES": str(default_api_processes())}
    env.update(
        {
            k: v
            for k, v in os.environ.items()
            if k.startswith(PASSTHROUGH_PREFIXES) or k in PASSTHROUGH_NAMES
        }
    )
    return env


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
    _children[proc.pid] = proc
    write_pid(cfg, name, proc.pid)
    cfg.codefile(name).write_text(code_digest() + "\n")
    return Launch(name, proc, log, offset)


def http_status(url: str, timeout: float = 2.0) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None


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
            url = f"http://127.0.0.1:{cfg.app_port(name)}{probe}"
            if launch.proc.poll() is not None:
                forget_pid(cfg, name)
                _fail_app(cfg, launches, launch, f"it exited with code {launch.proc.returncode}")
            status = http_status(url)
            if status == 200:
                say(f"  {name} ready in {time.monotonic() - started:.1f}s")
                del pending[name]
            else:
                last[name] = f"last answer {status}" if status else "no answer yet"
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
        f"{rel(failed.log)}:\n{_log_since(failed)}"
    )


def _log_since(launch: Launch, lines: int = 40) -> str:
    try:
        with launch.log.open("rb") as log:
            log.seek(launch.offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "    (no log)"
    kept = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in kept) or "    (empty)"


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


# --------------------------------------------------------------------------------------------
# Prometheus


def prometheus_config_text(cfg: Config) -> str:
    """The local twin of deploy/prometheus/prometheus.yml (the Docker one): same job, labels
    and rules, with the stack's ports and a short interval."""
    targets = "".join(
        f'      - targets: ["127.0.0.1:{cfg.app_port(name)}"]\n'
        f"        labels: {{service: {name}}}\n"
        for name in APP_SERVICES
    )
    return f"""# Written by deploy/local/stack.py on every start; edits are overwritten.
# The Docker twin is deploy/prometheus/prometheus.yml; both load deploy/prometheus/alerts.yml.
global:
  scrape_interval: {PROMETHEUS_INTERVAL}
  scrape_timeout: {PROMETHEUS_INTERVAL}
  evaluation_interval: {PROMETHEUS_INTERVAL}

rule_files:
  - {json.dumps(str(PROMETHEUS_RULES))}

scrape_configs:
  - job_name: instant-orders
    metrics_path: /metrics
    # The services label their HTTP series with `service` too, with the same value.
    honor_labels: true
    static_configs:
{targets}"""


def prometheus_digest(cfg: Config) -> str:
    """What the running Prometheus loaded: its config and the alert rules."""
    rules = PROMETHEUS_RULES.read_bytes() if PROMETHEUS_RULES.exists() else b""
    return sha256_of(prometheus_config_text(cfg).encode(), rules)


def write_prometheus_config(cfg: Config, prom: PromBin) -> None:
    """Writes the config, after promtool accepted it and the rules it loads (Prometheus would
    refuse to start on a bad rule, or keep the old ones on a reload, silently)."""
    cfg.prometheus_dir.mkdir(parents=True, exist_ok=True)
    candidate = cfg.prometheus_dir / "prometheus.yml.new"
    candidate.write_text(prometheus_config_text(cfg))
    result = subprocess.run(
        [prom.promtool, "check", "config", str(candidate)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode != 0:
        candidate.unlink(missing_ok=True)
        fail(
            f"promtool refused the Prometheus config or the alert rules of "
            f"{rel(PROMETHEUS_RULES)}: {(result.stdout + result.stderr).strip()[-1500:]}\n"
            f"Fix the rules (`promtool check rules {rel(PROMETHEUS_RULES)}`, `promtool test "
            f"rules deploy/prometheus/alerts.test.yml`) and run the command again."
        )
    candidate.replace(cfg.prometheus_config)


def launch_prometheus(cfg: Config, prom: PromBin) -> Launch:
    write_prometheus_config(cfg, prom)
    data = cfg.prometheus_dir / "data"
    data.mkdir(parents=True, exist_ok=True)
    log = cfg.log("prometheus")
    with log.open("ab") as out:
        out.write(
            f"\n===== {time.strftime('%Y-%m-%d %H:%M:%S')} starting prometheus =====\n".encode()
        )
        offset = out.tell()
        proc = subprocess.Popen(
            [
                prom.prometheus,
                f"--config.file={cfg.prometheus_config}",
                f"--storage.tsdb.path={data}",
                f"--storage.tsdb.retention.time={PROMETHEUS_RETENTION}",
                f"--web.listen-address=127.0.0.1:{cfg.prometheus_port}",
            ],
            cwd=cfg.prometheus_dir,
            env={k: os.environ[k] for k in INHERITED_ENV if k in os.environ},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    write_pid(cfg, "prometheus", proc.pid)
    cfg.codefile("prometheus").write_text(prometheus_digest(cfg) + "\n")
    return Launch("prometheus", proc, log, offset)


def wait_prometheus_ready(cfg: Config, launch: Launch) -> None:
    started = time.monotonic()
    url = f"{cfg.prometheus_url}/-/ready"
    while time.monotonic() - started < PROMETHEUS_READY_TIMEOUT:
        if launch.proc.poll() is not None:
            forget_pid(cfg, "prometheus")
            fail(
                f"Prometheus exited with code {launch.proc.returncode} while starting (is its "
                f"data folder {rel(cfg.prometheus_dir / 'data')} damaged? Stop the stack and "
                f"remove it: only metrics history is lost). Last lines of {rel(launch.log)}:\n"
                f"{_log_since(launch)}"
            )
        if http_status(url) == 200:
            say(f"  prometheus ready in {time.monotonic() - started:.1f}s")
            return
        time.sleep(0.2)
    terminate("prometheus", launch.proc.pid, STOP_TIMEOUT["prometheus"])
    forget_pid(cfg, "prometheus")
    fail(
        f"Prometheus did not answer GET /-/ready with 200 within "
        f"{PROMETHEUS_READY_TIMEOUT:.0f}s. Last lines of {rel(launch.log)}:\n{_log_since(launch)}"
    )


def reload_prometheus_if_changed(cfg: Config) -> None:
    """A running Prometheus reloads its config and rules on SIGHUP: `up` sends it when the
    alert rules (or the ports) changed since it loaded them."""
    pid = running_pid(cfg, "prometheus")
    path = cfg.codefile("prometheus")
    digest = prometheus_digest(cfg)
    if pid is None or (path.exists() and path.read_text().strip() == digest):
        return
    say("the Prometheus config or alert rules changed: reloading them (SIGHUP)")
    write_prometheus_config(cfg, ensure_prometheus())
    os.kill(pid, signal.SIGHUP)
    path.write_text(digest + "\n")


# --------------------------------------------------------------------------------------------
# Commands


def start_processes(cfg: Config, names: Sequence[str], *, migrate: bool) -> list[str]:
    """Start those of `names` not running (in dependency order); returns those started."""
    ordered = [n for n in ALL_PROCESSES if n in names]
    to_start = [n for n in ordered if running_pid(cfg, n) is None]
    if not to_start:
        return []
    check_ports(cfg, to_start)
    secret = load_secrets(cfg)
    env = process_env(cfg, secret)
    kafka_launch = None
    if "kafka" in to_start:
        java = ensure_java()
        ensure_kafka_jars(cfg, java)
        kafka_launch = launch_kafka(cfg, java)
    if "postgres" in to_start:
        try:
            start_postgres(cfg, ensure_postgres_binaries())
        except BaseException:
            if kafka_launch is not None:  # leave nothing half-started behind
                terminate("kafka", kafka_launch.proc.pid, STOP_TIMEOUT["kafka"])
                forget_pid(cfg, "kafka")
            raise
    if kafka_launch is not None:
        wait_kafka_ready(cfg, kafka_launch)
    apps = [n for n in to_start if n in APP_SERVICES]
    if migrate and (apps or not cfg.seeded_marker.exists()):
        run_cli(cfg, env, "db", "migrate")
        run_cli(cfg, env, "kafka", "bootstrap")
    launches = []
    for name in apps:
        say(f"starting {name} on 127.0.0.1:{cfg.app_port(name)} (log: {rel(cfg.log(name))})")
        launches.append(launch_app(cfg, name, env))
    wait_apps_ready(cfg, launches)
    if "prometheus" in to_start:
        prom = ensure_prometheus()
        say(f"starting Prometheus on {cfg.prometheus_url} (log: {rel(cfg.log('prometheus'))})")
        wait_prometheus_ready(cfg, launch_prometheus(cfg, prom))
    return to_start


def stop_process(cfg: Config, name: str, *, hard: bool = False) -> bool:
    pid = running_pid(cfg, name)
    if pid is None:
        forget_pid(cfg, name)
        return False
    if hard:
        say(f"killing {name} (pid {pid}, SIGKILL)")
        kill_group(pid, signal.SIGKILL)
        if not wait_dead(pid, 10):
            fail(f"{name} (pid {pid}) survived SIGKILL; check `ps -p {pid} -o pid,stat,cmd`.")
        wait_gone(pid, 5)
    else:
        say(f"stopping {name} (pid {pid})")
        if name == "postgres":
            stop_postgres(cfg, pid, find_pg_bin())
        else:
            terminate(name, pid, STOP_TIMEOUT.get(name, APP_STOP_TIMEOUT))
    forget_pid(cfg, name)
    return True


def stale_apps(cfg: Config) -> list[str]:
    digest = code_digest()
    stale = []
    for name in APP_SERVICES:
        path = cfg.codefile(name)
        if running_pid(cfg, name) and path.exists() and path.read_text().strip() != digest:
            stale.append(name)
    return stale


def cmd_up(cfg: Config) -> None:
    started = time.monotonic()
    cmd_install(cfg)
    stale = stale_apps(cfg)
    if stale:
        say(
            f"the code or settings changed since {', '.join(stale)} started: restarting "
            "them to run the new ones"
        )
        for name in reversed(stale):
            stop_process(cfg, name)
    first_up = not cfg.seeded_marker.exists()
    started_now = start_processes(cfg, ALL_PROCESSES, migrate=True)
    if first_up:
        env = process_env(cfg, load_secrets(cfg))
        output = run_cli(
            cfg,
            env,
            "demo",
            "seed",
            state="the stack is running, without demo data: the next `up` seeds it again",
        )
        fd = os.open(cfg.demo_credentials, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(output)
        cfg.seeded_marker.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
        print(output.rstrip())
    reload_prometheus_if_changed(cfg)
    took = time.monotonic() - started
    if started_now:
        print(f"instant-orders stack is up (started {', '.join(started_now)} in {took:.1f}s)")
    else:
        print(f"instant-orders stack is already up (checked in {took:.1f}s)")
    print_summary(cfg)


def print_summary(cfg: Config) -> None:
    run = rel(cfg.run)
    print(
        f"""
  API          http://127.0.0.1:{cfg.api_port}   (OpenAPI docs: /docs)
  inventory    http://127.0.0.1:{cfg.inventory_port}   (admin)
  fulfilment   http://127.0.0.1:{cfg.fulfilment_port}   (admin)
  Kafka        127.0.0.1:{cfg.kafka_port}
  PostgreSQL   127.0.0.1:{cfg.pg_port}   databases api, inventory, fulfilment (user = password)
  Prometheus   {cfg.prometheus_url}   (alerts: /alerts, targets: /targets)
  secrets      {run}/secrets.env   demo credentials: {run}/demo-credentials.txt
  logs         {run}/logs/
  settings     eval "$(python3 deploy/local/stack.py env)"
  status       make status        stop: make down"""
    )


def cmd_down(cfg: Config) -> None:
    stopped = [n for n in reversed(ALL_PROCESSES) if stop_process(cfg, n)]
    print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def cmd_status(cfg: Config) -> None:
    for name in ALL_PROCESSES:
        pid = running_pid(cfg, name)
        ports = ",".join(str(p) for _, p in cfg.ports_of(name))
        state = "running" if pid else "stopped"
        extra = ""
        if pid and name in APP_SERVICES:
            code = http_status(f"http://127.0.0.1:{cfg.app_port(name)}/readyz", timeout=1.0)
            extra = f"  readyz={code or 'no answer'}"
        elif pid and name == "prometheus":
            code = http_status(f"{cfg.prometheus_url}/-/ready", timeout=1.0)
            extra = f"  ready={code or 'no answer'}"
        print(f"{name:<11} {state:<8} pid={pid or '-':<8} port={ports}{extra}")


def cmd_clean(cfg: Config) -> None:
    cmd_down(cfg)
    layout = pg_layout(cfg)
    for path in (
        cfg.logs,
        cfg.pids,
        cfg.kafka_dir,
        cfg.prometheus_dir,
        cfg.run / "pg",
        layout.base,
        layout.socket_dir,
        cfg.secrets_file,
        cfg.seeded_marker,
        cfg.demo_credentials,
        cfg.run / "stack.lock",
        cfg.run / "tests.lock",
    ):
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        cfg.run.rmdir()  # only if nothing else is in it
    print(f"removed the stack's state in {rel(cfg.run)}")


def cmd_service(cfg: Config, action: str, names: Sequence[str]) -> None:
    if not names:
        fail(f"`{action}` needs a service: one or more of {', '.join(ALL_PROCESSES)}.")
    unknown = [n for n in names if n not in ALL_PROCESSES]
    if unknown:
        fail(
            f"unknown service {', '.join(unknown)}: use one or more of {', '.join(ALL_PROCESSES)}."
        )
    if action in ("stop", "restart", "kill"):
        for name in reversed([n for n in ALL_PROCESSES if n in names]):
            if not stop_process(cfg, name, hard=action == "kill"):
                say(f"{name} was not running")
    if action in ("start", "restart"):
        if any(n in APP_SERVICES for n in names):
            ensure_venv(cfg)
        started = start_processes(cfg, names, migrate=False)
        for name in names:
            if name not in started:
                say(f"{name} was already running (pid {running_pid(cfg, name)})")


@contextlib.contextmanager
def stack_lock(cfg: Config) -> Iterator[None]:
    """One mutating command at a time per stack (two `up`s at once would race)."""
    cfg.make_dirs()
    with (cfg.run / "stack.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("another stack.py command is running on this stack: waiting for it")
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def tests_lock(cfg: Config) -> Iterator[None]:
    """Exclusive hold of `.run/tests.lock`, which `make test` holds shared while pytest runs:
    `up` restarts stale services only between test runs, never under one. Taken before the
    stack lock (tests call `stack.py restart ...`, which needs the stack lock)."""
    cfg.make_dirs()
    with (cfg.run / "tests.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            say("a test run is using this stack: waiting for it to end before restarting services")
            fcntl.flock(lock, fcntl.LOCK_EX)
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
        print(__doc__)
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
    elif command == "up" and stale_apps(cfg):
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


if __name__ == "__main__":
    entrypoint()
