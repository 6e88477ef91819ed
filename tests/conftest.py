"""Where the tests find the real Kafka broker and the PostgreSQL databases.

In order:
1. The environment: KAFKA_BOOTSTRAP_SERVERS and API_/INVENTORY_/FULFILMENT_DATABASE_URL, as
   `make test` exports them from the local stack (deploy/local/stack.py, no Docker needed).
2. Docker, when `docker info` answers: a broker and a PostgreSQL server from testcontainers,
   migrated and with the topics created, for this test session only.
3. Neither: tests that need them fail under CI (CI=true) and are skipped elsewhere, with a
   message that says how to provide them.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT
from tests.helpers import stackctl as _stackctl

# The tests run a development configuration (an unset APP_ENV means production, which refuses
# the published default secrets the tests use).
os.environ["APP_ENV"] = "dev"

DB_ENV = {
    "api": "API_DATABASE_URL",
    "inventory": "INVENTORY_DATABASE_URL",
    "fulfilment": "FULFILMENT_DATABASE_URL",
}
KAFKA_IMAGE = os.environ.get("IO_TEST_KAFKA_IMAGE", "apache/kafka:4.4.0")
POSTGRES_IMAGE = os.environ.get("IO_TEST_POSTGRES_IMAGE", "postgres:16")
PG_INIT_SQL = REPO_ROOT / "deploy" / "postgres" / "init-databases.sql"

NO_STACK = (
    "no Kafka broker or PostgreSQL server for these tests. Run them with `make test` (it starts "
    "the local stack without Docker and exports its settings), or after `make up` export the "
    'settings yourself: eval "$(python3 deploy/local/stack.py env)"; or install Docker so '
    "that testcontainers can start them."
)


@dataclass(frozen=True)
class Stack:
    kafka_bootstrap: str
    api_db_url: str
    inventory_db_url: str
    fulfilment_db_url: str
    # The services' HTTP addresses: set when the services run (local stack), else None. The
    # api answers its admin endpoints and /metrics on a listener of its own.
    api_url: str | None = None
    api_admin_url: str | None = None
    inventory_url: str | None = None
    fulfilment_url: str | None = None
    # Run by deploy/local/stack.py: services can be stopped, killed and restarted (stackctl).
    local: bool = False

    def db_url(self, service: str) -> str:
        return {
            "api": self.api_db_url,
            "inventory": self.inventory_db_url,
            "fulfilment": self.fulfilment_db_url,
        }[service]


def _from_env() -> Stack | None:
    env = os.environ
    if not env.get("KAFKA_BOOTSTRAP_SERVERS") or not all(env.get(v) for v in DB_ENV.values()):
        return None
    return Stack(
        kafka_bootstrap=env["KAFKA_BOOTSTRAP_SERVERS"],
        api_db_url=env["API_DATABASE_URL"],
        inventory_db_url=env["INVENTORY_DATABASE_URL"],
        fulfilment_db_url=env["FULFILMENT_DATABASE_URL"],
        api_url=env.get("API_URL"),
        api_admin_url=env.get("API_ADMIN_URL"),
        inventory_url=env.get("INVENTORY_URL"),
        fulfilment_url=env.get("FULFILMENT_URL"),
        local=env.get("IO_STACK") == "1",
    )


def _docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        result = subprocess.run(["docker", "info"], capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _cli(*args: str, env: dict[str, str]) -> None:
    exe = Path(sys.executable).with_name("instant-orders")
    command = [str(exe) if exe.exists() else "instant-orders", *args]
    result = subprocess.run(
        command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        pytest.fail(f"`instant-orders {' '.join(args)}` failed:\n{result.stdout}{result.stderr}")


def _testcontainers_stack() -> Iterator[Stack]:
    # Imported here only: importing testcontainers where Docker is missing breaks collection.
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.waiting_utils import wait_for_logs
    from testcontainers.postgres import PostgresContainer

    kafka_port = _free_port()
    kafka = (
        DockerContainer(KAFKA_IMAGE)
        .with_bind_ports(9092, kafka_port)
        .with_env("KAFKA_NODE_ID", "1")
        .with_env("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        # The port is fixed before start so that the broker can advertise it.
        .with_env("KAFKA_ADVERTISED_LISTENERS", f"PLAINTEXT://127.0.0.1:{kafka_port}")
        .with_env("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP", "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
        )
        .with_env("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env("KAFKA_MIN_INSYNC_REPLICAS", "1")
        .with_env("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
    )
    postgres = PostgresContainer(
        POSTGRES_IMAGE, username="postgres", password="postgres", dbname="postgres", driver=None
    ).with_volume_mapping(str(PG_INIT_SQL), "/docker-entrypoint-initdb.d/10-init.sql", "ro")
    with kafka, postgres:
        wait_for_logs(kafka, "Kafka Server started", timeout=120)
        host = postgres.get_container_host_ip()
        port = postgres.get_exposed_port(5432)
        urls = {s: f"postgresql://{s}:{s}@{host}:{port}/{s}" for s in DB_ENV}
        settings = {"KAFKA_BOOTSTRAP_SERVERS": f"127.0.0.1:{kafka_port}"}
        settings.update({DB_ENV[s]: url for s, url in urls.items()})
        env = {**os.environ, **settings, "APP_ENV": "dev"}
        _cli("db", "migrate", env=env)
        _cli("kafka", "bootstrap", env=env)
        with pytest.MonkeyPatch.context() as patch:
            for key, value in settings.items():
                patch.setenv(key, value)
            yield Stack(
                kafka_bootstrap=settings["KAFKA_BOOTSTRAP_SERVERS"],
                api_db_url=urls["api"],
                inventory_db_url=urls["inventory"],
                fulfilment_db_url=urls["fulfilment"],
            )


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    """The broker bootstrap address and the three service databases' URLs."""
    found = _from_env()
    if found is not None:
        yield found
        return
    if _docker_available():
        yield from _testcontainers_stack()
        return
    if os.environ.get("CI"):
        pytest.fail(NO_STACK, pytrace=False)
    pytest.skip(NO_STACK)


StackCtl = Callable[..., Awaitable[str]]


@pytest.fixture(scope="session")
def stackctl(stack: Stack) -> StackCtl:
    """`await stackctl("restart", "api")`: stop, kill (SIGKILL) or restart a process of the local
    stack mid-test. Only the local stack (`make test`) can do that; elsewhere the test skips."""
    if not stack.local:
        pytest.skip("stopping and restarting services needs the local stack: run `make test`")
    return _stackctl
