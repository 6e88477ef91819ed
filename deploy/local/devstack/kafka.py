"""Kafka: its jars from Maven Central, server.properties, storage, start and readiness."""

# ruff: noqa: S603 - this module exists to run the stack's programs by name

from __future__ import annotations

import base64
import os
import re
import shlex
import shutil
import subprocess
import time
import uuid

from .config import ROOT, Config, fail, rel, say, sha256_of, tail
from .install import java_env
from .processes import Launch, forget_pid, record_child, terminate
from .system import apt_install, run_logged

KAFKA_POM = ROOT / "deploy" / "kafka" / "pom.xml"
KAFKA_LOG4J = ROOT / "deploy" / "kafka" / "log4j2.xml"
KAFKA_READY_LINE = "Kafka Server started"
KAFKA_READY_TIMEOUT = 120.0
# The broker's heap and JVM options, overridden by the variables Kafka's own start scripts
# read, when the broker is started or restarted. Kept at the JVM's defaults for G1 (a 200 ms
# pause goal), not at the flags of Kafka's scripts (a fixed heap, a 20 ms goal), which the
# image of docker-compose.yml runs: measured under load, Kafka's flags gave more and shorter
# pauses and no better latency (docs/benchmarks.md, "The broker's garbage collector").
KAFKA_HEAP_OPTS = "-Xmx512m"
KAFKA_JVM_PERFORMANCE_OPTS = ""


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


def broker_jvm_options(cfg: Config) -> list[str]:
    """The broker's heap and collector (KAFKA_HEAP_OPTS, KAFKA_JVM_PERFORMANCE_OPTS: unset or
    empty means the default, as in Kafka's scripts), and its collections logged to
    logs/kafka-gc.log (its path quoted: the JVM splits -Xlog at colons)."""
    options = []
    for name, default in (
        ("KAFKA_HEAP_OPTS", KAFKA_HEAP_OPTS),
        ("KAFKA_JVM_PERFORMANCE_OPTS", KAFKA_JVM_PERFORMANCE_OPTS),
    ):
        value = os.environ.get(name) or default
        try:
            options += shlex.split(value)
        except ValueError as exc:
            fail(f"{name}={value!r} cannot be split into JVM options ({exc}): fix its quoting.")
    gc_log = cfg.logs / "kafka-gc.log"
    return [*options, f'-Xlog:gc:file="{gc_log}":time,uptime:filecount=3,filesize=10M']


def java_cmd(java: str, cfg: Config, *args: str, jvm: list[str]) -> list[str]:
    return [
        java,
        *jvm,
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        f"-Dlog4j2.configurationFile={KAFKA_LOG4J}",
        f"-Dkafka.logs.dir={cfg.logs}",
        "-cp",
        f"{cfg.kafka_libs}/*",
        *args,
    ]


def launch_kafka(cfg: Config, java: str) -> Launch:
    cfg.kafka_dir.mkdir(parents=True, exist_ok=True)
    cfg.kafka_properties.write_text(kafka_properties_text(cfg))
    if not (cfg.kafka_data / "meta.properties").exists():
        cluster_id = kafka_cluster_id(cfg)
        say(f"formatting Kafka storage in {rel(cfg.kafka_data)} (cluster id {cluster_id})")
        log = cfg.logs / "kafka-format.log"
        cmd = java_cmd(
            java, cfg, "kafka.tools.StorageTool", "format", "-t", cluster_id,
            "-c", str(cfg.kafka_properties), jvm=["-Xmx256m"],
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
        java_cmd(java, cfg, "kafka.Kafka", str(cfg.kafka_properties), jvm=broker_jvm_options(cfg)),
        cwd=cfg.kafka_dir,
        env=java_env(java),
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    out.close()
    record_child(cfg, "kafka", proc)
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
