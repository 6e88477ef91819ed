"""The local stack of deploy/local/stack.py, by part.

config (state folder, ports) and system (programs, apt-get, HTTP probes) serve all others;
install makes the virtualenv and finds the JDK; processes keeps the PID files and checks a
PID is ours before any signal; postgres, postgres_files, kafka and prometheus install,
configure, start and stop each program; environment is what the services see; apps starts
the three services; commands and cli are the commands of stack.py.
"""

from .config import Config
from .environment import SERVICE_ENV_NAMES
from .prometheus import prometheus_config_text

__all__ = ["SERVICE_ENV_NAMES", "Config", "prometheus_config_text"]
