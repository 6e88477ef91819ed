"""What sealing codes to their stock item costs per code, against what it replaced (sealed to
the SKU). In process, no database; the variants alternate in rounds so that the machine's
noise hits both alike.

    .venv/bin/python benchmarks/code_seals.py --count 20000 --rounds 5

Per sale nothing is added: inventory seals a code once, when it is stocked, and the api opens
it once per Get Codes as before (only the associated data differs). The instant path's claim
returns one more column (the binding, a smallint).
"""

import argparse
import base64
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.crypto import CodeVault, SealedCode, random_code

SKU = "GIFT-CARD-25-USD"


def per_call_us(call: Callable[[int], object], count: int) -> float:
    started = time.process_time()
    for i in range(count):
        call(i)
    return (time.process_time() - started) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    vault = CodeVault("k1:" + base64.b64encode(os.urandom(32)).decode())
    codes = [random_code("SIM", group_length=5, pin_digits=8) for _ in range(args.count)]
    by_sku = [vault.seal_to_sku(c, SKU) for c in codes]
    by_item = [vault.seal(c, SKU, i) for i, c in enumerate(codes)]
    variants: dict[str, Callable[[int], object]] = {
        "seal, to its SKU (before)": lambda i: vault.seal_to_sku(codes[i], SKU),
        "seal, to its stock item": lambda i: vault.seal(codes[i], SKU, i),
        "open, sealed to its SKU (before)": lambda i: vault.open(by_sku[i], SKU, None),
        "open, sealed to its stock item": lambda i: vault.open(by_item[i], SKU, i),
        "wire form and back, SKU (before)": lambda i: SealedCode.from_wire(by_sku[i].to_wire()),
        "wire form and back, stock item": lambda i: SealedCode.from_wire(by_item[i].to_wire()),
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


if __name__ == "__main__":
    main()
