"""The Prometheus configuration we ship: promtool accepts the configs (Docker's and the local
stack's), the alert rules, and the rules' unit tests pass; every series the rules and the
Grafana dashboard use is one the services export."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import REPO_ROOT, load_stack_module

PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
DASHBOARDS = REPO_ROOT / "deploy" / "grafana" / "dashboards"
NO_PROMTOOL = (
    "promtool is not installed: `make up` installs it (Debian package `prometheus`, run as "
    "root), or install Prometheus yourself and put promtool on PATH or in PROMETHEUS_BIN."
)


@pytest.fixture(scope="module")
def promtool() -> str:
    candidates = (
        [Path(os.environ["PROMETHEUS_BIN"]) / "promtool"] if "PROMETHEUS_BIN" in os.environ else []
    )
    found = shutil.which("promtool")
    if found:
        candidates.append(Path(found))
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    if os.environ.get("CI"):
        pytest.fail(NO_PROMTOOL, pytrace=False)
    pytest.skip(NO_PROMTOOL)


def run(promtool: str, *args: str) -> str:
    result = subprocess.run(
        [promtool, *args], cwd=REPO_ROOT, capture_output=True, text=True, check=False, timeout=120
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"promtool {' '.join(args)} failed:\n{output}"
    return output


def test_the_docker_config_is_valid(promtool: str) -> None:
    output = run(promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert "1 rule files found" in output


def test_the_local_stacks_config_is_valid(promtool: str, tmp_path: Path) -> None:
    stack = load_stack_module()
    config = tmp_path / "prometheus.yml"
    config.write_text(stack.prometheus_config_text(stack.Config.from_env()))
    output = run(promtool, "check", "config", str(config))
    assert "1 rule files found" in output
    # Same job, labels and rules as the Docker one: only addresses and intervals differ.
    local, docker = (
        yaml.safe_load(p.read_text()) for p in (config, PROMETHEUS_DIR / "prometheus.yml")
    )
    assert [Path(f).name for f in local["rule_files"]] == docker["rule_files"]
    for mine, theirs in zip(local["scrape_configs"], docker["scrape_configs"], strict=True):
        assert mine["job_name"] == theirs["job_name"]
        assert mine["honor_labels"] == theirs["honor_labels"]
        labels = [t["labels"] for t in mine["static_configs"]]
        assert labels == [t["labels"] for t in theirs["static_configs"]]


def test_the_alert_rules_are_valid(promtool: str) -> None:
    run(promtool, "check", "rules", str(PROMETHEUS_DIR / "alerts.yml"))


def test_the_alert_rules_unit_tests_pass(promtool: str) -> None:
    output = run(promtool, "test", "rules", str(PROMETHEUS_DIR / "alerts.test.yml"))
    assert "SUCCESS" in output


def test_the_runbook_covers_every_alert() -> None:
    runbook = (REPO_ROOT / "docs" / "runbook.md").read_text()
    headings = set(re.findall(r"^## (\w+)$", runbook, flags=re.MULTILINE))
    for rule in alert_rules():
        assert rule["alert"] in headings, f"docs/runbook.md has no '## {rule['alert']}' section"
        assert rule["annotations"]["runbook"] == f"docs/runbook.md#{rule['alert'].lower()}"


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def exported_series() -> set[str]:
    """Every sample name the three services can export, with the suffixes of each type."""
    from prometheus_client import REGISTRY

    import services.api.metrics
    import services.fulfilment.metrics
    import services.inventory.metrics  # noqa: F401 - registers the series
    from shared.producers import new_broker

    new_broker("127.0.0.1:1", "series-check")  # registers FastStream's series
    suffixes = {
        "counter": ("_total",),
        "histogram": ("_bucket", "_count", "_sum"),
        "gauge": ("",),
    }
    names = {"up"}
    for family in REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


FUNCTIONS_AND_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "sum", "max", "min", "avg", "count", "topk", "bottomk", "rate",
    "increase", "deriv", "histogram_quantile", "time", "le",
}  # fmt: skip


def series_in(expr: str) -> set[str]:
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return {n for n in names if n not in FUNCTIONS_AND_KEYWORDS and not re.fullmatch(r"\d+\w*", n)}


def test_rules_and_dashboards_use_only_series_that_exist() -> None:
    groups = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())["groups"]
    recorded = {rule["record"] for group in groups for rule in group["rules"] if "record" in rule}
    known = exported_series() | recorded
    exprs = [rule["expr"] for group in groups for rule in group["rules"]]
    for dashboard in DASHBOARDS.glob("*.json"):
        data = json.loads(dashboard.read_text())
        exprs += [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    assert len(exprs) > 20
    for expr in exprs:
        unknown = series_in(expr) - known
        assert not unknown, f"{expr!r} uses series no service exports: {unknown}"


def test_docker_compose_runs_the_rules_and_provisions_the_dashboard() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text())["services"]
    mounts = {
        service: {v.split(":")[0]: v.split(":")[1] for v in compose[service]["volumes"]}
        for service in ("prometheus", "grafana")
    }
    prometheus = mounts["prometheus"]
    config = prometheus["./deploy/prometheus/prometheus.yml"]
    assert f"--config.file={config}" in compose["prometheus"]["command"]
    # prometheus.yml names its rule file relative to itself: mounted beside it.
    rules = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["rule_files"]
    assert [prometheus["./deploy/prometheus/alerts.yml"]] == [
        str(Path(config).parent / r) for r in rules
    ]
    grafana = mounts["grafana"]
    assert grafana["./deploy/grafana/provisioning"] == "/etc/grafana/provisioning"
    provider = yaml.safe_load(
        (REPO_ROOT / "deploy/grafana/provisioning/dashboards/instant-orders.yml").read_text()
    )["providers"][0]
    assert grafana["./deploy/grafana/dashboards"] == provider["options"]["path"]
    source = yaml.safe_load(
        (REPO_ROOT / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text()
    )["datasources"][0]
    for dashboard in DASHBOARDS.glob("*.json"):
        panels = json.loads(dashboard.read_text())["panels"]
        uids = {p["datasource"]["uid"] for p in panels if "datasource" in p}
        assert uids == {source["uid"]}, dashboard.name
    for app in ("api", "inventory", "fulfilment"):
        assert "/readyz" in " ".join(compose[app]["healthcheck"]["test"]), app
