"""What the services see: the stack's settings, its secrets, the caller's tuning variables."""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Callable

from .config import VENV, Config

# Variables of the caller's environment handed to the services as they are, so that tests and
# humans can tune the services (decision window, supplier delay, ...).
PASSTHROUGH_PREFIXES = ("API_", "INVENTORY_", "FULFILMENT_", "ORDERS_", "SUPPLIER_")
# ... and these settings common to every service.
PASSTHROUGH_NAMES = (
    "LOG_LEVEL",
    "DB_POOL_SIZE",
    "DB_PLAN_CACHE_MODE",
    "CONSUMER_MAX_RETRIES",
    "OUTBOX_POLL_INTERVAL_S",
    "ADMIN_AUTH_MAX_FAILURES",
    "ADMIN_AUTH_FAILURE_WINDOW_S",
)
# The environment every service process gets from the stack (docker-compose.yml gives the
# same names; tests/unit/test_compose.py checks that).
SERVICE_ENV_NAMES = (
    "APP_ENV",
    "KAFKA_BOOTSTRAP_SERVERS",
    "API_DATABASE_URL",
    "INVENTORY_DATABASE_URL",
    "FULFILMENT_DATABASE_URL",
    "API_PORT",
    "API_ADMIN_PORT",
    "INVENTORY_PORT",
    "FULFILMENT_PORT",
    "ADMIN_TOKEN",
    "CODE_ENCRYPTION_KEYS",
    "CODE_FINGERPRINT_KEY",
    "API_URL",
    "API_ADMIN_URL",
    "INVENTORY_URL",
    "FULFILMENT_URL",
    "IO_RUN_DIR",
)
# Only these of the caller's other variables reach the services.
INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "SSL_CERT_FILE")


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
        "API_ADMIN_PORT": str(cfg.api_admin_port),
        "INVENTORY_PORT": str(cfg.inventory_port),
        "FULFILMENT_PORT": str(cfg.fulfilment_port),
        "ADMIN_TOKEN": secret["ADMIN_TOKEN"],
        "CODE_ENCRYPTION_KEYS": secret["CODE_ENCRYPTION_KEYS"],
        "CODE_FINGERPRINT_KEY": secret["CODE_FINGERPRINT_KEY"],
        "API_URL": f"http://127.0.0.1:{cfg.api_port}",
        "API_ADMIN_URL": f"http://127.0.0.1:{cfg.api_admin_port}",
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


def default_api_processes() -> int:
    """How many api worker processes `up` runs unless API_PROCESSES says: one per core but one
    (left to inventory, Kafka and PostgreSQL), at least one, up to four. On two cores, one api
    process now beats two at every rate: at 600/s offered, p99 188-287 ms and every order
    COMPLETED against 380-989 ms with 503s; at 1,000/s, 891-982/s answered against 725-986/s
    (docs/benchmarks.md, "One api process or two, again"); under overload too, since a full
    desk refuses before the body is read. Larger machines are not measured."""
    return max(1, min(4, (os.cpu_count() or 1) - 1))


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
