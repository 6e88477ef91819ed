"""Inventory's admin HTTP API on fakes: authentication, bounds, shapes, errors."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pydantic import SecretStr

from services.inventory.entrypoints import admin
from services.inventory.service_layer import catalog
from shared.web import AdminGuard, install_common
from tests.inventory_contract import VAULT, OldCode
from tests.inventory_fakes import FakeStockRoom, FakeStore

TOKEN = "test-admin-token-0123456789"
PRODUCT = {"name": "Gift card 10", "currency": "USD", "price": "10.00", "brand": "Acme"}


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
async def http(store: FakeStore) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.state.admin = admin.AdminContext(store.uow, VAULT)
    app.state.admin_guard = AdminGuard("inventory-test", SecretStr(TOKEN))
    install_common(app, "inventory-test", {}, max_body_bytes=admin.MAX_BODY_BYTES)
    app.include_router(admin.router)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://inventory",
        headers={"Authorization": f"Bearer {TOKEN}"},
    ) as client:
        yield client


async def put(http: httpx.AsyncClient, path_sku: str, **fields: Any) -> httpx.Response:
    return await http.put(f"/admin/products/{path_sku}", json={**PRODUCT, **fields})


def error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) >= {"requestId", "error", "message"}
    code: str = body["error"]
    return code


async def test_admin_endpoints_need_the_admin_token(http: httpx.AsyncClient) -> None:
    for headers in ({"Authorization": "Bearer wrong"}, {"Authorization": ""}):
        response = await http.get("/admin/products", headers=headers)
        assert error(response, 401) == "UNAUTHORIZED"


async def test_put_stores_the_record_with_a_new_version(http: httpx.AsyncClient) -> None:
    created = await put(http, "SKU-1", types=["gaming"], descriptions=["Top up"])
    updated = await put(http, "SKU-1", price="9.50", sku="SKU-1")
    assert created.status_code == 200, created.text
    assert created.json()["data"]["version"] == 1
    data = updated.json()["data"]
    assert (data["sku"], data["version"], data["price"], data["brand"]) == (
        "SKU-1",
        2,
        "9.50",
        "Acme",
    )
    assert data["types"] == []  # PUT replaces the whole record
    assert data["isInstantDeliverySupported"] is True


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"price": "0"}, "price"),
        ({"price": "1.005"}, "price"),
        ({"currency": "usd"}, "currency"),
        ({"name": ""}, "name"),
        ({"name": "x" * 201}, "name"),
        ({"descriptions": ["x"] * 51}, "descriptions"),
        ({"version": 7}, "version"),
        ({"format": "X"}, "format"),
    ],
)
async def test_put_refuses_invalid_records(
    http: httpx.AsyncClient, fields: dict[str, Any], field: str
) -> None:
    response = await put(http, "SKU-1", **fields)
    assert error(response, 400) == "INVALID_REQUEST"
    assert [d["field"] for d in response.json()["details"]] == [field]


async def test_put_refuses_another_sku_in_the_body(http: httpx.AsyncClient) -> None:
    assert error(await put(http, "SKU-1", sku="SKU-2"), 400) == "SKU_MISMATCH"
    assert error(await put(http, "x" * 65), 400) == "INVALID_REQUEST"


async def test_get_and_list_show_stock_counts(http: httpx.AsyncClient) -> None:
    await put(http, "SKU-B")
    await put(http, "SKU-A")
    await http.post("/admin/products/SKU-B/stock", json={"generate": 3})

    one = (await http.get("/admin/products/SKU-B")).json()["data"]
    assert (one["sku"], one["stock"]) == ("SKU-B", {"available": 3, "sold": 0})
    listed = (await http.get("/admin/products", params={"limit": 1, "page": 2})).json()["data"]
    assert (listed["total"], listed["totalPage"], listed["pageSize"]) == (2, 2, 1)
    assert [(p["sku"], p["stock"]["available"]) for p in listed["items"]] == [("SKU-B", 3)]
    assert error(await http.get("/admin/products", params={"limit": 1001}), 400)
    assert error(await http.get("/admin/products/NOPE"), 404) == "PRODUCT_NOT_FOUND"


async def test_withdraw_deactivates_and_bumps_the_version(http: httpx.AsyncClient) -> None:
    await put(http, "SKU-1")
    withdrawn = (await http.post("/admin/products/SKU-1/withdraw")).json()["data"]
    assert (withdrawn["active"], withdrawn["version"]) == (False, 2)
    assert error(await http.post("/admin/products/NOPE/withdraw"), 404) == "PRODUCT_NOT_FOUND"


async def test_stock_counts_added_and_skipped(http: httpx.AsyncClient, store: FakeStore) -> None:
    await put(http, "SKU-1", pinKind="string")
    codes = [
        {"redeemCode": "AAAA-1", "pinCode": "0123"},
        {"redeemCode": "AAAA-2", "pinCode": None},
        {"redeemCode": "AAAA-1", "pinCode": "0123"},
        {"redeemCode": "AAAA-3"},
    ]
    response = await http.post("/admin/products/SKU-1/stock", json={"codes": codes})
    assert response.status_code == 200, response.text
    assert response.json()["data"] == {"sku": "SKU-1", "added": 3, "skipped": 1, "available": 3}
    again = await http.post("/admin/products/SKU-1/stock", json={"codes": codes[:1]})
    assert again.json()["data"] == {"sku": "SKU-1", "added": 0, "skipped": 1, "available": 3}
    pins = sorted(
        str(VAULT.open(row.sealed, "SKU-1", row.id).pin_code) for row in store.state.codes.values()
    )
    assert pins == ["0123", "None", "None"]


async def test_stock_for_an_unknown_sku_is_404(http: httpx.AsyncClient) -> None:
    response = await http.post("/admin/products/NOPE/stock", json={"generate": 1})
    assert error(response, 404) == "PRODUCT_NOT_FOUND"


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"generate": 1, "codes": [{"redeemCode": "A"}]},
        {"generate": 0},
        {"generate": 5001},
        {"codes": []},
        {"codes": [{"redeemCode": f"C-{i}"} for i in range(5001)]},
        {"codes": [{"redeemCode": ""}]},
        {"codes": [{"redeemCode": "A" * 257}]},
        {"codes": [{"redeemCode": " padded "}]},
        {"codes": [{"redeemCode": "tab\there"}]},
        {"codes": [{"redeemCode": "A", "pinCode": "1" * 65}]},
        {"codes": [{"redeemCode": "A", "pinCode": 123}]},
        {"codes": [{"redeemCode": "A", "extra": 1}]},
    ],
)
async def test_stock_bodies_are_bounded(http: httpx.AsyncClient, body: dict[str, Any]) -> None:
    await put(http, "SKU-1")
    response = await http.post("/admin/products/SKU-1/stock", json=body)
    assert error(response, 400) == "INVALID_REQUEST"
    assert "A" * 257 not in response.text
    assert "padded" not in response.text


async def test_five_thousand_longest_codes_fit_in_one_request(http: httpx.AsyncClient) -> None:
    await put(http, "SKU-1", pinKind="string")
    codes = [{"redeemCode": f"{i:06d}" + "X" * 250, "pinCode": "9" * 64} for i in range(5000)]
    response = await http.post("/admin/products/SKU-1/stock", json={"codes": codes})
    assert response.status_code == 200, response.text[:300]
    assert response.json()["data"]["added"] == 5000


@pytest.mark.parametrize(
    ("code", "field"),
    [
        ({"redeemCode": "GIFT-\u200b1234"}, "redeemCode"),
        ({"redeemCode": "GIFT-\ufeff1234"}, "redeemCode"),
        ({"redeemCode": "GIFT-1234", "pinCode": "12\u200d34"}, "pinCode"),
        ({"redeemCode": "GIFT-\u00851234"}, "redeemCode"),
    ],
)
async def test_invisible_characters_in_a_code_are_refused_naming_the_field(
    http: httpx.AsyncClient, code: dict[str, str], field: str
) -> None:
    await put(http, "SKU-1")
    response = await http.post(
        "/admin/products/SKU-1/stock", json={"codes": [{"redeemCode": "FINE-1"}, code]}
    )
    assert error(response, 400) == "INVALID_REQUEST"
    [detail] = response.json()["details"]
    assert detail["field"] == "codes.1"
    assert f"{field} holds" in detail["issue"]
    assert "remove it" in detail["issue"]
    assert "GIFT" not in response.text


async def test_stock_waits_for_the_re_fingerprinting_of_codes_stocked_earlier(
    http: httpx.AsyncClient, store: FakeStore
) -> None:
    await put(http, "SKU-1")
    await FakeStockRoom(store).stock_the_old_way("SKU-1", [OldCode("OLD-1"), OldCode("OLD-2")])

    response = await http.post("/admin/products/SKU-1/stock", json={"generate": 1})

    assert error(response, 503) == "STOCK_BEING_REFINGERPRINTED"
    assert response.headers["Retry-After"] == "30"
    assert "again in a minute" in response.json()["message"]
    await catalog.refingerprint_stock(store.uow, VAULT)
    again = await http.post(
        "/admin/products/SKU-1/stock", json={"codes": [{"redeemCode": "old-2"}]}
    )
    assert again.json()["data"]["skipped"] == 1
