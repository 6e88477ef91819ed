"""Every /v2 exchange the e2e suite's HTTP clients make, recorded for the strict-client and
OpenAPI-conformance checks (tests/e2e/test_zzz_contract_conformance.py). It wraps
httpx.AsyncClient.send, so every client of the api is covered, whoever built it."""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True)
class Exchange:
    method: str
    path: str
    status: int
    body: Any
    # the account's, as its creation or last change said; CHANGING within the window in
    # which the api may still answer in the format before the change (its credential cache)
    pin_format: str


CHANGING = "changing"
# The api applies a pin-format change within API_AUTH_CACHE_TTL_S (at most 5 s), plus margin.
CHANGE_WINDOW_S = 6.0
EXCHANGES: list[Exchange] = []
_pin_format_of_key: dict[str, str] = {}
_changed_at: dict[str, float] = {}
_key_of_account: dict[str, str] = {}


def _note_admin(request: httpx.Request, response: httpx.Response, body: Any) -> None:
    data = body.get("data") if isinstance(body, dict) else None
    if not isinstance(data, dict) or response.status_code != 200:
        return
    if request.method == "POST" and request.url.path == "/admin/accounts":
        _pin_format_of_key[data["apiKey"]] = data.get("pinFormat", "integer")
        _key_of_account[data["accountId"]] = data["apiKey"]
    elif request.url.path.endswith("/pin-format") and data["accountId"] in _key_of_account:
        key = _key_of_account[data["accountId"]]
        _pin_format_of_key[key] = data["pinFormat"]
        _changed_at[key] = time.monotonic()


def _pin_format(key: str) -> str:
    if time.monotonic() - _changed_at.get(key, float("-inf")) < CHANGE_WINDOW_S:
        return CHANGING
    return _pin_format_of_key.get(key, "integer")


@contextmanager
def recording(api_url: str, api_admin_url: str) -> Iterator[None]:
    original = httpx.AsyncClient.send
    api, admin = httpx.URL(api_url), httpx.URL(api_admin_url)

    async def send(self: httpx.AsyncClient, request: httpx.Request, **kw: Any) -> httpx.Response:
        response = await original(self, request, **kw)
        url = request.url
        if kw.get("stream") or (url.host, url.port) not in {
            (api.host, api.port),
            (admin.host, admin.port),
        }:
            return response
        try:
            body = json.loads(response.content) if response.content else None
        except ValueError:
            body = None
        if url.port == admin.port:
            _note_admin(request, response, body)
        elif url.path.startswith("/v2/"):
            key = request.headers.get("x-api-key", "")
            fmt = _pin_format(key)
            EXCHANGES.append(Exchange(request.method, url.path, response.status_code, body, fmt))
        return response

    httpx.AsyncClient.send = send  # type: ignore[method-assign]
    try:
        yield
    finally:
        httpx.AsyncClient.send = original  # type: ignore[method-assign]
