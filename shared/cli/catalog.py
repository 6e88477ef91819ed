"""`products ...` and `stock add`: the catalog and the stock of codes, through inventory's admin
API.

What the CLI reports done is done: a product command returns once the api's read model shows
the new version (the api sells from it), and `stock add` returns once the codes are orderable.
"""

import argparse
import csv
import json
import time
from collections.abc import Iterator, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
from pydantic import ValidationError

from shared.cli.common import AdminClient, CliError, emit, fail, progress
from shared.contracts import ProductSnapshot
from shared.crypto import code_problem, pin_kind_problem

CODES_PER_REQUEST = 5_000
REQUEST_BYTES = 3 * 1024 * 1024  # inventory takes bodies up to 4 MiB
API_VISIBILITY_DEADLINE_S = 15.0
_POLL_INTERVAL_S = 0.1
_ERRORS_SHOWN = 20


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    products = sub.add_parser("products", help="the catalog: products and their prices")
    actions = products.add_subparsers(dest="action", required=True)

    upsert = actions.add_parser(
        "upsert",
        help="create or update a product (optional fields not given keep their current value)",
    )
    upsert.add_argument("--sku", required=True)
    upsert.add_argument("--name", required=True)
    upsert.add_argument("--price", required=True, type=_decimal, help="e.g. 9.75")
    upsert.add_argument("--currency", required=True, help="ISO-4217, e.g. USD")
    upsert.add_argument(
        "--instant",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="instant delivery supported (default for a new product: yes)",
    )
    upsert.add_argument(
        "--active",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="on sale (default for a new product: yes)",
    )
    for flag in ("brand", "brand-category", "brand-sub-category", "country", "image-url"):
        upsert.add_argument(f"--{flag}")
    upsert.add_argument("--format", choices=("D", "P"), help="D: digital, P: physical")
    upsert.add_argument(
        "--pin-kind",
        choices=("integer", "string"),
        help="the PINs its stock holds: integer (int32 exactly, checked at stock intake; "
        "accounts receiving integer PINs may buy it) or string (any PIN). Default for a new "
        "product: integer",
    )
    upsert.add_argument("--face-value", type=_decimal)
    upsert.add_argument("--percentage-off-face-value", type=_decimal)
    for flag, dest in (
        ("type", "types"),
        ("description", "descriptions"),
        ("instruction", "instructions"),
        ("term-condition", "term_conditions"),
    ):
        upsert.add_argument(f"--{flag}", dest=dest, action="append", help="repeat for several")
    upsert.set_defaults(func=cmd_upsert)

    imp = actions.add_parser(
        "import", help="create or update products from a JSON list of Get Products records"
    )
    imp.add_argument("file", type=Path)
    imp.set_defaults(func=cmd_import)

    withdraw = actions.add_parser("withdraw", help="stop selling a product")
    withdraw.add_argument("--sku", required=True)
    withdraw.set_defaults(func=cmd_withdraw)

    show = actions.add_parser("show", help="a product with its stock counts")
    show.add_argument("--sku", required=True)
    show.set_defaults(func=cmd_show)

    listing = actions.add_parser("list", help="every product with its stock counts")
    listing.set_defaults(func=cmd_list)

    stock = sub.add_parser("stock", help="the stock of codes").add_subparsers(
        dest="action", required=True
    )
    add = stock.add_parser("add", help="stock codes from a CSV file, or generate demo codes")
    add.add_argument("--sku", required=True)
    source = add.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--file", type=Path, help="CSV with the header redeemCode,pinCode (pinCode may be empty)"
    )
    source.add_argument("--generate", type=int, metavar="N", help="N random demo codes")
    add.set_defaults(func=cmd_stock_add)


def _decimal(value: str) -> Decimal:
    try:
        return Decimal(value)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{value!r} is not a decimal number") from None


def product_path(sku: str) -> str:
    return f"/admin/products/{quote(sku, safe='')}"


class Service(AdminClient):
    def find(self, path: str) -> Any | None:
        """GET `path`; None when the service answers 404 (not known, or not yet)."""
        try:
            response = self._client.get(path)
        except httpx.HTTPError:
            return self.call("GET", path)  # fails with the standard "cannot reach" message
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            return self.call("GET", path)  # fails with the service's own error message
        body = response.json()
        return body.get("data") if isinstance(body, dict) and "data" in body else body


# --- products ------------------------------------------------------------------------------


