"""What sealing codes to their stock item and fingerprinting their normal form cost per code,
against what they replaced (sealed to the SKU, fingerprint of the code as given). In process,
no database; the variants alternate in rounds so that the machine's noise hits both alike.

    .venv/bin/python benchmarks/code_seals.py --count 20000 --rounds 5

Per sale nothing is added: inventory seals a code once, when it is stocked, and the api opens
it once per Get Codes as before (only the associated data differs). The instant path's claim
returns one more column (the binding, a smallint).

With `--refingerprint N` (against the local stack: `eval "$(python3 deploy/local/stack.py
env)"` first) it also stocks N codes the way inventory did before migrations 0005-0006, in a new
SKU of the stack's inventory database, and times `refingerprint_stock` over them (stock
intake waits meanwhile).
"""

import argparse
import asyncio
import base64
import hashlib
import hmac
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.inventory.adapters.postgres import PostgresUnitOfWork
from services.inventory.service_layer import catalog
from shared import db
from shared.contracts import ProductSnapshot
from shared.crypto import Code, CodeVault, SealedCode, random_code
from shared.settings import InventorySettings

SKU = "GIFT-CARD-25-USD"


def per_call_us(call: Callable[[int], object], count: int) -> float:
    started = time.process_time()
    for i in range(count):
        call(i)
    return (time.process_time() - started) / count * 1e6


async def refingerprint(count: int) -> None:
    settings = InventorySettings()
    vault = settings.code_vault()
    pool = await db.create_pool(settings.database_url, 4)
    try:
        sku = f"BENCH-REFINGERPRINT-{uuid.uuid4().hex[:8]}"
        product = ProductSnapshot(sku=sku, name=sku, currency="USD", price=Decimal("1.00"))
        await catalog.put_product(product, PostgresUnitOfWork(pool), vault)
        codes = [
            vault.seal_to_sku(random_code("OLD", group_length=5, pin_digits=8), sku)
            for _ in range(count)
        ]
        await pool.execute(
            "INSERT INTO codes (sku, key_id, sealed, binding, fingerprint, fingerprint_version) "
            "SELECT $1, k, s, 1, f, 1 FROM unnest($2::text[], $3::bytea[], $4::bytea[]) "
            "AS c (k, s, f)",
            sku,
            [c.key_id for c in codes],
            [c.blob for c in codes],
            [os.urandom(32) for _ in codes],
        )
        started, cpu = time.perf_counter(), time.process_time()
        done = await catalog.refingerprint_stock(lambda: PostgresUnitOfWork(pool), vault)
        wall, cpu = time.perf_counter() - started, time.process_time() - cpu
        print(
            f"re-fingerprinted {done.refingerprinted} codes in {wall:.2f} s "
            f"({done.refingerprinted / wall:,.0f} codes/s; inventory's CPU "
            f"{cpu / done.refingerprinted * 1e6:.0f} µs per code)"
        )
    finally:
        await pool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--refingerprint", type=int, default=0, metavar="N")
    args = parser.parse_args()

    material = os.urandom(32)
    vault = CodeVault("k1:" + base64.b64encode(material).decode())
    codes = [random_code("SIM", group_length=5, pin_digits=8) for _ in range(args.count)]
    unicode_codes = [Code("ГИФТ-" + c.redeem_code, c.pin_code) for c in codes]
    by_sku = [vault.seal_to_sku(c, SKU) for c in codes]
    by_item = [vault.seal(c, SKU, i) for i, c in enumerate(codes)]
    v1_key = hashlib.sha256(b"fingerprint|" + material).digest()

    def fingerprint_v1(redeem_code: str) -> bytes:
        return hmac.new(v1_key, redeem_code.encode(), hashlib.sha256).digest()

    variants: dict[str, Callable[[int], object]] = {
        "seal, to its SKU (before)": lambda i: vault.seal_to_sku(codes[i], SKU),
        "seal, to its stock item": lambda i: vault.seal(codes[i], SKU, i),
        "open, sealed to its SKU (before)": lambda i: vault.open(by_sku[i], SKU, None),
        "open, sealed to its stock item": lambda i: vault.open(by_item[i], SKU, i),
        "wire form and back, SKU (before)": lambda i: SealedCode.from_wire(by_sku[i].to_wire()),
        "wire form and back, stock item": lambda i: SealedCode.from_wire(by_item[i].to_wire()),
        "fingerprint as given (before)": lambda i: fingerprint_v1(codes[i].redeem_code),
        "fingerprint, normal form, ASCII": lambda i: vault.fingerprint(codes[i].redeem_code),
        "fingerprint, normal form, non-ASCII": lambda i: vault.fingerprint(
            unicode_codes[i].redeem_code
        ),
    }
    results: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, call in variants.items():
            results[name].append(per_call_us(call, args.count))

    print(f"{args.count} codes x {args.rounds} rounds, CPU µs per code (median of rounds)")
    print("| what | µs per code | rounds |")
    print("|---|---|---|")
    for name, runs in results.items():
        spread = ", ".join(f"{r:.2f}" for r in runs)
        print(f"| {name} | {statistics.median(runs):.2f} | {spread} |")
    if args.refingerprint:
        asyncio.run(refingerprint(args.refingerprint))


if __name__ == "__main__":
    main()
