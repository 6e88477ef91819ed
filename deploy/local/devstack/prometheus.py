"""Prometheus: its programs, the config it loads (checked by promtool), start and reload."""

# ruff: noqa: S603, S607 - this module exists to run the stack's programs by name

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .config import APP_SERVICES, ROOT, STOP_TIMEOUT, Config, fail, rel, say, sha256_of
from .environment import INHERITED_ENV
from .processes import Launch, forget_pid, log_since, record_child, running_pid, terminate
from .system import apt_install, http_status, program_dirs

PROMETHEUS_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_READY_TIMEOUT = 60.0
PROMETHEUS_RETENTION = "2d"


@dataclass(frozen=True)
class PromBin:
    prometheus: str
    promtool: str


def find_prometheus() -> PromBin | None:
    dirs = program_dirs("PROMETHEUS_BIN", "prometheus")
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


def prometheus_config_text(cfg: Config) -> str:
    """The local twin of deploy/prometheus/prometheus.yml (the Docker one): same job, labels
    and rules, with the stack's ports and interval (PROMETHEUS_SCRAPE_INTERVAL). The api is
    scraped on its admin listener (API_ADMIN_PORT): its public port does not serve /metrics."""
    targets = "".join(
        f'      - targets: ["127.0.0.1:{cfg.admin_port(name)}"]\n'
        f"        labels: {{service: {name}}}\n"
        for name in APP_SERVICES
    )
    return f"""# Written by deploy/local/stack.py on every start; edits are overwritten.
# The Docker twin is deploy/prometheus/prometheus.yml; both load deploy/prometheus/alerts.yml.
global:
  scrape_interval: {cfg.prometheus_interval}
  scrape_timeout: {cfg.prometheus_interval}
  evaluation_interval: {cfg.prometheus_interval}

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
    record_child(cfg, "prometheus", proc)
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
                f"{log_since(launch)}"
            )
        if http_status(url) == 200:
            say(f"  prometheus ready in {time.monotonic() - started:.1f}s")
            return
        time.sleep(0.2)
    terminate("prometheus", launch.proc.pid, STOP_TIMEOUT["prometheus"])
    forget_pid(cfg, "prometheus")
    fail(
        f"Prometheus did not answer GET /-/ready with 200 within "
        f"{PROMETHEUS_READY_TIMEOUT:.0f}s. Last lines of {rel(launch.log)}:\n{log_since(launch)}"
    )


def prometheus_stale(cfg: Config) -> bool:
    """A running Prometheus loaded another config (ports, interval) or other rules than `up`
    would give it now."""
    path = cfg.codefile("prometheus")
    loaded = path.read_text().strip() if path.exists() else None
    return running_pid(cfg, "prometheus") is not None and loaded != prometheus_digest(cfg)


def reload_prometheus_if_changed(cfg: Config) -> None:
    """A running Prometheus reloads its config and rules on SIGHUP: `up` sends it when the
    alert rules, the ports or the interval changed since it loaded them."""
    pid = running_pid(cfg, "prometheus")
    if pid is None or not prometheus_stale(cfg):
        return
    digest = prometheus_digest(cfg)
    path = cfg.codefile("prometheus")
    say("the Prometheus config or alert rules changed: reloading them (SIGHUP)")
    write_prometheus_config(cfg, ensure_prometheus())
    os.kill(pid, signal.SIGHUP)
    path.write_text(digest + "\n")
