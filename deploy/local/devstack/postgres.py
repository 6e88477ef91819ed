"""PostgreSQL: the server programs, the system user that runs them, start and stop."""

# ruff: noqa: S603, S607 - this module exists to run the stack's programs by name

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .config import ROOT, STOP_TIMEOUT, Config, fail, rel, say, tail
from .postgres_files import PG_SYSTEM_USER, PgLayout, pg_config_text, pg_hba_text, pg_layout
from .processes import alive, read_pid, terminate, wait_gone, write_pid
from .system import apt_install, program_dirs

PG_INIT_SQL = ROOT / "deploy" / "postgres" / "init-databases.sql"


@dataclass(frozen=True)
class PgBin:
    initdb: str
    pg_ctl: str
    postgres: str
    psql: str


def find_pg_bin() -> PgBin | None:
    dirs = program_dirs("PG_BIN", "pg_ctl")

    def version_key(path: Path) -> int:
        name = path.parent.name
        return int(name) if name.isdigit() else 0

    dirs += sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version_key, reverse=True)
    for directory in dirs:
        tools = {t: directory / t for t in ("initdb", "pg_ctl", "postgres")}
        if all(p.exists() for p in tools.values()):
            psql = directory / "psql"
            psql_path = str(psql) if psql.exists() else shutil.which("psql")
            if psql_path:
                return PgBin(
                    str(tools["initdb"]), str(tools["pg_ctl"]), str(tools["postgres"]), psql_path
                )
    return None


def ensure_postgres_binaries() -> PgBin:
    found = find_pg_bin()
    if found:
        return found
    # Debian's package would create and start a "main" cluster on port 5432: the stack runs
    # its own, so ask postgresql-common not to create one (only when nobody configured it).
    conf = Path("/etc/postgresql-common/createcluster.conf")
    if os.geteuid() == 0 and not conf.exists():
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(
            "# written by instant-orders deploy/local/stack.py\ncreate_main_cluster = false\n"
        )
    apt_install(["postgresql", "postgresql-client"], "the PostgreSQL server")
    found = find_pg_bin()
    if not found:
        fail(
            "PostgreSQL was installed but its server programs (initdb, pg_ctl, postgres) were "
            "not found. Set PG_BIN to the folder that has them and run the command again."
        )
    return found


def ensure_pg_user() -> None:
    if os.geteuid() != 0:
        return
    try:
        pwd.getpwnam(PG_SYSTEM_USER)
        return
    except KeyError:
        pass
    if shutil.which("useradd") is None:
        fail(
            f"PostgreSQL refuses to run as root and `useradd` is not available to create the "
            f"system user {PG_SYSTEM_USER!r}. Create it yourself (a system user with no login "
            f"shell) or run the stack as a non-root user."
        )
    say(f"creating the system user {PG_SYSTEM_USER!r} to run PostgreSQL (it refuses root)")
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            PG_SYSTEM_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        fail(
            f"`useradd {PG_SYSTEM_USER}` failed: {result.stderr.strip()}. Create the user and "
            f"run the command again."
        )


def as_pg_user(
    layout: PgLayout, cmd: Sequence[str], *, input_text: str | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, object] = {}
    if os.geteuid() == 0:
        kwargs = {"user": layout.uid, "group": layout.gid, "extra_groups": []}
    env = {
        "PATH": os.environ.get("PATH", os.defpath),
        "LC_ALL": "C",
        "LANG": "C",
        "HOME": "/nonexistent" if os.geteuid() == 0 else os.environ.get("HOME", "/"),
        "PGTZ": "UTC",
    }
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        list(cmd),
        input=input_text,
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env=env,
        timeout=timeout,
        start_new_session=True,
        **kwargs,
    )


def _own(path: Path, layout: PgLayout, mode: int) -> None:
    if os.geteuid() == 0:
        os.chown(path, layout.uid, layout.gid)
    path.chmod(mode)


def start_postgres(cfg: Config, pg: PgBin) -> int:
    ensure_pg_user()
    layout = pg_layout(cfg)
    for folder in (layout.base, layout.socket_dir):
        folder.mkdir(parents=True, exist_ok=True)
        _own(folder, layout, 0o700)
    if not layout.log.exists():
        layout.log.touch()
    _own(layout.log, layout, 0o644)
    old = read_pid(layout.data / "postmaster.pid")
    if old is not None:  # a server that was killed: let the kernel finish with it first
        wait_gone(old, 10)
    if not (layout.data / "PG_VERSION").exists():
        say(f"initialising a PostgreSQL cluster in {rel(layout.data)}")
        shutil.rmtree(layout.data, ignore_errors=True)
        result = as_pg_user(
            layout,
            [
                pg.initdb,
                "-D",
                str(layout.data),
                "-U",
                layout.user,
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
            ],
        )
        if result.returncode != 0:
            fail(f"initdb failed: {(result.stdout + result.stderr).strip()[-1500:]}")
        conf = layout.data / "postgresql.conf"
        with conf.open("a") as out:
            out.write("\ninclude_if_exists = 'instant_orders.conf'\n")
    for name, text in (
        ("instant_orders.conf", pg_config_text(cfg, layout)),
        ("pg_hba.conf", pg_hba_text(layout)),
    ):
        path = layout.data / name
        path.write_text(text)
        _own(path, layout, 0o600)
    say(f"starting PostgreSQL on 127.0.0.1:{cfg.pg_port}")
    result = as_pg_user(
        layout,
        [pg.pg_ctl, "-D", str(layout.data), "-l", str(layout.log), "-w", "-t", "90", "start"],
    )
    if result.returncode != 0:
        fail(
            f"PostgreSQL did not start ({(result.stdout + result.stderr).strip()[-300:]}). "
            f"Last lines of {rel(layout.log)}:\n{tail(layout.log)}"
        )
    pid = read_pid(layout.data / "postmaster.pid")
    if pid is None:
        fail(f"PostgreSQL started but wrote no postmaster.pid; see {rel(layout.log)}.")
    write_pid(cfg, "postgres", pid)
    setup = as_pg_user(
        layout,
        [
            pg.psql,
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            str(layout.socket_dir),
            "-p",
            str(cfg.pg_port),
            "-U",
            layout.user,
            "-d",
            "postgres",
            "-f",
            "-",
        ],
        input_text=PG_INIT_SQL.read_text(),
    )
    if setup.returncode != 0:
        fail(
            f"creating the services' roles and databases failed: "
            f"{(setup.stdout + setup.stderr).strip()[-1500:]}"
        )
    return pid


def stop_postgres(cfg: Config, pid: int, pg: PgBin | None) -> None:
    layout = pg_layout(cfg)
    if pg is not None:
        result = as_pg_user(
            layout, [pg.pg_ctl, "-D", str(layout.data), "-m", "fast", "-w", "-t", "60", "stop"]
        )
        if result.returncode != 0:
            say(f"pg_ctl stop failed ({result.stderr.strip()[-200:]}); signalling pid {pid}")
    if alive(pid):
        terminate("postgres", pid, STOP_TIMEOUT["postgres"])
