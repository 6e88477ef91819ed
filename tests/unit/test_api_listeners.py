"""The api's two listeners without the stack: the public app has no admin endpoints and no
/metrics, the operators' app has both and shares the public app's state, and one process
hands each connection to the app of the listener it came in on."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import ValidationError
from starlette.types import Message, Receive, Scope, Send

from services.api.app import create_app, listeners
from shared.runtime import ByListener
from shared.settings import ApiSettings

ACCOUNT = "/admin/accounts/00000000-0000-0000-0000-000000000000"


@pytest.fixture(scope="module")
def public() -> FastAPI:
    return create_app(ApiSettings())


async def client_of(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")


@pytest.fixture
async def public_http(public: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_of(public) as http:
        yield http


@pytest.fixture
async def admin_http(public: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with await client_of(public.state.admin_app) as http:
        yield http


async def test_the_public_app_answers_404_for_admin_endpoints_and_metrics(
    public_http: httpx.AsyncClient,
) -> None:
    for method, path in (("GET", ACCOUNT), ("POST", "/admin/accounts"), ("GET", "/metrics")):
        response = await public_http.request(method, path, headers={"Authorization": "Bearer x"})
        assert response.status_code == 404, (method, path)
        assert response.json()["error"] == "NOT_FOUND"
    assert (await public_http.get("/healthz")).status_code == 200
    paths = (await public_http.get("/openapi.json")).json()["paths"]
    assert paths
    assert all(path.startswith("/v2/") for path in paths)


async def test_the_operators_app_has_the_admin_endpoints_metrics_and_health(
    admin_http: httpx.AsyncClient,
) -> None:
    refused = await admin_http.get(ACCOUNT)
    assert refused.status_code == 401
    assert refused.json()["error"] == "UNAUTHORIZED"
    scraped = await admin_http.get("/metrics")
    assert scraped.status_code == 200
    assert "http_requests_total" in scraped.text
    assert (await admin_http.get("/healthz")).json() == {"status": "alive", "service": "api"}
    assert (await admin_http.get("/v2/balances")).status_code == 404
    assert (await admin_http.get("/openapi.json")).status_code == 404


def test_both_apps_share_one_state(public: FastAPI) -> None:
    assert public.state.admin_app.state is public.state


def test_the_admin_listener_is_on_loopback_and_its_own_port_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("API_PORT", "API_ADMIN_PORT", "API_ADMIN_BIND_HOST"):
        monkeypatch.delenv(name, raising=False)  # `make test` exports the stack's ports
    monkeypatch.setenv("BIND_HOST", "0.0.0.0")  # noqa: S104 - as a container sets it
    served = listeners(ApiSettings())
    assert [(ln.name, ln.host, ln.port, ln.setting) for ln in served] == [
        ("public", "0.0.0.0", 8000, "API_PORT"),  # noqa: S104
        ("admin", "127.0.0.1", 8010, "API_ADMIN_PORT"),
    ]
    assert served[1].app is served[0].app.state.admin_app  # type: ignore[attr-defined]


def test_the_admin_listener_cannot_share_the_public_port(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("API_PORT", "9000")
    monkeypatch.setenv("API_ADMIN_PORT", "9000")
    with pytest.raises(ValidationError, match="API_ADMIN_PORT and API_PORT are both 9000"):
        ApiSettings()


class Recorder:
    """An ASGI app that notes which scopes reached it."""

    def __init__(self) -> None:
        self.scopes: list[Scope] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scopes.append(dict(scope))


async def call(app: ByListener, scope: dict[str, Any]) -> None:
    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    async def send(_: Message) -> None:
        return None

    await app(scope, receive, send)


def http_scope(port: int, *, forwarded: str | None = None) -> dict[str, Any]:
    headers = [(b"x-forwarded-for", forwarded.encode())] if forwarded else []
    return {
        "type": "http",
        "server": ("127.0.0.1", port),
        "client": ("127.0.0.1", 50000),
        "headers": headers,
        "scheme": "http",
    }


async def test_each_connection_goes_to_its_listeners_app() -> None:
    public, admin = Recorder(), Recorder()
    app = ByListener([(8000, public), (8010, admin)])
    await call(app, http_scope(8000))
    await call(app, http_scope(8010))
    await call(app, http_scope(9999))  # a port of no listener: the public app, never admin
    await call(app, {"type": "lifespan"})
    assert [s["type"] for s in public.scopes] == ["http", "http", "lifespan"]
    assert [s["server"][1] for s in admin.scopes] == [8010]


async def test_only_the_public_listener_believes_forwarded_addresses() -> None:
    """uvicorn trusts X-Forwarded-For from loopback; an operator's request is seen from its
    connection's own address, so a client cannot choose who it is throttled or recorded as."""
    public, admin = Recorder(), Recorder()
    app = ByListener([(8000, public), (8010, admin)])
    await call(app, http_scope(8000, forwarded="203.0.113.7"))
    await call(app, http_scope(8010, forwarded="203.0.113.7"))
    assert public.scopes[0]["client"][0] == "203.0.113.7"
    assert admin.scopes[0]["client"] == ("127.0.0.1", 50000)
