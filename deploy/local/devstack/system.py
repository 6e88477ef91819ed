"""Running the machine's programs: a long command with its log, apt-get, an HTTP probe."""

# ruff: noqa: S603, S607 - this module exists to run the stack's programs by name

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from .config import Config, fail, rel, say, tail


def run_logged(
    cmd: Sequence[str | Path],
    log: Path,
    what: str,
    *,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    progress_every: float = 20.0,
) -> int:
    """Run a long command with its output in `log`, printing a progress line now and then."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with log.open("w") as out:
        try:
            proc = subprocess.Popen(
                [str(c) for c in cmd],
                cwd=cwd,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        except OSError as exc:
            fail(f"could not run {cmd[0]} ({exc}) while {what}.")
        next_note = started + progress_every
        while proc.poll() is None:
            time.sleep(0.2)
            if time.monotonic() >= next_note:
                say(f"  still {what} ({time.monotonic() - started:.0f}s, log: {rel(log)})")
                next_note += progress_every
    return proc.returncode


def _apt_env() -> dict[str, str]:
    return {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}


_apt_updated = False


def apt_update(what: str) -> None:
    global _apt_updated
    if _apt_updated:
        return
    cfg = Config.from_env()
    cfg.make_dirs()
    say("apt-get update (once per run)")
    log = cfg.logs / "apt-update.log"
    if run_logged(["apt-get", "update"], log, "running apt-get update", env=_apt_env()) != 0:
        fail(
            f"`apt-get update` failed, so {what} cannot be installed. Check the network and "
            f"the apt sources, then run the command again. Last lines of {rel(log)}:\n"
            f"{tail(log)}"
        )
    _apt_updated = True


def can_apt() -> bool:
    return os.geteuid() == 0 and shutil.which("apt-get") is not None


def apt_install(packages: Sequence[str], what: str) -> None:
    manual = f"apt-get install -y {' '.join(packages)}"
    if not can_apt():
        fail(
            f"{what} is missing and this script can install it only with apt-get as root. "
            f"Install it yourself (on Debian/Ubuntu: `sudo {manual}`), make sure it is on PATH, "
            f"and run the command again."
        )
    apt_update(what)
    cfg = Config.from_env()
    say(f"installing {what} with apt-get: {' '.join(packages)} (this can take a few minutes)")
    log = cfg.logs / "apt-install.log"
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if run_logged(cmd, log, f"installing {what}", env=_apt_env()) != 0:
        fail(
            f"`{manual}` failed, so {what} is not available. Install it yourself and run the "
            f"command again. Last lines of {rel(log)}:\n{tail(log)}"
        )


def apt_has(package: str) -> bool:
    result = subprocess.run(
        ["apt-cache", "show", "--no-all-versions", package],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0 and bool(result.stdout.strip())


def program_dirs(variable: str, program: str) -> list[Path]:
    """The folders to look in first for a program and its siblings: the one the variable
    names, then the one of `program` on PATH."""
    dirs: list[Path] = []
    if os.environ.get(variable):
        dirs.append(Path(os.environ[variable]))
    on_path = shutil.which(program)
    if on_path:
        dirs.append(Path(on_path).resolve().parent)
    return dirs


def http_status(url: str, timeout: float = 2.0) -> int | None:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError):
        return None
