"""A hot route (shared.web.HotRoutes) is answered without the router, and exactly as the same
endpoint would be answered through it: the same statuses, bodies and headers for its answers
and its errors, the same request ids and HTTP metrics; other methods on its path still reach
the router."""

import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.middleware.gzip import GZipMiddleware

from services.api.app import create_app
from services.api.entrypoints.http import INSTANT_ORDER_PATH
from shared.metrics import REGISTRY
from shared.settings import ApiSettings
from shared.web import ApiError, HotRoutes, install_common, ok

MAX_BODY = 64
SERVICE = "hot-route-test"


async def endpoint(request: Request) -> Response:
    """Answers, or fails, as the JSON body says."""
    asked = json.loads(await request.body())
    match asked.get("do"):
        case "refuse":
            raise ApiError(409, "CONFLICT", "refused", {"why": "asked"}, {"Retry-After": "3"})
        case "invalid":
            raise RequestValidationError([{"type": "missing", "loc": ("body", "sku"), "msg": "x"}])
        case "crash":
            raise RuntimeError("a bug")
    request.app.state.hot_calls += 1
    return JSONResponse(ok({"echo": asked, "method": request.method}))


def app_with_twin() -> HotRoutes:
    """`/hot` served hot; `/routed` the same endpoint through the router."""
    app = HotRoutes()
    app.state.hot_calls = 0
    install_common(
        app, SERVICE, {}, max_body_bytes=MAX_BODY, hot_routes=[("POST", "/hot", endpoint)]
    )
    app.state.routed = {"/hot": 0, "/routed": 0}  # requests the router gave each path

    async def through_router(request: Request) -> Response:
        app.state.routed[request.url.path] += 1
        return await endpoint(request)

    app.add_api_route("/hot", through_router, methods=["POST", "PUT"])
    app.add_api_route("/routed", through_router, methods=["POST"])
    return app


async def chunks() -> AsyncIterator[bytes]:
    """A body sent chunked (no content-length), larger than MAX_BODY."""
    yield b'{"do": "answer", '
    yield b'"pad": "' + b"x" * MAX_BODY + b'"}'


Request_ = Callable[[], dict[str, Any]]  # the keyword arguments of one request, made afresh


async def post_both(app: HotRoutes, request: Request_) -> tuple[httpx.Response, httpx.Response]:
    """The same request to the hot path, then to its routed twin."""
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/hot", **request()), await client.post("/routed", **request())


def comparable(response: httpx.Response) -> tuple[int, dict[str, Any], dict[str, str]]:
    body = response.json()
    assert body.pop("requestId") == response.headers.pop("x-request-id")
    return response.status_code, body, dict(response.headers)


JSON = {"content-type": "application/json"}


@pytest.mark.parametrize(
    "request_",
    [
        lambda: {"json": {"do": "answer"}},
        lambda: {"json": {"do": "refuse"}},
        lambda: {"json": {"do": "invalid"}},
        lambda: {"json": {"do": "crash"}},
        lambda: {"content": json.dumps({"do": "answer", "pad": "x" * MAX_BODY}), "headers": JSON},
        lambda: {"content": chunks(), "headers": JSON},
        lambda: {"content": b'{"do": "answer", "sku": "A\\u0000"}', "headers": JSON},
        lambda: {"json": {"do": "answer"}, "headers": {"content-type": "text/plain"}},
    ],
    ids=["ok", "api-error", "invalid", "crash", "too-large", "too-large-chunked", "nul", "415"],
)
async def test_a_hot_route_answers_as_the_router_would(request_: Request_) -> None:
    app = app_with_twin()
    hot, routed = await post_both(app, request_)
    assert comparable(hot) == comparable(routed)
    assert app.state.routed["/hot"] == 0


async def test_a_hot_route_is_counted_under_its_path_and_answered_without_the_router() -> None:
    def served() -> float:
        labels = {"service": SERVICE, "route": "/hot", "method": "POST", "status": "200"}
        return REGISTRY.get_sample_value("http_requests_total", labels) or 0.0

    app = app_with_twin()
    before = served()
    hot, _ = await post_both(app, lambda: {"json": {"do": "answer"}})
    assert hot.status_code == 200
    assert hot.json()["data"] == {"echo": {"do": "answer"}, "method": "POST"}
    assert app.state.hot_calls == 2  # once hot, once routed
    assert served() == before + 1


async def test_other_methods_on_a_hot_path_go_to_the_router() -> None:
    app = app_with_twin()
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        put = await client.put("/hot", json={"do": "answer"})
        get = await client.get("/hot")
    assert put.status_code == 200
    assert app.state.routed["/hot"] == 1
    assert (get.status_code, get.json()["error"]) == (405, "METHOD_NOT_ALLOWED")


def test_a_middleware_that_would_not_wrap_the_hot_routes_is_refused() -> None:
    app = app_with_twin()
    with pytest.raises(TypeError, match="would not wrap the hot routes"):
        app.add_middleware(GZipMiddleware)


def test_the_api_serves_the_instant_order_path_hot_and_declares_it() -> None:
    app = create_app(ApiSettings())
    assert isinstance(app, HotRoutes)
    assert ("POST", INSTANT_ORDER_PATH) in app.hot
    assert "post" in app.openapi()["paths"][INSTANT_ORDER_PATH]
