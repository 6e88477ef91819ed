"""What the stack installs for itself: the virtualenv with the project, a Java runtime."""

# ruff: noqa: S603 - this module exists to run the stack's programs by name

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

from .config import (
    CLI,
    ROOT,
    VENV,
    VENV_PYTHON,
    VENV_STAMP,
    Config,
    fail,
    rel,
    say,
    sha256_of,
    tail,
)
from .system import apt_has, apt_install, apt_update, can_apt, run_logged

APT_JDK_PACKAGES = ("openjdk-17-jdk-headless", "openjdk-21-jdk-headless", "default-jdk-headless")
MIN_JAVA = 17


def ensure_venv(cfg: Config) -> None:
    if not VENV_PYTHON.exists():
        say(f"creating the virtualenv {rel(VENV)}")
        result = subprocess.run(
            [sys.executable, "-m", "venv", str(VENV)], capture_output=True, text=True, check=False
        )
        if result.returncode != 0:
            fail(
                f"`{sys.executable} -m venv .venv` failed: {result.stderr.strip()[-400:]}. On "
                f"Debian/Ubuntu install the venv module (`apt-get install -y python3-venv`), "
                f"remove the half-made .venv folder and run the command again."
            )
    probe = subprocess.run(
        [str(VENV_PYTHON), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    version = probe.stdout.strip()
    if probe.returncode != 0 or tuple(int(p) for p in version.split(".")) < (3, 11):
        fail(
            f"the virtualenv {rel(VENV)} is broken or older than Python 3.11 "
            f"({version or 'no answer'}). Remove it (`rm -rf .venv`) and run the command again "
            f"with Python 3.11+."
        )
    pyproject = ROOT / "pyproject.toml"
    wanted = sha256_of(pyproject.read_bytes(), version.encode())
    installed = VENV_STAMP.read_text().strip() if VENV_STAMP.exists() else ""
    if installed == wanted and CLI.exists():
        return
    log = cfg.logs / "pip.log"
    say(f"installing the project and its dependencies into {rel(VENV)} (log: {rel(log)})")
    started = time.monotonic()
    cmd: list[str | Path] = [VENV_PYTHON, "-m", "pip", "install", "--disable-pip-version-check"]
    cmd += ["-e", ".[dev]"]
    if run_logged(cmd, log, "installing Python packages", cwd=ROOT) != 0:
        fail(
            f"`pip install -e '.[dev]'` failed in {rel(VENV)}. If PyPI could not be reached, "
            f"check the network or the pip proxy settings (PIP_INDEX_URL); if a package failed "
            f"to build, the log says which. Last lines of {rel(log)}:\n{tail(log)}"
        )
    VENV_STAMP.write_text(wanted + "\n")
    say(f"  Python packages installed in {time.monotonic() - started:.0f}s")


def java_major(java: str) -> int | None:
    try:
        result = subprocess.run(
            [java, "-version"], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major


def find_java() -> str | None:
    candidates: list[str] = []
    if os.environ.get("JAVA_HOME"):
        candidates.append(str(Path(os.environ["JAVA_HOME"]) / "bin" / "java"))
    on_path = shutil.which("java")
    if on_path:
        candidates.append(on_path)
    candidates += sorted(str(p) for p in Path("/usr/lib/jvm").glob("*/bin/java"))
    for candidate in candidates:
        if Path(candidate).exists() and (java_major(candidate) or 0) >= MIN_JAVA:
            return candidate
    return None


def ensure_java() -> str:
    java = find_java()
    if java:
        return java
    what = f"a Java {MIN_JAVA}+ JDK (Kafka 4 needs it)"
    package = APT_JDK_PACKAGES[0]
    if can_apt():
        apt_update(what)
        package = next((p for p in APT_JDK_PACKAGES if apt_has(p)), package)
    apt_install([package], what)
    java = find_java()
    if not java:
        fail(
            f"no Java {MIN_JAVA}+ runtime was found after installing {package}. Install a JDK "
            f"{MIN_JAVA}+, set JAVA_HOME to it, and run the command again."
        )
    return java


def java_env(java: str) -> dict[str, str]:
    java_home = Path(java).resolve().parent.parent
    return {
        **os.environ,
        "JAVA_HOME": str(java_home),
        "PATH": f"{java_home / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    }