_UPSERT_FIELDS = {
    "name": "name",
    "price": "price",
    "currency": "currency",
    "instant": "isInstantDeliverySupported",
    "active": "active",
    "brand": "brand",
    "brand_category": "brandCategory",
    "brand_sub_category": "brandSubCategory",
    "country": "country",
    "image_url": "imageUrl",
    "format": "format",
    "face_value": "faceValue",
    "percentage_off_face_value": "percentageOffFaceValue",
    "types": "types",
    "descriptions": "descriptions",
    "instructions": "instructions",
    "term_conditions": "termConditions",
    "pin_kind": "pinKind",
}


def cmd_upsert(args: argparse.Namespace) -> None:
    inventory = Service("inventory")
    current = inventory.find(product_path(args.sku)) or {}
    record: dict[str, Any] = {k: v for k, v in current.items() if k not in ("stock", "version")}
    record.setdefault("pinKind", NEW_PRODUCT_PIN_KIND)
    for attribute, field in _UPSERT_FIELDS.items():
        value = getattr(args, attribute)
        if value is not None:
            record[field] = str(value) if isinstance(value, Decimal) else value
    record["sku"] = args.sku
    try:
        product = ProductSnapshot.model_validate(record)
    except ValidationError as exc:
        fail(f"The product is not valid: {_explain(exc)}")
    stored = put_product(inventory, product)
    wait_until_api_shows({stored["sku"]: stored["version"]})
    emit(stored)


def cmd_import(args: argparse.Namespace) -> None:
    records = _load_records(args.file)
    inventory = Service("inventory")
    imported: list[dict[str, Any]] = []
    failed: list[dict[str, Any]] = []
    for index, record in enumerate(records):
        sku = record.get("sku") if isinstance(record, dict) else None
        try:
            product = product_from_record(record)
            stored = put_product(inventory, product)
        except ValidationError as exc:
            error = _explain(exc)
        except (ValueError, CliError) as exc:  # not a record, or refused by inventory: go on
            error = str(exc)
        else:
            imported.append({"sku": stored["sku"], "version": stored["version"]})
            progress(f"record {index}: {stored['sku']} version {stored['version']}")
            continue
        failed.append({"index": index, "sku": sku, "error": error})
        progress(f"record {index} ({sku or 'no sku'}) failed: {error}")
    if imported:
        wait_until_api_shows({p["sku"]: p["version"] for p in imported})
    emit({"imported": imported, "failed": failed})
    if failed:
        fail(f"{len(failed)} of {len(records)} records failed (listed above); the others are done")


def cmd_withdraw(args: argparse.Namespace) -> None:
    stored = Service("inventory").call("POST", f"{product_path(args.sku)}/withdraw")
    wait_until_api_shows({stored["sku"]: stored["version"]})
    emit(stored)


def cmd_show(args: argparse.Namespace) -> None:
    emit(Service("inventory").call("GET", product_path(args.sku)))


def cmd_list(_: argparse.Namespace) -> None:
    inventory = Service("inventory")
    items: list[Any] = []
    page = 1
    while True:
        data = inventory.call("GET", "/admin/products", params={"limit": 1000, "page": page})
        items.extend(data["items"])
        if page >= data["totalPage"]:
            break
        page += 1
    emit({"total": len(items), "items": items})


# A record that says nothing of its PINs declares them integers, as inventory's PUT does.
NEW_PRODUCT_PIN_KIND = "integer"


def product_from_record(record: Any) -> ProductSnapshot:
    """A Get Products record (prices[] or price) as a product snapshot, validated."""
    if not isinstance(record, dict):
        raise ValueError("a record must be a JSON object")
    fields = {k: v for k, v in record.items() if k not in ("version", "stock")}
    fields.setdefault("pinKind", NEW_PRODUCT_PIN_KIND)  # EZ's records have none
    if "price" not in fields and isinstance(fields.get("prices"), list) and fields["prices"]:
        tiers = [p for p in fields["prices"] if isinstance(p, dict)]
        single = [p for p in tiers if p.get("fromQuantity", 1) == 1] or tiers
        if single:
            fields["price"] = single[0].get("price")
    return ProductSnapshot.model_validate(fields)


def _load_records(path: Path) -> list[Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        fail(f"Cannot read {path}: {exc.strerror}.")
    except ValueError as exc:
        fail(f"{path} is not JSON: {exc}.")
    if isinstance(data, dict):  # a saved Get Products answer
        data = data.get("data", data)
        data = data.get("items", data) if isinstance(data, dict) else data
    if not isinstance(data, list):
        fail(f"{path} must hold a JSON list of product records (or a Get Products answer).")
    return data


def put_product(inventory: Service, product: ProductSnapshot) -> dict[str, Any]:
    body = product.model_dump(mode="json", by_alias=True, exclude={"version"})
    stored: dict[str, Any] = inventory.call("PUT", product_path(product.sku), json=body)
    return stored


def _explain(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or 'record'}: {err['msg']}" for err in exc.errors()
    )


