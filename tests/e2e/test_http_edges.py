"""The HTTP perimeter against the running api: bodies over the limit are 413 however they are
sent, non-JSON bodies are 415, a 405 says what is allowed, no redirect is built from the Host
header, unreadable JSON is our INVALID_REQUEST, doubled credentials are 401, a NUL anywhere
(PostgreSQL refuses it in text) is invalid input, and a request the HTTP parser cannot read
gets our JSON error body too."""

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.conftest import Stack
from tests.e2e.conftest import NewClient, NewProduct
from tests.helpers import unique

LIMIT = 16 * 1024  # API_MAX_BODY_BYTES' default


async def test_a_chunked_body_over_the_limit_is_413_as_with_a_content_length(
    new_client: NewClient,
) -> None:
    client = await new_client()
    big = b'{"sku": "' + b"A" * (LIMIT + 100) + b'"}'

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 4096):
            yield big[start : start + 4096]

    headers = {"content-type": "application/json"}
    chunked = await client.http.post("/v2/orders/instant", content=chunks(), headers=headers)
    sized = await client.http.post("/v2/orders/instant", content=big, headers=headers)
    assert "content-length" not in chunked.request.headers
    assert (chunked.status_code, chunked.json()["error"]) == (413, "PAYLOAD_TOO_LARGE")
    assert (sized.status_code, sized.json()["error"]) == (413, "PAYLOAD_TOO_LARGE")


@pytest.mark.parametrize(
    "headers",
    [
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {"content-type": "application/json", "content-encoding": "gzip"},
    ],
    ids=["text", "form", "gzip"],
)
async def test_a_body_that_is_not_plain_json_is_415(
    new_client: NewClient, new_product: NewProduct, headers: dict[str, str]
) -> None:
    sku = await new_product(price="1.00", stock=1)
    client = await new_client()
    response = await client.http.post(
        "/v2/orders/instant", content=f'{{"sku": "{sku}"}}', headers=headers
    )
    assert (response.status_code, response.json()["error"]) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert await client.balance() == 1000  # nothing charged


async def test_a_405_carries_allow_and_a_trailing_slash_is_404_without_redirect(
    new_client: NewClient,
) -> None:
    client = await new_client()
    wrong_method = await client.http.put("/v2/balances")
    assert wrong_method.status_code == 405
    assert wrong_method.headers["allow"] == "GET"
    assert wrong_method.json()["error"] == "METHOD_NOT_ALLOWED"

    slashed = await client.http.get("/v2/orders/", headers={"host": "evil.example"})
    assert slashed.status_code == 404
    assert "location" not in slashed.headers


@pytest.mark.parametrize(
    "body",
    [
        b'{"sku": ' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"sku": "X", "enableClientOrderNumberDupCheck": ' + b"9" * 5000 + b"}",
        b'{"sku": "\xff\xfe"}',
    ],
    ids=["deep", "giant-integer", "invalid-utf8"],
)
async def test_unreadable_json_is_our_invalid_request(new_client: NewClient, body: bytes) -> None:
    client = await new_client()
    response = await client.http.post(
        "/v2/orders/instant", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_REQUEST"
    assert response.json()["details"]


# Arabic-Indic and fullwidth digits, which Python's int() and \d accept.
@pytest.mark.parametrize("stock_ids", ["\u0662\u0667", "\uff12\uff17", "27,\u0663"])
async def test_non_ascii_digits_are_not_stock_ids(new_client: NewClient, stock_ids: str) -> None:
    client = await new_client()
    response = await client.http.get(
        "/v2/orders/00000000-0000-0000-0000-000000000000/codes", params={"stockIds": stock_ids}
    )
    assert response.status_code == 400
    assert response.json()["error"] == "INVALID_REQUEST"


@pytest.mark.parametrize("doubled", ["x-api-key", "authorization"])
async def test_a_doubled_credential_header_is_401(
    new_client: NewClient, stack: Stack, doubled: str
) -> None:
    client = await new_client()
    headers = list(client.http.headers.multi_items())
    headers.append((doubled, dict(client.http.headers)[doubled]))
    async with httpx.AsyncClient(base_url=str(stack.api_url)) as raw:
        response = await raw.get("/v2/balances", headers=headers)
    assert response.status_code == 401
    assert response.json()["error"] == "UNAUTHORIZED"


@pytest.mark.parametrize(
    ("method", "path", "params", "field"),
    [
        ("GET", "/v2/orders/abc%00def", None, "path"),
        ("GET", "/v2/orders/abc%00def/codes", None, "path"),
        ("GET", "/v2/orders", {"transactionId": "abc\x00"}, "query"),
        ("GET", "/v2/orders", {"clientOrderNumber": "n\x00"}, "query"),
        ("GET", "/v2/products", {"sku": "GIFT\x0025"}, "query"),
    ],
)
async def test_a_nul_anywhere_in_the_url_is_400_with_details(
    new_client: NewClient, method: str, path: str, params: dict[str, str] | None, field: str
) -> None:
    client = await new_client()
    response = await client.http.request(method, path, params=params)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"] == "INVALID_REQUEST"
    assert body["details"][0]["field"] == field


async def test_a_nul_in_any_json_body_is_400_and_an_escaped_backslash_is_not(
    api_admin: httpx.AsyncClient,
) -> None:
    nul = await api_admin.post(
        "/admin/accounts",
        content=b'{"name": "acct\\u0000x", "balances": []}',
        headers={"content-type": "application/json"},
    )
    assert nul.status_code == 400, nul.text
    assert nul.json()["details"] == [
        {"field": "name", "issue": "NUL characters are not allowed in any text: remove them."}
    ]
    backslash = await api_admin.post(
        "/admin/accounts",
        content=b'{"name": "acct\\\\u0000x-' + unique("n").encode() + b'", "balances": []}',
        headers={"content-type": "application/json"},
    )
    assert backslash.status_code == 200, backslash.text


async def test_a_request_the_server_cannot_parse_gets_our_json_error(stack: Stack) -> None:
    assert stack.api_url is not None
    url = httpx.URL(str(stack.api_url))
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(b"GET /v2/balances HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=10)
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    assert lines[0] == "HTTP/1.1 400 Bad Request"
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert (error["error"], error["requestId"]) == ("INVALID_REQUEST", headers["x-request-id"])
