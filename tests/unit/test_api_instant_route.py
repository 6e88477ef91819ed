"""The instant order route hands the order desk the moment its request came in, so that the
decision window counts from there (the desk's own bound is in test_api_handlers.py)."""

import json
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.requests import Request

from services.api.domain.model import CreateInstantOrder, InsufficientBalance
from services.api.entrypoints import http
from shared.web import ApiError


async def test_the_route_passes_when_the_request_came_in(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Desk:
        full = False

        async def place_instant(self, cmd: CreateInstantOrder, received: float) -> None:
            seen["received"], seen["called"] = received, time.monotonic()
            raise InsufficientBalance("USD")  # ends the request: only the call matters here

    async def caller(*_: Any) -> SimpleNamespace:
        return SimpleNamespace(account_id=uuid.uuid4(), pin_format="string")

    monkeypatch.setattr(http, "authenticate_caller", caller)
    body = json.dumps({"sku": "SKU-1"}).encode()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    app = SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(order_desk=Desk())))
    scope = {
        "type": "http",
        "method": "POST",
        "path": http.INSTANT_ORDER_PATH,
        "headers": [(b"x-api-key", b"key"), (b"authorization", b"Bearer token")],
        "app": app,
    }
    before = time.monotonic()

    with pytest.raises(ApiError):
        await http.create_instant_order(Request(scope, receive))

    assert before <= seen["received"] <= seen["called"]


async def test_a_full_desk_refuses_before_the_body_is_read_or_the_caller_authenticated(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Under overload most requests are refused: a refusal must not cost a body parse and an
    authentication. A request that is neither valid nor authenticated gets the 503 too."""

    class FullDesk:
        full = True

        async def place_instant(self, cmd: CreateInstantOrder, received: float) -> None:
            raise AssertionError("a full desk is not asked to place the order")

    async def caller(*_: Any) -> SimpleNamespace:
        raise AssertionError("nobody is authenticated for a refusal")

    async def receive() -> dict[str, Any]:
        raise AssertionError("the body of a refused request is not read")

    monkeypatch.setattr(http, "authenticate_caller", caller)
    app = SimpleNamespace(state=SimpleNamespace(services=SimpleNamespace(order_desk=FullDesk())))
    scope = {
        "type": "http",
        "method": "POST",
        "path": http.INSTANT_ORDER_PATH,
        "headers": [],
        "app": app,
    }
    shed_before = REGISTRY.get_sample_value("orders_shed_total", {"reason": "in_flight"}) or 0

    with pytest.raises(ApiError) as refused:
        await http.create_instant_order(Request(scope, receive))

    assert (refused.value.status, refused.value.error) == (503, "SERVICE_UNAVAILABLE")
    assert refused.value.headers == {"Retry-After": "1"}
    assert "nothing was charged" in refused.value.message
    shed_after = REGISTRY.get_sample_value("orders_shed_total", {"reason": "in_flight"})
    assert shed_after == shed_before + 1
