"""docker-compose.yml cannot run here (no Docker engine): check its shape instead."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from tests.helpers import REPO_ROOT, load_stack_module

APPS = ("api", "inventory", "fulfilment")
PORTS = {"api": 8000, "inventory": 8001, "fulfilment": 8002}
# Where each answers /metrics: the api on its operators' listener.
METRICS_PORTS = {**PORTS, "api": 8010}
# Set for Docker only: containers listen on all their interfaces.
DOCKER_ONLY_ENV = {"BIND_HOST", "API_ADMIN_BIND_HOST"}
# Meaningful for the local stack only (its state folder).
LOCAL_ONLY_ENV = {"IO_RUN_DIR"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, Any]:
    found = compose["services"]
    assert isinstance(found, dict)
    return found


def test_every_service_is_there(services: dict[str, Any]) -> None:
    expected = {"kafka", "postgres", "migrate", *APPS, "prometheus", "grafana"}
    assert expected <= set(services)


def test_infrastructure_is_healthchecked(services: dict[str, Any]) -> None:
    for name in ("kafka", "postgres"):
        assert services[name].get("healthcheck", {}).get("test"), name
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert services["postgres"]["image"] == "postgres:16"


@pytest.mark.parametrize("app", APPS)
def test_app_waits_for_healthy_infrastructure_and_migrations(
    services: dict[str, Any], app: str
) -> None:
    service = services[app]
    assert service["command"] == [app]
    assert service["build"]["dockerfile"] == "deploy/Dockerfile"
    check = " ".join(service["healthcheck"]["test"])
    assert f"127.0.0.1:{PORTS[app]}/readyz" in check
    depends = service["depends_on"]
    assert depends["kafka"]["condition"] == "service_healthy"
    assert depends["postgres"]["condition"] == "service_healthy"
    assert depends["migrate"]["condition"] == "service_completed_successfully"


def test_migrate_runs_once_after_infrastructure(services: dict[str, Any]) -> None:
    migrate = services["migrate"]
    assert migrate["command"] == ["migrate"]
    assert migrate["restart"] == "no"
    assert set(migrate["depends_on"]) == {"kafka", "postgres"}
    entrypoint = (REPO_ROOT / "deploy" / "docker" / "entrypoint.sh").read_text()
    assert "instant-orders db migrate" in entrypoint
    assert "instant-orders kafka bootstrap" in entrypoint


@pytest.mark.parametrize("app", [*APPS, "migrate"])
def test_env_names_match_the_local_stack(services: dict[str, Any], app: str) -> None:
    stack = load_stack_module()
    local = set(stack.SERVICE_ENV_NAMES) - LOCAL_ONLY_ENV
    names = set(services[app]["environment"])
    assert names - DOCKER_ONLY_ENV == local


def test_kafka_single_node_settings(services: dict[str, Any]) -> None:
    env = services["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for key in (
        "KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR",
        "KAFKA_TRANSACTION_STATE_LOG_MIN_ISR",
        "KAFKA_MIN_INSYNC_REPLICAS",
    ):
        assert env[key] == "1", key
    assert env["KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS"] == "0"
    assert env["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_postgres_creates_the_service_databases(services: dict[str, Any]) -> None:
    mounts = services["postgres"]["volumes"]
    init = [m for m in mounts if "/docker-entrypoint-initdb.d/" in m]
    assert len(init) == 1
    host_path = init[0].split(":")[0]
    sql = (REPO_ROOT / host_path).read_text()
    for service in APPS:
        assert f"'{service}'" in sql
    assert "REVOKE CONNECT" in sql


def test_prometheus_scrapes_the_three_services() -> None:
    config = yaml.safe_load((REPO_ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    jobs = config["scrape_configs"]
    targets = {t for job in jobs for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{app}:{port}" for app, port in METRICS_PORTS.items()}
    assert all(job.get("metrics_path", "/metrics") == "/metrics" for job in jobs)


def test_every_port_is_published_on_the_hosts_loopback_only(services: dict[str, Any]) -> None:
    published = {name: service.get("ports", []) for name, service in services.items()}
    assert all(port.startswith("127.0.0.1:") for ports in published.values() for port in ports)
    assert "127.0.0.1:${API_ADMIN_PORT:-8010}:8010" in published["api"]


def test_the_api_admin_listener_takes_other_containers_connections(
    services: dict[str, Any],
) -> None:
    """Prometheus scrapes it from its own container: inside the api's, it binds 0.0.0.0."""
    env = services["api"]["environment"]
    assert env["API_ADMIN_BIND_HOST"] == "0.0.0.0"  # noqa: S104 - inside the container
    assert env["API_ADMIN_PORT"] == "8010"
    assert "API_ADMIN_BIND_HOST" not in services["inventory"]["environment"]


def test_dockerfile_builds_one_image_for_all_services() -> None:
    text = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "pip install" in text
    assert 'CMD ["api"]' in text
