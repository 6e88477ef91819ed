"""`demo seed`: a demo account and products, so a fresh stack can take an order at once."""

import argparse
import shlex
from decimal import Decimal

from shared.cli.catalog import Service, product_path, put_product, wait_until_api_shows
from shared.cli.common import AdminClient, emit, progress, service_url
from shared.contracts import ProductSnapshot

DEMO_PRODUCTS = (
    # sku, name, brand, price, codes in stock
    ("DEMO-AMZ-25", "Amazon.com Gift Card $25", "Amazon", "25.00", 25),
    ("DEMO-STEAM-20", "Steam Wallet Code $20", "Steam", "20.00", 10),
    ("DEMO-XBOX-10", "Xbox Gift Card $10", "Xbox", "10.00", 5),
    ("DEMO-NFLX-30", "Netflix Gift Card $30", "Netflix", "30.00", 0),
)


def register(sub: "argparse._SubParsersAction[argparse.ArgumentParser]") -> None:
    demo = sub.add_parser("demo", help="demo data").add_subparsers(dest="action", required=True)
    seed = demo.add_parser(
        "seed", help="a demo account with USD 1000.00, products with stock and one without"
    )
    seed.set_defaults(func=cmd_seed)


def cmd_seed(_: argparse.Namespace) -> None:
    inventory = Service("inventory")
    versions: dict[str, int] = {}
    for sku, name, brand, price, stock in DEMO_PRODUCTS:
        product = ProductSnapshot(
            sku=sku,
            name=name,
            brand=brand,
            currency="USD",
            price=Decimal(price),
            face_value=Decimal(price),
            types=["Digital"],
            country="US",
            pin_kind="integer",  # generated PINs are int32s: the (integer) demo account buys them
        )
        versions[sku] = put_product(inventory, product)["version"]
        if stock:
            inventory.call("POST", f"{product_path(sku)}/stock", json={"generate": stock})
        progress(f"product {sku}: {name}, {stock} codes in stock")
    wait_until_api_shows(versions)
    account = AdminClient("api").call(
        "POST",
        "/admin/accounts",
        json={"name": "Demo Reseller", "balances": [{"currency": "USD", "amount": "1000.00"}]},
    )
    api = service_url("api")
    curl = " ".join(
        [
            "curl -s -X POST",
            shlex.quote(f"{api}/v2/orders/instant"),
            "-H",
            shlex.quote(f"x-api-key: {account['apiKey']}"),
            "-H",
            shlex.quote(f"Authorization: Bearer {account['accessToken']}"),
            "-H 'content-type: application/json'",
            "-d",
            shlex.quote('{"sku": "DEMO-AMZ-25", "clientOrderNumber": "demo-1"}'),
        ]
    )
    progress(f"demo account {account['accountId']} with USD 1000.00; order a card with:\n{curl}")
    emit(
        {
            "accountId": account["accountId"],
            "apiKey": account["apiKey"],
            "accessToken": account["accessToken"],
            "products": [p[0] for p in DEMO_PRODUCTS],
            "outOfStock": [p[0] for p in DEMO_PRODUCTS if p[4] == 0],
            "curl": curl,
        }
    )
