"""Libraries a benchmark compares the project's own against, that are not the project's
dependencies: installed into the virtualenv the benchmark runs in the first time it needs
them, never by the services."""

import importlib
import importlib.util
import subprocess
import sys
from types import ModuleType


def installed(module: str, requirement: str) -> ModuleType:
    """`module`, imported; `requirement` (e.g. "confluent-kafka==2.16.2") pip-installed first
    if it is missing."""
    if importlib.util.find_spec(module) is None:
        print(f"installing {requirement} into {sys.prefix} (for this benchmark only)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", requirement], check=True)
        importlib.invalidate_caches()
    return importlib.import_module(module)
