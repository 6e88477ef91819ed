"""The stack's processes: PID files, liveness, whether a PID is ours, stopping, ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .config import Config, fail, say
from .postgres_files import pg_layout

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


@dataclass
class Launch:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path
    offset: int


def record_child(cfg: Config, name: str, proc: subprocess.Popen[bytes]) -> None:
    """A process this command started: known as a child (its exit is seen at once) and by its
    PID file."""
    _children[proc.pid] = proc
    write_pid(cfg, name, proc.pid)


def log_since(launch: Launch, lines: int = 40) -> str:
    try:
        with launch.log.open("rb") as log:
            log.seek(launch.offset)
            text = log.read().decode(errors="replace")
    except OSError:
        return "    (no log)"
    kept = text.splitlines()[-lines:]
    return "\n".join("    " + line for line in kept) or "    (empty)"
