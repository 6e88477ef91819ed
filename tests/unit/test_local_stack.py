"""The logic of the local stack (deploy/local/devstack, behind deploy/local/stack.py): ports,
PID ownership, the config files it renders, the environment the services get. Nothing here
starts or signals a process; state lives in tmp_path."""

from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from deploy.local.devstack import (
    cli,
    commands,
    config,
    environment,
    kafka,
    postgres_files,
    processes,
    prometheus,
)
from deploy.local.devstack.config import Config, StackError

PORT_VARS = (
    "API_PORT",
    "API_ADMIN_PORT",
    "INVENTORY_PORT",
    "FULFILMENT_PORT",
    "KAFKA_PORT",
    "KAFKA_CONTROLLER_PORT",
    "PG_PORT",
    "PROMETHEUS_PORT",
)
SECRETS = {"ADMIN_TOKEN": "t", "CODE_ENCRYPTION_KEYS": "k1:x", "CODE_FINGERPRINT_KEY": "f"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`make test` exports the running stack's settings: none of them may leak in here."""
    for key in list(os.environ):
        passthrough = key.startswith(environment.PASSTHROUGH_PREFIXES)
        if passthrough or key in environment.PASSTHROUGH_NAMES or key in PORT_VARS:
            monkeypatch.delenv(key)
    monkeypatch.setenv("IO_RUN_DIR", str(tmp_path / "run"))


@pytest.fixture
def cfg() -> Config:
    return Config.from_env()


@pytest.fixture
def as_user(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run as a normal user would: as root, PostgreSQL's files may live outside tmp_path."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)


@pytest.fixture
def no_signals(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every signal the stack would send, recorded instead of sent."""
    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(os, "kill", lambda pid, sig: sent.append(("kill", pid)))
    monkeypatch.setattr(os, "killpg", lambda pid, sig: sent.append(("killpg", pid)))
    monkeypatch.setattr(processes, "terminate", lambda name, pid, t: sent.append((name, pid)))
    monkeypatch.setattr(commands, "terminate", lambda name, pid, t: sent.append((name, pid)))
    return sent


def fake_process(
    monkeypatch: pytest.MonkeyPatch, pid: int, args: list[str], env: dict[str, str]
) -> None:
    """Make `pid` look alive with this command line and environment."""
    monkeypatch.setattr(processes, "alive", lambda p: p == pid)
    monkeypatch.setattr(processes, "cmdline", lambda p: args if p == pid else [])
    monkeypatch.setattr(processes, "environ_of", lambda p: env if p == pid else None)


# --- ports -----------------------------------------------------------------------------------


def test_ports_default_and_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    default = Config.from_env()
    assert [port for _, port in default.port_vars()] == [
        8000, 8010, 8001, 8002, 9092, 9093, 5432, 9090
    ]  # fmt: skip
    assert default.run == tmp_path / "run"
    monkeypatch.setenv("KAFKA_PORT", " 19092 ")
    monkeypatch.setenv("PG_PORT", "15432")
    monkeypatch.setenv("API_ADMIN_PORT", "18010")
    moved = Config.from_env()
    assert moved.ports_of("kafka") == [("KAFKA_PORT", 19092), ("KAFKA_CONTROLLER_PORT", 9093)]
    assert moved.ports_of("postgres") == [("PG_PORT", 15432)]
    assert moved.ports_of("api") == [("API_PORT", 8000), ("API_ADMIN_PORT", 18010)]
    assert [moved.admin_port(name) for name in config.APP_SERVICES] == [18010, 8001, 8002]


@pytest.mark.parametrize("raw", ["abc", "0", "65536", "-1", "80.5"])
def test_a_port_that_is_no_port_is_refused(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("API_PORT", raw)
    with pytest.raises(StackError, match=r"API_PORT=.* is not a TCP port number.*use 8000"):
        Config.from_env()


def test_the_scrape_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_SCRAPE_INTERVAL", "2s")
    conf = yaml.safe_load(prometheus.prometheus_config_text(Config.from_env()))
    assert conf["global"]["scrape_interval"] == "2s"
    assert conf["global"]["evaluation_interval"] == "2s"


@pytest.mark.parametrize("raw", ["2", "0s", "fast", "1.5s", "-2s"])
def test_a_scrape_interval_that_is_no_duration_is_refused(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("PROMETHEUS_SCRAPE_INTERVAL", raw)
    with pytest.raises(StackError, match=r"PROMETHEUS_SCRAPE_INTERVAL=.* is not a Prometheus"):
        Config.from_env()


def test_two_processes_on_one_port_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PROMETHEUS_PORT", "8001")
    with pytest.raises(StackError, match="INVENTORY_PORT and PROMETHEUS_PORT are both 8001"):
        Config.from_env()
    monkeypatch.delenv("PROMETHEUS_PORT")
    monkeypatch.setenv("API_ADMIN_PORT", "8000")
    with pytest.raises(StackError, match="API_PORT and API_ADMIN_PORT are both 8000"):
        Config.from_env()


def test_a_taken_port_is_found_with_its_owner() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        assert not processes.port_free(port)
        assert processes.listener_pid(port) == os.getpid()
    assert processes.port_free(port)
    assert processes.listener_pid(port) is None


def test_check_ports_names_each_taken_port_its_variable_and_its_holder(
    monkeypatch: pytest.MonkeyPatch, cfg: Config
) -> None:
    monkeypatch.setattr(processes, "port_free", lambda port: port not in (9092, 5432))
    monkeypatch.setattr(processes, "listener_pid", lambda port: 4242 if port == 9092 else None)
    monkeypatch.setattr(processes, "cmdline", lambda pid: ["java", "kafka.Kafka"])
    with pytest.raises(StackError) as failure:
        processes.check_ports(cfg, ["kafka", "postgres", "api"])
    message = str(failure.value)
    assert "port 9092 (KAFKA_PORT, for kafka) is already taken by pid 4242 (java kafka.Kafka)" in (
        message
    )
    assert "port 5432 (PG_PORT, for postgres) is already taken by another process" in message
    assert "port 9093" not in message
    assert "port 8000" not in message
    assert "port 8010" not in message
    assert "`KAFKA_PORT=18000 make up`" in message


def test_check_ports_is_quiet_when_every_port_is_free(
    monkeypatch: pytest.MonkeyPatch, cfg: Config
) -> None:
    monkeypatch.setattr(processes, "port_free", lambda port: True)
    processes.check_ports(cfg, config.ALL_PROCESSES)


# --- PID files and ownership -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "pid"), [("123\n", 123), ("77 extra", 77), ("", None), ("abc", None), ("-5", None)]
)
def test_read_pid(tmp_path: Path, text: str, pid: int | None) -> None:
    path = tmp_path / "x.pid"
    path.write_text(text)
    assert processes.read_pid(path) == pid
    assert processes.read_pid(tmp_path / "missing.pid") is None


def test_a_live_process_that_is_not_a_service_is_not_ours(cfg: Config) -> None:
    # This very test process: alive, but its command line is pytest's.
    assert processes.alive(os.getpid())
    for name in config.ALL_PROCESSES:
        assert not processes.is_ours(cfg, name, os.getpid())


def test_a_service_is_ours_only_with_our_run_folder(
    monkeypatch: pytest.MonkeyPatch, cfg: Config
) -> None:
    args = ["/repo/.venv/bin/python", "-m", "services.api"]
    fake_process(monkeypatch, 4242, args, {"IO_RUN_DIR": str(cfg.run)})
    assert processes.is_ours(cfg, "api", 4242)
    assert not processes.is_ours(cfg, "inventory", 4242)
    assert not processes.is_ours(cfg, "api", 4243)
    fake_process(monkeypatch, 4242, args, {"IO_RUN_DIR": "/another/checkout/.run"})
    assert not processes.is_ours(cfg, "api", 4242)


@pytest.mark.usefixtures("as_user")
def test_kafka_postgres_and_prometheus_are_ours_by_their_own_files(
    monkeypatch: pytest.MonkeyPatch, cfg: Config
) -> None:
    kafka_args = ["java", "-cp", "x", "kafka.Kafka", str(cfg.kafka_properties)]
    fake_process(monkeypatch, 10, kafka_args, {})
    assert processes.is_ours(cfg, "kafka", 10)
    fake_process(monkeypatch, 10, ["java", "kafka.Kafka", "/elsewhere/server.properties"], {})
    assert not processes.is_ours(cfg, "kafka", 10)

    data = postgres_files.pg_layout(cfg).data
    fake_process(monkeypatch, 11, ["/usr/lib/postgresql/15/bin/postgres", "-D", str(data)], {})
    assert processes.is_ours(cfg, "postgres", 11)
    fake_process(monkeypatch, 11, ["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/pg"], {})
    assert not processes.is_ours(cfg, "postgres", 11)

    fake_process(monkeypatch, 12, ["prometheus", f"--config.file={cfg.prometheus_config}"], {})
    assert processes.is_ours(cfg, "prometheus", 12)
    fake_process(monkeypatch, 12, ["prometheus", "--config.file=/etc/prometheus.yml"], {})
    assert not processes.is_ours(cfg, "prometheus", 12)


@pytest.mark.parametrize("hard", [False, True])
def test_a_pid_file_naming_someone_elses_process_kills_nothing(
    cfg: Config, no_signals: list[tuple[str, int]], hard: bool
) -> None:
    processes.write_pid(cfg, "api", os.getpid())  # alive, but not the api
    cfg.codefile("api").write_text("digest\n")
    assert processes.running_pid(cfg, "api") is None
    assert commands.stop_process(cfg, "api", hard=hard) is False
    assert no_signals == []
    assert not cfg.pidfile("api").exists()
    assert not cfg.codefile("api").exists()


def test_our_process_is_stopped_by_its_pid(
    monkeypatch: pytest.MonkeyPatch, cfg: Config, no_signals: list[tuple[str, int]]
) -> None:
    fake_process(monkeypatch, 4242, ["python", "-m", "services.api"], {"IO_RUN_DIR": str(cfg.run)})
    processes.write_pid(cfg, "api", 4242)
    assert processes.running_pid(cfg, "api") == 4242
    assert commands.stop_process(cfg, "api") is True
    assert no_signals == [("api", 4242)]
    assert not cfg.pidfile("api").exists()


@pytest.mark.usefixtures("as_user")
def test_postgres_is_adopted_from_its_own_lock_file(
    monkeypatch: pytest.MonkeyPatch, cfg: Config
) -> None:
    data = postgres_files.pg_layout(cfg).data
    fake_process(monkeypatch, 555, ["postgres", "-D", str(data)], {})
    assert data.is_relative_to(cfg.run)
    data.mkdir(parents=True)
    (data / "postmaster.pid").write_text(f"555\n{data}\n")
    assert not cfg.pidfile("postgres").exists()
    assert processes.running_pid(cfg, "postgres") == 555
    assert processes.read_pid(cfg.pidfile("postgres")) == 555


def test_status_reports_a_foreign_pid_as_stopped(
    cfg: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    processes.write_pid(cfg, "kafka", os.getpid())
    commands.cmd_status(cfg)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == list(config.ALL_PROCESSES)
    assert lines[1] == "kafka       stopped  pid=-        port=9092,9093"


# --- config files ------------------------------------------------------------------------------


def properties(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line and line[0] != "#"]
    assert len({key for key, _ in pairs}) == len(pairs), "a key is set twice"
    return dict(pairs)


def test_kafka_properties_use_the_stacks_ports_and_folders(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("KAFKA_PORT", "19092")
    monkeypatch.setenv("KAFKA_CONTROLLER_PORT", "19093")
    cfg = Config.from_env()
    props = properties(kafka.kafka_properties_text(cfg))
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["log.dirs"] == str(cfg.kafka_data)
    assert props["auto.create.topics.enable"] == "false"
    for key in (
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
        "min.insync.replicas",
    ):
        assert props[key] == "1", key


def test_the_broker_jvm_defaults_log_its_collections_and_yield_to_kafkas_variables(
    monkeypatch: pytest.MonkeyPatch, cfg: Config
) -> None:
    gc_log = f'-Xlog:gc:file="{cfg.logs / "kafka-gc.log"}":time,uptime:filecount=3,filesize=10M'
    for unset in (None, ""):  # empty is unset, as in Kafka's scripts
        for name in ("KAFKA_HEAP_OPTS", "KAFKA_JVM_PERFORMANCE_OPTS"):
            if unset is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, unset)
        assert kafka.broker_jvm_options(cfg) == ["-Xmx512m", gc_log]
    monkeypatch.setenv("KAFKA_HEAP_OPTS", "-Xmx1g -Xms1g")
    monkeypatch.setenv("KAFKA_JVM_PERFORMANCE_OPTS", "-XX:+UseG1GC -XX:MaxGCPauseMillis=20")
    assert kafka.broker_jvm_options(cfg) == [
        "-Xmx1g", "-Xms1g", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", gc_log
    ]  # fmt: skip


def test_broker_jvm_options_that_do_not_split_are_refused(
    monkeypatch: pytest.MonkeyPatch, cfg: Config
) -> None:
    monkeypatch.setenv("KAFKA_JVM_PERFORMANCE_OPTS", '-XX:OnError="echo')
    with pytest.raises(StackError, match=r"KAFKA_JVM_PERFORMANCE_OPTS.*quoting"):
        kafka.broker_jvm_options(cfg)


def test_the_broker_is_launched_with_its_jvm_options(
    monkeypatch: pytest.MonkeyPatch, cfg: Config
) -> None:
    monkeypatch.setenv("KAFKA_HEAP_OPTS", "-Xmx300m")
    (cfg.kafka_data).mkdir(parents=True)
    (cfg.kafka_data / "meta.properties").write_text("formatted\n")
    cfg.logs.mkdir(parents=True, exist_ok=True)
    launched: list[list[str]] = []

    class FakeBroker:
        pid = 999_999

        def __init__(self, args: list[str], **_: object) -> None:
            launched.append(args)

    monkeypatch.setattr(kafka.subprocess, "Popen", FakeBroker)
    monkeypatch.setattr(kafka, "record_child", lambda *_: None)
    kafka.launch_kafka(cfg, "java")
    assert launched[0][0] == "java"
    assert launched[0][1 : 1 + len(kafka.broker_jvm_options(cfg))] == kafka.broker_jvm_options(cfg)
    assert "-Xmx300m" in launched[0]
    assert launched[0][-2:] == ["kafka.Kafka", str(cfg.kafka_properties)]


@pytest.mark.skipif(shutil.which("java") is None, reason="no JVM on this machine")
def test_the_jvm_takes_the_broker_options_even_with_a_colon_in_the_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IO_RUN_DIR", str(tmp_path / "run:1"))
    cfg = Config.from_env()
    cfg.logs.mkdir(parents=True)
    java = subprocess.run(
        ["java", *kafka.broker_jvm_options(cfg), "-version"], capture_output=True, timeout=60
    )
    assert java.returncode == 0, java.stderr.decode()
    assert (cfg.logs / "kafka-gc.log").exists()


def test_postgres_listens_on_loopback_and_trusts_no_one(cfg: Config) -> None:
    layout = postgres_files.pg_layout(cfg)
    conf = postgres_files.pg_config_text(cfg, layout)
    assert "listen_addresses = '127.0.0.1'\n" in conf
    assert f"port = {cfg.pg_port}\n" in conf
    assert f"unix_socket_directories = '{layout.socket_dir}'\n" in conf
    hba = [
        line.split()
        for line in postgres_files.pg_hba_text(layout).splitlines()
        if line and not line.startswith("#")
    ]
    assert hba[0] == ["local", "all", f'"{layout.user}"', "peer"]
    assert {row[-1] for row in hba[1:]} == {"scram-sha-256"}
    assert all(row[0] == "local" or row[3] in ("127.0.0.1/32", "::1/128") for row in hba)


@pytest.mark.usefixtures("as_user")
def test_postgres_files_live_in_the_run_folder_for_a_normal_user(cfg: Config) -> None:
    layout = postgres_files.pg_layout(cfg)
    assert layout.data == cfg.run / "pg" / "data"
    assert layout.socket_dir == cfg.run / "pg" / "socket"
    assert layout.log == cfg.logs / "postgres.log"


@pytest.mark.usefixtures("as_user")
def test_a_socket_path_too_long_for_unix_moves_to_tmp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("IO_RUN_DIR", str(tmp_path / ("deep" * 25)))
    layout = postgres_files.pg_layout(Config.from_env())
    assert layout.socket_dir.parent == Path("/tmp")  # noqa: S108 - the stack's choice
    assert layout.socket_dir.name.startswith("instant-orders-")
    assert layout.data.is_relative_to(tmp_path)


def test_the_postgres_user_must_reach_the_run_folder(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    uid, gid = os.getuid(), os.getgid()
    assert postgres_files._reachable(run, uid, gid)
    run.chmod(0o600)
    try:
        assert not postgres_files._reachable(run, uid, gid)
    finally:
        run.chmod(0o755)
    assert postgres_files._reachable(tmp_path / "not" / "yet", uid, gid)


def test_prometheus_scrapes_the_three_services_on_the_stacks_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INVENTORY_PORT", "18001")
    monkeypatch.setenv("API_ADMIN_PORT", "18010")
    monkeypatch.delenv("PROMETHEUS_SCRAPE_INTERVAL", raising=False)  # `make test` sets it
    cfg = Config.from_env()
    conf = yaml.safe_load(prometheus.prometheus_config_text(cfg))
    assert conf["global"]["scrape_interval"] == "15s"  # Prometheus's own default
    assert conf["rule_files"] == [str(prometheus.PROMETHEUS_RULES)]
    (job,) = conf["scrape_configs"]
    assert job["honor_labels"] is True
    assert [(g["targets"], g["labels"]) for g in job["static_configs"]] == [
        # the api's /metrics is on its admin listener, not on the public port
        (["127.0.0.1:18010"], {"service": "api"}),
        (["127.0.0.1:18001"], {"service": "inventory"}),
        (["127.0.0.1:8002"], {"service": "fulfilment"}),
    ]


def test_the_prometheus_digest_changes_with_the_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    before = prometheus.prometheus_digest(Config.from_env())
    assert prometheus.prometheus_digest(Config.from_env()) == before
    monkeypatch.setenv("API_ADMIN_PORT", "18010")
    assert prometheus.prometheus_digest(Config.from_env()) != before


def test_prometheus_is_stale_when_the_interval_asked_for_changes(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What makes `up` wait for a test run to end before it reloads Prometheus."""
    monkeypatch.setenv("IO_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("PROMETHEUS_SCRAPE_INTERVAL", "2s")
    testing = Config.from_env()
    testing.make_dirs()
    testing.codefile("prometheus").write_text(prometheus.prometheus_digest(testing) + "\n")
    monkeypatch.setattr(prometheus, "running_pid", lambda cfg, name: 4242)
    assert not prometheus.prometheus_stale(testing)
    monkeypatch.delenv("PROMETHEUS_SCRAPE_INTERVAL")
    assert prometheus.prometheus_stale(Config.from_env())
    monkeypatch.setattr(prometheus, "running_pid", lambda cfg, name: None)
    assert not prometheus.prometheus_stale(Config.from_env())  # nothing running to reload


# --- environment -------------------------------------------------------------------------------


def test_tuning_passes_the_services_variables_and_nothing_else(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in {
        "API_NUDGE_AFTER_S": "5",
        "FULFILMENT_RETRY_AFTER_S": "3",
        "ORDERS_WINDOW": "1",
        "SUPPLIER_ENABLED": "false",
        "LOG_LEVEL": "DEBUG",
        "AWS_SECRET_ACCESS_KEY": "nope",
        "DATABASE_URL": "nope",
        "MY_API_TOKEN": "nope",
    }.items():
        monkeypatch.setenv(key, value)
    tuning = environment.tuning_env()
    assert tuning == {
        "SUPPLIER_ENABLED": "false",
        "API_PROCESSES": str(environment.default_api_processes()),
        "API_NUDGE_AFTER_S": "5",
        "FULFILMENT_RETRY_AFTER_S": "3",
        "ORDERS_WINDOW": "1",
        "LOG_LEVEL": "DEBUG",
    }


def test_tuning_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert environment.tuning_env() == {"SUPPLIER_ENABLED": "true", "API_PROCESSES": "4"}
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert environment.default_api_processes() == 1  # the other core for the rest of the stack
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    assert environment.default_api_processes() == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert environment.default_api_processes() == 1
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert environment.default_api_processes() == 1
    monkeypatch.setenv("API_PROCESSES", "3")
    assert environment.tuning_env()["API_PROCESSES"] == "3"


def test_a_service_gets_the_stacks_settings_and_only_some_of_the_callers(
    monkeypatch: pytest.MonkeyPatch, cfg: Config
) -> None:
    for key in environment.INHERITED_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("TZ", "UTC")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "nope")
    monkeypatch.setenv("INVENTORY_SUPPLIER_DELAY_S", "0.5")
    env = environment.process_env(cfg, SECRETS)
    assert "AWS_SECRET_ACCESS_KEY" not in env
    assert env["TZ"] == "UTC"
    assert env["INVENTORY_SUPPLIER_DELAY_S"] == "0.5"
    assert env["PATH"] == f"{config.VENV / 'bin'}{os.pathsep}/usr/bin"
    assert env["API_DATABASE_URL"] == "postgresql://api:api@127.0.0.1:5432/api"
    assert env["IO_RUN_DIR"] == str(cfg.run)
    assert env["ADMIN_TOKEN"] == "t"
    expected = {
        *environment.SERVICE_ENV_NAMES,
        *environment.tuning_env(),
        "PATH",
        "TZ",
        "PYTHONUNBUFFERED",
        "VIRTUAL_ENV",
    }
    assert set(env) == expected


def test_secrets_are_made_once_private_and_kept(cfg: Config) -> None:
    first = environment.load_secrets(cfg)
    assert set(first) == {"ADMIN_TOKEN", "CODE_ENCRYPTION_KEYS", "CODE_FINGERPRINT_KEY"}
    assert first["CODE_ENCRYPTION_KEYS"].startswith("k1:")
    assert cfg.secrets_file.stat().st_mode & 0o777 == 0o600
    assert environment.load_secrets(cfg) == first


def test_a_missing_secret_is_added_beside_the_kept_ones(cfg: Config) -> None:
    cfg.run.mkdir(parents=True)
    cfg.secrets_file.write_text("# mine\nADMIN_TOKEN=kept\nCODE_FINGERPRINT_KEY=\n")
    values = environment.load_secrets(cfg)
    assert values["ADMIN_TOKEN"] == "kept"
    assert values["CODE_FINGERPRINT_KEY"]
    assert "ADMIN_TOKEN=kept\n" in cfg.secrets_file.read_text()


def test_env_prints_shell_exports_that_round_trip(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("IO_RUN_DIR", str(tmp_path / "a run's folder"))
    cfg = Config.from_env()
    commands.cmd_env(cfg)
    exported = {}
    for line in capsys.readouterr().out.splitlines():
        word, assignment = shlex.split(line)
        assert word == "export"
        key, _, value = assignment.partition("=")
        exported[key] = value
    assert list(exported)[: len(environment.SERVICE_ENV_NAMES)] == list(
        environment.SERVICE_ENV_NAMES
    )
    assert exported["IO_RUN_DIR"] == str(cfg.run)
    assert exported["PROMETHEUS_URL"] == "http://127.0.0.1:9090"
    assert exported["API_ADMIN_PORT"] == "8010"
    assert exported["API_ADMIN_URL"] == "http://127.0.0.1:8010"
    assert exported["ADMIN_TOKEN"] == environment.load_secrets(cfg)["ADMIN_TOKEN"]


# --- the command line --------------------------------------------------------------------------


def test_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["--help"]) == 0
    assert cli.main([]) == 2
    text = capsys.readouterr().out
    for command in cli.COMMANDS:
        assert f"  {command}" in text or f"|{command}" in text, command


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["launch"], "unknown command 'launch'"),
        (["status", "api"], "`status` takes no arguments"),
        (["start"], "`start` needs a service"),
        (["restart", "api", "db"], "unknown service db"),
    ],
)
def test_a_wrong_command_line_says_what_to_use(
    cfg: Config, no_signals: list[tuple[str, int]], argv: list[str], message: str
) -> None:
    with pytest.raises(StackError, match=message):
        cli.main(argv)
    assert no_signals == []
