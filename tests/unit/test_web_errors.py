"""An unexpected error is answered 500 with the request's id, in the body and the
`x-request-id` header, and logged with that same id; a database that cannot be reached is 503
with Retry-After; NUL characters are invalid input."""

import json
import logging

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from services.api.entrypoints.http import CreateInstantOrderIn
from shared.db import database_unavailable
from shared.logs import JsonFormatter
from shared.web import _fields_with_nul, has_escaped_nul, install_common


class Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter("test"))
        self.lines: list[dict[str, object]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(json.loads(self.format(record)))


async def test_a_500_carries_the_request_id_that_its_log_line_has() -> None:
    app = FastAPI()
    install_common(app, "test-service", {})

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("the order's secret text")

    lines = Lines()
    logging.getLogger("test-service").addHandler(lines)
    try:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            response = await client.get("/boom")
    finally:
        logging.getLogger("test-service").removeHandler(lines)

    assert response.status_code == 500
    body = response.json()
    assert body["error"] == "INTERNAL_ERROR"
    assert "secret" not in response.text
    assert body["requestId"] == response.headers["x-request-id"]
    [line] = [
        entry for entry in lines.lines if entry["msg"] == "unexpected error answering a request"
    ]
    assert line["requestId"] == body["requestId"]
    assert line["error"] == "RuntimeError"


@pytest.mark.parametrize("field", ["sku", "clientOrderNumber"])
async def test_a_nul_character_is_invalid_input_before_the_route_reads_it(field: str) -> None:
    app = FastAPI()
    install_common(app, "test-service", {})
    parsed: list[CreateInstantOrderIn] = []

    @app.post("/order")
    async def order(body: CreateInstantOrderIn) -> None:
        parsed.append(body)

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        fields = {"sku": "GIFT-25", field: "GIFT\x0025"}
        response = await client.post("/order", content=json.dumps(fields))

    assert response.status_code == 400
    assert [d["field"] for d in response.json()["details"]] == [field]
    assert parsed == []


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        ConnectionRefusedError(111, "Connect call failed"),
        asyncpg.InternalClientError(
            "cannot switch to state 12; another operation (2) is in progress"
        ),
        TimeoutError(),  # BoundedPool.acquire gave up
    ],
    ids=type,
)
async def test_a_database_that_cannot_be_reached_is_503_with_retry_after(
    error: Exception,
) -> None:
    app = FastAPI()
    install_common(app, "test-service", {})

    @app.get("/read")
    async def read() -> None:
        try:
            raise error
        except Exception as exc:
            raise RuntimeError("wrapped by the service layer") from exc

    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/read")

    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    body = response.json()
    assert body["error"] == "SERVICE_UNAVAILABLE"
    assert body["requestId"] == response.headers["x-request-id"]


def test_a_programming_error_is_not_mistaken_for_an_unreachable_database() -> None:
    assert not database_unavailable(asyncpg.exceptions.UndefinedColumnError("no such column"))
    assert not database_unavailable(asyncpg.InterfaceError("another operation is in progress"))
    assert database_unavailable(asyncpg.InterfaceError("connection is closed"))


def test_an_error_raised_while_handling_a_timeout_is_not_taken_for_the_database() -> None:
    def bug_while_handling(error: Exception) -> KeyError:
        try:
            try:
                raise error
            except type(error):
                raise KeyError("a bug in the handler") from None
        except KeyError as exc:
            return exc
        raise AssertionError("unreachable")

    assert database_unavailable(bug_while_handling(TimeoutError())) is None
    assert database_unavailable(bug_while_handling(ConnectionRefusedError(111, "x"))) is None
    assert database_unavailable(FileNotFoundError("not a database error")) is None


def test_a_nul_deep_in_a_body_nested_too_deep_to_parse_is_refused_as_the_body() -> None:
    deep = b"[" * 5000 + b'"\\u0000"' + b"]" * 5000
    assert has_escaped_nul(deep)
    assert _fields_with_nul(deep) == ["body"]
    assert _fields_with_nul(b'{"a": [{"b": "x\\u0000"}], "ok": "y"}') == ["a.0.b"]
