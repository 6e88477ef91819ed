"""Where the stack's PostgreSQL keeps its files, and the config files the stack writes there."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import Path

from .config import Config, sha256_of

# PostgreSQL refuses to run as root: as root, the stack runs it as this system user.
PG_SYSTEM_USER = "instant-orders"


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
