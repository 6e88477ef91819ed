"""Instant orders from a working client while the api is flooded with unknown credentials
and every credential lookup is held (`LOCK TABLE credentials`), against the same orders
before: what a flood that saturates authentication costs the orders of a client already
checked (within API_AUTH_CACHE_TTL_S).

    eval "$(python3 deploy/local/stack.py env)"
    .venv/bin/python benchmarks/auth_flood.py --orders 40 --flood 96

Creates a product with stock and an account of its own; the lock is held only for the
flooded phase.
"""

import argparse
import asyncio
import os
import random
import secrets
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.settings import ApiSettings


async def wait_for_product(api_admin: httpx.AsyncClient, sku: str) -> None:
    deadline = time.monotonic() + 30
    while (await api_admin.get(f"/admin/products/{sku}")).status_code != 200:
        if time.monotonic() > deadline:
            sys.exit(f"the api never saw product {sku}: is the stack up (`make up`)?")
        await asyncio.sleep(0.1)  # polling the api's read model


async def orders(buyer: httpx.AsyncClient, sku: str, count: int) -> list[float]:
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        placed = await buyer.post("/v2/orders/instant", json={"sku": sku})
        latencies.append((time.perf_counter() - started) * 1000)
        if placed.status_code != 200:
            sys.exit(f"an order of the working client failed: {placed.text}")
    return latencies


def summary(latencies: list[float]) -> str:
    p50, p95 = statistics.median(latencies), statistics.quantiles(latencies, n=20)[18]
    return f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {max(latencies):.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--orders", type=int, default=40)
    parser.add_argument("--flood", type=int, default=96, help="unknown credentials sent at once")
    args = parser.parse_args()
    settings = ApiSettings()
    api = os.environ.get("API_URL", f"http://127.0.0.1:{settings.port}")
    inventory = os.environ.get("INVENTORY_URL", "http://127.0.0.1:8001")
    admin = {"Authorization": f"Bearer {settings.admin_token.get_secret_value()}"}
    sku = f"AUTH-FLOOD-{secrets.token_hex(4)}"
    async with (
        httpx.AsyncClient(base_url=api, headers=admin) as api_admin,
        httpx.AsyncClient(base_url=inventory, headers=admin) as inventory_admin,
    ):
        await inventory_admin.put(
            f"/admin/products/{sku}", json={"name": sku, "currency": "USD", "price": "0.01"}
        )
        await inventory_admin.post(
            f"/admin/products/{sku}/stock", json={"generate": 2 * args.orders}
        )
        created = await api_admin.post(
            "/admin/accounts",
            json={"name": sku, "balances": [{"currency": "USD", "amount": "100.00"}]},
        )
        account = created.json()["data"]
        await wait_for_product(api_admin, sku)
    credentials = {
        "x-api-key": account["apiKey"],
        "Authorization": f"Bearer {account['accessToken']}",
    }
    async with httpx.AsyncClient(base_url=api, headers=credentials, timeout=30) as buyer:
        before = await orders(buyer, sku, args.orders)
        # A check of its own right before the flood: cached for API_AUTH_CACHE_TTL_S, which
        # the flooded phase stays within (a renewal would wait on the lock like any lookup).
        await asyncio.sleep(settings.auth_cache_ttl_s)  # the first check expires
        await buyer.get("/v2/balances")
        blocker = await asyncpg.connect(settings.database_url)
        held = blocker.transaction()
        await held.start()
        await blocker.execute("LOCK TABLE credentials IN ACCESS EXCLUSIVE MODE")
        address = ".".join(["127", *(str(random.randint(1, 254)) for _ in range(3))])
        transport = httpx.AsyncHTTPTransport(local_address=address)
        async with httpx.AsyncClient(base_url=api, transport=transport, timeout=30) as attacker:
            flood = [
                asyncio.create_task(
                    attacker.get(
                        "/v2/balances",
                        headers={
                            "x-api-key": f"ak_{secrets.token_hex(20)}",
                            "Authorization": "Bearer tk_x",
                        },
                    )
                )
                for _ in range(args.flood)
            ]
            await asyncio.sleep(0.3)  # the flood takes the lookup slots
            try:
                during = await orders(buyer, sku, args.orders)
            finally:
                await held.rollback()
                await blocker.close()
            answers = await asyncio.gather(*flood)
    print(f"orders before the flood:              {summary(before)}")
    print(f"orders, lookups held, {args.flood} unknown at once: {summary(during)}")
    print(f"the flood's answers: {dict(Counter(a.status_code for a in answers))}")


if __name__ == "__main__":
    asyncio.run(main())
