"""What every CLI command shares: output, errors, the admin client and local-stack discovery."""

import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any, NoReturn

import httpx


class CliError(Exception):
    """A failure the operator can act on; printed as one line, exit status 1."""


def emit(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def fail(message: str) -> NoReturn:
    raise CliError(message)


def run_dir() -> Path:
    """The local stack's state folder: IO_RUN_DIR, else `.run` beside the CLI's virtualenv."""
    explicit = os.environ.get("IO_RUN_DIR")
    if explicit:
        return Path(explicit)
    return Path(sys.prefix).resolve().parent / ".run"


def local_secret(name: str) -> str | None:
    """A value from the environment, else from the local stack's `.run/secrets.env`."""
    if value := os.environ.get(name):
        return value
    secrets_file = run_dir() / "secrets.env"
    if secrets_file.is_file():
        for line in secrets_file.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() == name:
                return value.strip()
    return None


# (URL variable, port variable, default port) of each service's public address and of the
# address of its admin endpoints: the api has a listener of its own for operators; inventory
# and fulfilment, internal services, answer them on their one port.
_PUBLIC = {
    "api": ("API_URL", "API_PORT", 8000),
    "inventory": ("INVENTORY_URL", "INVENTORY_PORT", 8001),
    "fulfilment": ("FULFILMENT_URL", "FULFILMENT_PORT", 8002),
}
_ADMIN = {**_PUBLIC, "api": ("API_ADMIN_URL", "API_ADMIN_PORT", 8010)}


def _url(url_var: str, port_var: str, default_port: int) -> str:
    return os.environ.get(url_var) or f"http://127.0.0.1:{os.environ.get(port_var, default_port)}"


def service_url(service: str) -> str:
    """Where clients reach the service (the api's /v2)."""
    return _url(*_PUBLIC[service])


def admin_url(service: str) -> str:
    """Where the service answers its admin endpoints and /metrics."""
    return _url(*_ADMIN[service])


def operator_name() -> str:
    """Who runs this CLI, as the api's audit records it (X-Operator): the OS user."""
    try:
        name = getpass.getuser()
    except (OSError, KeyError):  # no user name in the environment nor in the password file
        return "unknown"
    return name if name.isascii() and name.isprintable() else "unknown"


class AdminClient:
    """Calls a service's admin API with the admin credential; turns failures into CliError."""

    def __init__(self, service: str, timeout_s: float = 30.0) -> None:
        token = local_secret("ADMIN_TOKEN")
        if not token:
            fail(
                "No admin credential: set ADMIN_TOKEN, or run this CLI from the repository's "
                ".venv after `make up` (it reads .run/secrets.env)."
            )
        self.base = admin_url(service)
        self.service = service
        self._url_var = _ADMIN[service][0]
        self._client = httpx.Client(
            base_url=self.base,
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {token}", "X-Operator": operator_name()},
        )

    def find(self, path: str) -> Any:
        """GET `path`; None when the service says it has no such thing (404 *_NOT_FOUND)."""
        return self.call("GET", path, missing_ok=True)

    def call(self, method: str, path: str, *, missing_ok: bool = False, **kwargs: Any) -> Any:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.HTTPError as exc:
            fail(
                f"Cannot reach the {self.service} service at {self.base} ({type(exc).__name__}). "
                f"Is the stack up? Start it with `make up`, or set {self._url_var}."
            )
        try:
            body = response.json()
        except ValueError:
            body = None
        if (
            missing_ok
            and response.status_code == 404
            and isinstance(body, dict)
            and str(body.get("error", "")).endswith("_NOT_FOUND")
        ):
            return None  # the service answered: it has no such thing (not a wrong URL)
        if response.status_code >= 400:
            if isinstance(body, dict) and "message" in body:
                extra = f" Details: {json.dumps(body['details'])}" if body.get("details") else ""
                fail(
                    f"{self.service} refused ({response.status_code} {body.get('error')}): "
                    f"{body['message']}{extra}"
                )
            fail(f"{self.service} answered HTTP {response.status_code} to {method} {path}.")
        return body.get("data") if isinstance(body, dict) and "data" in body else body
