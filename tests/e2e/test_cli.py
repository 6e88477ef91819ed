"""The operator CLI against the running stack: what it reports done is done."""

import asyncio
import getpass
import json
import os
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Stack
from tests.helpers import unique

pytestmark = pytest.mark.e2e
CLI = [sys.executable, "-m", "shared.cli.main"]


async def cli(*args: str, expect_ok: bool = True) -> tuple[Any, str]:
    """Run `instant-orders ARGS`; returns (JSON from stdout or None, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ.copy(),
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if expect_ok:
        assert proc.returncode == 0, err.decode()
    else:
        assert proc.returncode == 1, (out.decode(), err.decode())
    return (json.loads(out) if out.strip() else None), err.decode()


def as_client(stack: Stack, account: dict[str, str]) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=str(stack.api_url),
        headers={
            "x-api-key": account["apiKey"],
            "Authorization": f"Bearer {account['accessToken']}",
        },
    )


async def test_provisioned_with_the_cli_an_order_completes_at_once(
    stack: Stack, tmp_path: Path
) -> None:
    if stack.api_url is None:
        pytest.skip("needs the running services: run `make test`")
    sku = unique("CLI")
    account, _ = await cli("accounts", "create", "--name", "CLI buyer", "--balance", "USD=5.00")
    product, _ = await cli(
        "products",
        "upsert",
        "--sku",
        sku,
        "--name",
        "CLI card",
        "--price",
        "4.50",
        "--currency",
        "USD",
    )
    assert product["version"] >= 1
    codes = tmp_path / "codes.csv"
    codes.write_text(f"redeemCode,pinCode\n{unique('R')},7007\n{unique('R')},\n")
    stocked, progress = await cli("stock", "add", "--sku", sku, "--file", str(codes))
    assert (stocked["added"], stocked["skipped"]) == (2, 0)
    again, _ = await cli("stock", "add", "--sku", sku, "--file", str(codes))
    assert (again["added"], again["skipped"]) == (0, 2)
    assert "codes sent" in progress

    async with as_client(stack, account) as client:
        # Orderable the moment `products upsert` and `stock add` returned: no waiting here.
        first = await client.post("/v2/orders/instant", json={"sku": sku})
        assert first.json()["data"]["status"] == "COMPLETED", first.text
        refused = await client.post("/v2/orders/instant", json={"sku": sku})
        assert refused.json()["error"] == "INSUFFICIENT_BALANCE"

        credited, _ = await cli(
            "accounts", "credit", account["accountId"], "--amount", "10.00", "--currency", "USD"
        )
        assert credited["balances"] == [{"balance": "10.50", "currency": "USD"}]
        second = await client.post("/v2/orders/instant", json={"sku": sku})
        assert second.json()["data"]["status"] == "COMPLETED", second.text
        balance = (await client.get("/v2/balances")).json()["data"][0]["balance"]
        assert Decimal(balance) == Decimal("6.00")

        rotated, _ = await cli("accounts", "rotate-token", account["accountId"])
        fresh = {"Authorization": f"Bearer {rotated['accessToken']}"}
        assert (await client.get("/v2/balances", headers=fresh)).status_code == 200


async def test_a_credit_retried_with_its_printed_key_is_applied_once(stack: Stack) -> None:
    account, _ = await cli("accounts", "create", "--name", "CLI credited")
    args = ("accounts", "credit", account["accountId"], "--amount", "7.00", "--currency", "USD")

    first, said = await cli(*args)

    [key] = [word for word in said.split() if word.startswith("cli-")][:1]
    assert f"--idempotency-key {key}" in said
    again, said_again = await cli(*args, "--idempotency-key", key)
    assert (first["replayed"], again["replayed"]) == (False, True)
    assert "nothing was added" in said_again
    assert again["balances"] == [{"balance": "7.00", "currency": "USD"}]
    _, refused = await cli(
        "accounts", "credit", account["accountId"], "--amount", "8.00", "--currency", "USD",
        "--idempotency-key", key, expect_ok=False,
    )  # fmt: skip
    assert "IDEMPOTENCY_KEY_REUSED" in refused
    assert "7.00 USD" in refused


async def test_operators_revoke_tokens_and_disable_accounts_with_the_cli(stack: Stack) -> None:
    account, _ = await cli("accounts", "create", "--name", "CLI revoked")
    account_id = account["accountId"]

    revoked, said = await cli("accounts", "revoke-token", account_id)
    assert revoked["tokensRevoked"] == 1
    assert "within" in said
    disabled, _ = await cli("accounts", "disable", account_id)
    shown, _ = await cli("accounts", "show", account_id)
    assert shown["disabledAt"] == disabled["disabledAt"] is not None
    enabled, _ = await cli("accounts", "enable", account_id)
    assert enabled["disabledAt"] is None
    shown, _ = await cli("accounts", "show", account_id)
    assert shown["disabledAt"] is None


async def test_cli_errors_say_what_to_do(stack: Stack) -> None:
    _, err = await cli(
        "accounts",
        "credit",
        "00000000-0000-0000-0000-000000000000",
        "--amount",
        "1.00",
        "--currency",
        "USD",
        expect_ok=False,
    )
    assert "error:" in err
    assert "ACCOUNT_NOT_FOUND" in err
    assert "Traceback" not in err
    _, err = await cli("accounts", "create", "--name", "x", "--balance", "USD=abc", expect_ok=False)
    assert "100.00" in err  # shows the expected form
    _, err = await cli("stock", "add", "--sku", unique("NOPE"), "--generate", "1", expect_ok=False)
    assert "PRODUCT_NOT_FOUND" in err


async def test_the_cli_reaches_the_api_through_its_admin_listener(
    stack: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    if stack.api_admin_url is None:
        pytest.skip("needs the running services: run `make test`")
    # The public address is not the one operators use: point it nowhere.
    monkeypatch.setenv("API_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("API_PORT", "9")
    name = unique("via-admin-port")
    account, _ = await cli("accounts", "create", "--name", name)
    shown, _ = await cli("accounts", "show", account["accountId"])
    assert shown["name"] == name


async def test_the_cli_names_its_operator_in_the_audit_and_lists_it(stack: Stack) -> None:
    if stack.api_admin_url is None:
        pytest.skip("needs the running services: run `make test`")
    account, _ = await cli("accounts", "create", "--name", unique("audited-by-cli"))
    await cli("accounts", "rotate-token", account["accountId"], "--grace-seconds", "0")
    listed, _ = await cli("audit", "list", "--limit", "20")
    rotations = [
        item
        for item in listed
        if item["route"] == "/admin/accounts/{account_id}/rotate-token"
        and item["ids"] == {"account_id": account["accountId"]}
    ]
    assert len(rotations) == 1, listed
    assert rotations[0]["operator"] == getpass.getuser()
    assert (rotations[0]["method"], rotations[0]["status"]) == ("POST", 200)
    assert [item["at"] for item in listed] == sorted((item["at"] for item in listed), reverse=True)
    assert account["accessToken"] not in json.dumps(listed)


async def test_without_a_reachable_stack_the_cli_says_how_to_start_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("API_ADMIN_URL", "http://127.0.0.1:9")
    _, err = await cli("accounts", "show", "00000000-0000-0000-0000-000000000000", expect_ok=False)
    assert "make up" in err
    assert "API_ADMIN_URL" in err
    assert "Traceback" not in err


async def test_the_demo_account_can_buy_the_demo_cards_and_read_their_pins(stack: Stack) -> None:
    # What `make up` seeds and prints: its curl must work for a client that knows nothing.
    seeded, _ = await cli("demo", "seed")
    async with as_client(stack, seeded) as client:
        bought = await client.post("/v2/orders/instant", json={"sku": seeded["products"][0]})
        assert bought.status_code == 200, bought.text
        order = bought.json()["data"]
        if order["status"] == "COMPLETED":  # earlier seeds may have sold the demo stock
            codes = await client.get(f"/v2/orders/{order['transactionId']}/codes")
            assert isinstance(codes.json()["data"][0]["codes"][0]["pinCode"], int), codes.text
