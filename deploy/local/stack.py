#!/usr/bin/env python3
"""Run the whole instant-orders stack on this machine, without Docker (`--help` says how).

The code is the package `devstack/` beside this file. Standard library only: this script
runs before the project's virtualenv exists.
"""

from __future__ import annotations

import sys

if sys.version_info < (3, 11):  # noqa: UP036 - must run (and explain) on older interpreters
    major, minor = sys.version_info[:2]
    sys.stderr.write(
        f"error: deploy/local/stack.py needs Python 3.11 or newer, but it was started with "
        f"Python {major}.{minor} ({sys.executable}). Install Python 3.11+ (for example "
        f"`apt-get install python3` on Debian 12, or pyenv) and run it as "
        f"`python3.11 deploy/local/stack.py ...`.\n"
    )
    sys.exit(2)

from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from devstack.cli import entrypoint  # noqa: E402 - after the version check and the path

if __name__ == "__main__":
    entrypoint()
