"""The api's audit of admin actions on the running stack: an admin action, and a refused one,
each leave a row in the api's database before the answer reaches the client, with the
declared operator, the client's address, the route and the path's ids, and no secret."""

import json
import os
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.conftest import Stack
from tests.helpers import loopback_address_of_its_own, unique

pytestmark = pytest.mark.e2e


async def audit_row(stack: Stack, request_id: str) -> dict[str, Any]:
    conn = await asyncpg.connect(stack.api_db_url)
    try:
        row = await conn.fetchrow("SELECT * FROM admin_audit WHERE request_id = $1", request_id)
    finally:
        await conn.close()
    assert row is not None, f"no audit row for request {request_id}"
    found = dict(row)
    found["ids"] = json.loads(found["ids"])  # a plain connection reads jsonb as text
    return found


async def test_an_admin_action_leaves_an_audit_row_without_any_secret(
    urls: Stack, api_admin: httpx.AsyncClient
) -> None:
    created_id = unique("audit-create")
    created = await api_admin.post(
        "/admin/accounts",
        json={"name": unique("audited"), "balances": [{"currency": "USD", "amount": "5.00"}]},
        headers={"X-Operator": "e2e-operator", "x-request-id": created_id},
    )
    assert created.status_code == 200, created.text
    account = created.json()["data"]
    credit_id = unique("audit-credit")
    credited = await api_admin.post(
        f"/admin/accounts/{account['accountId']}/credit",
        json={"amount": "1.00", "currency": "USD"},
        headers={
            "X-Operator": "e2e-operator",
            "x-request-id": credit_id,
            "Idempotency-Key": credit_id,
        },
    )
    assert credited.status_code == 200, credited.text

    # Read at once: the row is written before the answer goes out.
    row = await audit_row(urls, created_id)
    assert {k: row[k] for k in ("operator", "client", "method", "route", "ids", "status")} == {
        "operator": "e2e-operator",
        "client": "127.0.0.1",
        "method": "POST",
        "route": "/admin/accounts",
        "ids": {},
        "status": 200,
    }
    credit = await audit_row(urls, credit_id)
    assert credit["route"] == "/admin/accounts/{account_id}/credit"
    assert credit["ids"] == {"account_id": account["accountId"]}
    assert uuid.UUID(credit["ids"]["account_id"])
    text = repr([row, credit])
    for secret in (account["apiKey"], account["accessToken"], os.environ["ADMIN_TOKEN"]):
        assert secret not in text


async def test_a_refused_admin_action_is_recorded_too(urls: Stack) -> None:
    address, request_id, wrong = (
        loopback_address_of_its_own(),
        unique("audit-refused"),
        unique("wrong-token"),
    )
    async with httpx.AsyncClient(
        transport=httpx.AsyncHTTPTransport(local_address=address),
        base_url=str(urls.api_admin_url),
        timeout=10,
    ) as http:
        refused = await http.post(
            "/admin/accounts/00000000-0000-0000-0000-000000000000/rotate-token",
            headers={"Authorization": f"Bearer {wrong}", "x-request-id": request_id},
        )
    assert refused.status_code == 401
    row = await audit_row(urls, request_id)
    assert (row["operator"], row["client"], row["status"]) == ("unknown", address, 401)
    assert row["route"] == "/admin/accounts/{account_id}/rotate-token"
    assert wrong not in repr(row)
