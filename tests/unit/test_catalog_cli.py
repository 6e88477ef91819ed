"""`instant-orders products ...` and `stock add` against fake inventory and api services."""

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.cli import catalog
from shared.cli.main import main
from shared.contracts import ProductSnapshot

_REAL_CLIENT = httpx.Client


class FakeServices:
    """Inventory's admin API, and an api whose read model lags `lag` polls behind."""

    def __init__(self, lag: int = 2) -> None:
        self.products: dict[str, dict[str, Any]] = {}
        self.api_polls: dict[str, int] = {}
        self.lag = lag
        self.stock_requests: list[dict[str, Any]] = []
        self.stocked: set[str] = set()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.headers.get("authorization") != "Bearer cli-test-token":
            return httpx.Response(401, json={"error": "UNAUTHORIZED", "message": "no"})
        path = request.url.path
        if request.url.host == "api.test":
            return self._api(path)
        if path == "/admin/products" and request.method == "GET":
            items = [{**p, "stock": {"available": 0, "sold": 0}} for p in self.products.values()]
            return self._ok({"items": items, "totalPage": 1})
        sku = path.split("/")[3]
        if request.method == "PUT":
            body = json.loads(request.content)
            if body.get("name") == "refuse me":
                return httpx.Response(
                    400, json={"error": "INVALID_REQUEST", "message": "refused", "details": []}
                )
            version = self.products.get(sku, {}).get("version", 0) + 1
            self.products[sku] = {**body, "sku": sku, "version": version}
            return self._ok(self.products[sku])
        if sku not in self.products:
            return httpx.Response(404, json={"error": "PRODUCT_NOT_FOUND", "message": "unknown"})
        if path.endswith("/withdraw"):
            product = self.products[sku]
            product.update(active=False, version=product["version"] + 1)
            return self._ok(product)
        if path.endswith("/stock"):
            body = json.loads(request.content)
            self.stock_requests.append(body)
            codes = [c["redeemCode"] for c in body.get("codes", [])] or [
                f"gen-{len(self.stocked) + i}" for i in range(body.get("generate", 0))
            ]
            added = len(set(codes) - self.stocked)
            self.stocked |= set(codes)
            return self._ok(
                {
                    "sku": sku,
                    "added": added,
                    "skipped": len(codes) - added,
                    "available": len(self.stocked),
                }
            )
        return self._ok({**self.products[sku], "stock": {"available": 0, "sold": 0}})

    def _api(self, path: str) -> httpx.Response:
        sku = path.split("/")[3]
        self.api_polls[sku] = self.api_polls.get(sku, 0) + 1
        if sku not in self.products or self.api_polls[sku] <= self.lag:
            return httpx.Response(404, json={"error": "PRODUCT_NOT_FOUND", "message": "unknown"})
        return self._ok({"sku": sku, "version": self.products[sku]["version"]})

    @staticmethod
    def _ok(data: Any) -> httpx.Response:
        return httpx.Response(200, json={"requestId": "r", "data": data})


@pytest.fixture
def services(monkeypatch: pytest.MonkeyPatch) -> FakeServices:
    fake = FakeServices()
    monkeypatch.setenv("ADMIN_TOKEN", "cli-test-token")
    monkeypatch.setenv("INVENTORY_URL", "http://inventory.test")
    monkeypatch.setenv("API_ADMIN_URL", "http://api.test")  # the api's operators' listener
    monkeypatch.setattr(catalog, "_POLL_INTERVAL_S", 0.001)

    def client(**kwargs: Any) -> httpx.Client:
        return _REAL_CLIENT(transport=httpx.MockTransport(fake), **kwargs)

    monkeypatch.setattr(httpx, "Client", client)  # the CLI's AdminClient builds one
    return fake


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, json.loads(out) if out.strip() else None, err