def wait_until_api_shows(versions: dict[str, int]) -> None:
    """Returns once the api's read model holds each SKU at (at least) the given version."""
    api = Service("api")
    pending = dict(versions)
    deadline = time.monotonic() + API_VISIBILITY_DEADLINE_S
    while True:
        for sku, version in list(pending.items()):
            seen = api.find(product_path(sku))
            if isinstance(seen, dict) and int(seen.get("version", 0)) >= version:
                del pending[sku]
        if not pending:
            return
        if time.monotonic() >= deadline:
            shown = ", ".join(f"{sku} v{v}" for sku, v in list(pending.items())[:10])
            fail(
                f"Inventory stored the change, but the api did not show it within "
                f"{API_VISIBILITY_DEADLINE_S:g} s ({len(pending)} pending: {shown}). Is the api "
                "service up and consuming catalog.products? Check `instant-orders products show` "
                "and the api's logs; re-running the command is safe."
            )
        time.sleep(_POLL_INTERVAL_S)


# --- stock ---------------------------------------------------------------------------------


def read_codes_csv(
    path: Path, pin_kind: str = "string"
) -> tuple[list[dict[str, str | None]], list[str]]:
    """The codes of a `redeemCode,pinCode` CSV, and what is wrong with it (by line number),
    for a product whose PINs are `pin_kind`.

    Error messages never quote a code.
    """
    codes: list[dict[str, str | None]] = []
    errors: list[str] = []
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            if header not in (["redeemCode", "pinCode"], ["redeemCode"]):
                return [], [
                    f"line 1: the header must be 'redeemCode,pinCode' (got {len(header)} column(s))"
                ]
            for row in reader:
                line = reader.line_num
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) > len(header):
                    errors.append(f"line {line}: {len(row)} columns, expected {len(header)}")
                    continue
                redeem = row[0].strip()
                pin = row[1].strip() if len(row) > 1 else ""
                problem = code_problem(redeem, pin) or pin_kind_problem(pin or None, pin_kind)
                if problem:
                    errors.append(f"line {line}: {problem}")
                    continue
                codes.append({"redeemCode": redeem, "pinCode": pin or None})
    except OSError as exc:
        return [], [f"cannot read {path}: {exc.strerror}"]
    except (UnicodeDecodeError, csv.Error) as exc:
        return [], [f"{path} is not a UTF-8 CSV file ({type(exc).__name__})"]
    return codes, errors


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def code_batches(codes: Sequence[dict[str, str | None]]) -> Iterator[list[dict[str, str | None]]]:
    """Requests of at most CODES_PER_REQUEST codes and REQUEST_BYTES of JSON each."""
    batch: list[dict[str, str | None]] = []
    size = 0
    for code in codes:
        code_size = len(json.dumps(code)) + 2
        if batch and (len(batch) == CODES_PER_REQUEST or size + code_size > REQUEST_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(code)
        size += code_size
    if batch:
        yield batch


def cmd_stock_add(args: argparse.Namespace) -> None:
    inventory = Service("inventory")
    path = f"{product_path(args.sku)}/stock"
    if args.file is not None:
        product = inventory.find(product_path(args.sku))
        if product is None:
            fail(f"No product with SKU {args.sku!r}: create it first with `products upsert`.")
        # Checked here too, so that a bad row is named by its line and nothing is stocked.
        codes, errors = read_codes_csv(args.file, product.get("pinKind", "string"))
        if errors:
            for error in errors[:_ERRORS_SHOWN]:
                progress(error)
            if len(errors) > _ERRORS_SHOWN:
                progress(f"... and {len(errors) - _ERRORS_SHOWN} more")
            fail(f"{len(errors)} bad row(s) in {args.file}: nothing was stocked. Fix and re-run.")
        if not codes:
            fail(f"{args.file} holds no codes.")
        bodies: list[dict[str, Any]] = [{"codes": batch} for batch in code_batches(codes)]
        total = len(codes)
    else:
        if args.generate <= 0:
            fail("--generate takes a positive number of codes.")
        total = args.generate
        bodies = [
            {"generate": len(chunk)} for chunk in _chunks(range(args.generate), CODES_PER_REQUEST)
        ]
    added = skipped = sent = 0
    available = 0
    for body in bodies:
        result = inventory.call("POST", path, json=body)
        added += result["added"]
        skipped += result["skipped"]
        available = result["available"]
        sent += len(body["codes"]) if "codes" in body else body["generate"]
        progress(f"{args.sku}: {sent}/{total} codes sent, {added} added, {skipped} skipped")
    emit({"sku": args.sku, "added": added, "skipped": skipped, "available": available})
