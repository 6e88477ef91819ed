"""What each command of stack.py does."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import signal
import time
from collections.abc import Sequence

from .apps import launch_app, run_cli, stale_apps, wait_apps_ready
from .config import (
    ALL_PROCESSES,
    APP_SERVICES,
    APP_STOP_TIMEOUT,
    STOP_TIMEOUT,
    Config,
    fail,
    rel,
    say,
)
from .environment import load_secrets, process_env, stack_env
from .install import ensure_java, ensure_venv
from .kafka import ensure_kafka_jars, launch_kafka, wait_kafka_ready
from .postgres import ensure_postgres_binaries, find_pg_bin, start_postgres, stop_postgres
from .postgres_files import pg_layout
from .processes import (
    check_ports,
    forget_pid,
    kill_group,
    running_pid,
    terminate,
    wait_dead,
    wait_gone,
)
from .prometheus import (
    ensure_prometheus,
    launch_prometheus,
    reload_prometheus_if_changed,
    wait_prometheus_ready,
)
from .system import http_status


def cmd_install(cfg: Config) -> str:
    """Everything the stack needs on this machine; returns the java executable to use."""
    cfg.make_dirs()
    ensure_venv(cfg)
    java = ensure_java()
    ensure_postgres_binaries()
    ensure_kafka_jars(cfg, java)
    ensure_prometheus()
    return java


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
        where = " and ".join(f"127.0.0.1:{port}" for _, port in cfg.ports_of(name))
        say(f"starting {name} on {where} (log: {rel(cfg.log(name))})")
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
  api admin    http://127.0.0.1:{cfg.api_admin_port}   (operators' endpoints, /metrics)
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
            codes = [
                http_status(f"http://127.0.0.1:{port}/readyz", timeout=1.0)
                for _, port in cfg.ports_of(name)
            ]
            extra = f"  readyz={','.join(str(code or 'no answer') for code in codes)}"
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