def test_upsert_waits_for_the_api_and_keeps_fields_not_given(
    services: FakeServices, capsys: pytest.CaptureFixture[str]
) -> None:
    status, created, _ = run(
        capsys, "products", "upsert", "--sku", "S1", "--name", "Card", "--price", "9.75",
        "--currency", "USD", "--brand", "Acme", "--no-instant", "--type", "gaming",
    )  # fmt: skip
    assert status == 0
    assert (created["version"], created["brand"], created["price"]) == (1, "Acme", "9.75")
    assert created["isInstantDeliverySupported"] is False
    assert services.api_polls["S1"] == services.lag + 1

    status, updated, _ = run(
        capsys, "products", "upsert", "--sku", "S1", "--name", "Card 2", "--price", "8",
        "--currency", "USD",
    )  # fmt: skip
    assert status == 0
    assert (updated["version"], updated["name"], updated["brand"]) == (2, "Card 2", "Acme")
    assert (updated["types"], updated["isInstantDeliverySupported"]) == (["gaming"], False)


def test_a_change_the_api_does_not_show_in_time_is_an_error(
    services: FakeServices, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    services.lag = 10**9
    monkeypatch.setattr(catalog, "API_VISIBILITY_DEADLINE_S", 0.05)
    status, _, err = run(
        capsys, "products", "upsert", "--sku", "S1", "--name", "Card", "--price", "1",
        "--currency", "USD",
    )  # fmt: skip
    assert status == 1
    assert "did not show it within" in err
    assert "S1 v1" in err


def test_an_invalid_product_is_refused_before_any_request(
    services: FakeServices, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _, err = run(
        capsys, "products", "upsert", "--sku", "S1", "--name", "Card", "--price", "0",
        "--currency", "usd",
    )  # fmt: skip
    assert status == 1
    assert "price" in err
    assert "currency" in err
    assert services.products == {}


def test_import_reports_each_bad_record_and_does_the_rest(
    services: FakeServices, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    records = [
        {"sku": "A", "name": "A", "currency": "USD", "prices": [{"price": 5, "fromQuantity": 1}]},
        {"sku": "B", "name": "", "currency": "USD", "price": "1.00"},
        "not a record",
        {"sku": "C", "name": "refuse me", "currency": "USD", "price": "2.00"},
        {"sku": "D", "name": "D", "currency": "EUR", "price": "3.50", "version": 99},
    ]
    path = tmp_path / "products.json"
    path.write_text(json.dumps({"requestId": "x", "data": {"items": records}}))

    status, result, err = run(capsys, "products", "import", str(path))

    assert status == 1
    assert [(p["sku"], p["version"]) for p in result["imported"]] == [("A", 1), ("D", 1)]
    assert [(f["index"], f["sku"]) for f in result["failed"]] == [(1, "B"), (2, None), (3, "C")]
    assert "name" in result["failed"][0]["error"]
    assert "3 of 5 records failed" in err
    assert services.products["A"]["price"] == "5"


def test_withdraw_show_and_list(services: FakeServices, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "products", "upsert", "--sku", "S1", "--name", "N", "--price", "1",
        "--currency", "USD")  # fmt: skip
    status, withdrawn, _ = run(capsys, "products", "withdraw", "--sku", "S1")
    assert (status, withdrawn["active"], withdrawn["version"]) == (0, False, 2)
    status, shown, _ = run(capsys, "products", "show", "--sku", "S1")
    assert (status, shown["stock"]) == (0, {"available": 0, "sold": 0})
    status, listed, _ = run(capsys, "products", "list")
    assert (status, listed["total"]) == (0, 1)
    status, _, err = run(capsys, "products", "withdraw", "--sku", "NOPE")
    assert status == 1
    assert "PRODUCT_NOT_FOUND" in err


def test_stock_from_csv_is_sent_in_chunks_with_totals(
    services: FakeServices, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run(capsys, "products", "upsert", "--sku", "S1", "--name", "N", "--price", "1",
        "--currency", "USD", "--pin-kind", "string")  # fmt: skip
    path = tmp_path / "codes.csv"
    rows = [f"CODE-{i},{i:04d}" for i in range(12_000)] + ["CODE-1,0001", "", "LAST,"]
    path.write_text("\ufeffredeemCode,pinCode\n" + "\n".join(rows) + "\n")

    status, totals, err = run(capsys, "stock", "add", "--sku", "S1", "--file", str(path))

    assert status == 0
    assert totals == {"sku": "S1", "added": 12_001, "skipped": 1, "available": 12_001}
    assert [len(r["codes"]) for r in services.stock_requests] == [5000, 5000, 2002]
    assert services.stock_requests[0]["codes"][0] == {"redeemCode": "CODE-0", "pinCode": "0000"}
    assert services.stock_requests[-1]["codes"][-1] == {"redeemCode": "LAST", "pinCode": None}
    assert "12002/12002 codes sent" in err


def test_generate_is_chunked_too(
    services: FakeServices, capsys: pytest.CaptureFixture[str]
) -> None:
    run(capsys, "products", "upsert", "--sku", "S1", "--name", "N", "--price", "1",
        "--currency", "USD")  # fmt: skip
    status, totals, _ = run(capsys, "stock", "add", "--sku", "S1", "--generate", "7000")
    assert status == 0
    assert totals["added"] == 7000
    assert services.stock_requests == [{"generate": 5000}, {"generate": 2000}]


def test_bad_csv_rows_are_reported_by_line_without_the_code(
    services: FakeServices, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    run(capsys, "products", "upsert", "--sku", "S1", "--name", "N", "--price", "1",
        "--currency", "USD", "--pin-kind", "string")  # fmt: skip
    path = tmp_path / "codes.csv"
    secret = "S" * 300
    path.write_text(
        "redeemCode,pinCode\nGOOD-1,1\n,0001\n" + f"{secret},1\nGOOD-2,{'9' * 65}\nA,B,C\n"
    )
    status, _, err = run(capsys, "stock", "add", "--sku", "S1", "--file", str(path))
    assert status == 1
    assert "line 3: redeemCode is empty" in err
    assert "line 4: redeemCode is longer than 256" in err
    assert "line 5: pinCode is longer than 64" in err
    assert "line 6: 3 columns" in err
    assert "nothing was stocked" in err
    assert secret not in err
    assert "GOOD" not in err
    assert services.stock_requests == []


def test_pins_an_integer_product_cannot_hold_are_named_by_line_and_nothing_is_sent(
    services: FakeServices, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    status, product, _ = run(capsys, "products", "upsert", "--sku", "S1", "--name", "N",
                             "--price", "1", "--currency", "USD")  # fmt: skip
    assert (status, product["pinKind"]) == (0, "integer")  # a new product's default
    path = tmp_path / "codes.csv"
    path.write_text("redeemCode,pinCode\nGOOD-1,4711\nGOOD-2,\nODD-1,0042\nODD-2,AB12\n")

    status, _, err = run(capsys, "stock", "add", "--sku", "S1", "--file", str(path))

    assert status == 1
    assert "line 4: pinCode is not an integer PIN" in err
    assert "line 5: pinCode is not an integer PIN" in err
    assert "line 2" not in err
    assert "line 3" not in err
    assert "0042" not in err
    assert "AB12" not in err
    assert services.stock_requests == []


def test_a_csv_without_the_header_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "codes.csv"
    path.write_text("CODE-1,0001\n")
    codes, errors = catalog.read_codes_csv(path)
    assert codes == []
    assert errors == ["line 1: the header must be 'redeemCode,pinCode' (got 2 column(s))"]


def test_requests_stay_under_the_body_limit() -> None:
    wide: list[dict[str, str | None]] = [
        {"redeemCode": "\u00e9" * 256, "pinCode": "\u00e9" * 64} for _ in range(5000)
    ]
    batches = list(catalog.code_batches(wide))
    assert sum(len(b) for b in batches) == 5000
    assert all(len(json.dumps({"codes": b})) < catalog.REQUEST_BYTES + 100 for b in batches)
    assert len(batches) > 1


def test_a_get_products_record_becomes_a_snapshot() -> None:
    product = catalog.product_from_record(
        {
            "sku": "X",
            "name": "X",
            "currency": "USD",
            "prices": [{"price": "7.00", "fromQuantity": 2}, {"price": "7.50", "fromQuantity": 1}],
            "stock": {"available": 1},
        }
    )
    # EZ's records say nothing of PINs: integer, as inventory's PUT takes it
    assert product == ProductSnapshot(
        sku="X", name="X", currency="USD", price="7.50", pin_kind="integer"
    )
    with pytest.raises(ValueError, match="JSON object"):
        catalog.product_from_record(["X"])
