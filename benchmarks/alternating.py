"""Two variants of one step compared in one process, in alternating rounds (for
acceptance.py and inventory_decide.py): the machine's slow spells, larger here than the
differences measured, then fall on both variants of a round alike."""

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable


def arguments(description: str, dsn_variable: str) -> tuple[argparse.Namespace, str]:
    """The comparison's command line (--rounds, --orders) and the database it runs on, from
    the stack's settings."""
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds of each variant")
    parser.add_argument("--orders", type=int, default=150, help="orders per round")
    args = parser.parse_args()
    dsn = os.environ.get(dsn_variable)
    if not dsn:
        raise SystemExit(f'No {dsn_variable}: eval "$(python3 deploy/local/stack.py env)".')
    return args, dsn


# The first calls of a round are left out of its median: a restarted variant warms up.
WARM_UP = 10


async def alternate(
    variants: dict[str, Callable[[], Awaitable[None]]], rounds: int, calls: int
) -> dict[str, list[float]]:
    """Each round times `calls` calls of each variant in turn, one at a time, 10 ms apart;
    returns each variant's round medians, in ms."""
    medians: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(1, rounds + 1):
        for name, call in variants.items():
            taken = []
            for _ in range(calls):
                began = time.perf_counter()
                await call()
                taken.append(time.perf_counter() - began)
                await asyncio.sleep(0.01)  # one at a time, not synchronisation
            medians[name].append(statistics.median(taken[WARM_UP:]) * 1000)
            print(f"round {round_}, {name}: median {medians[name][-1]:.2f} ms", file=sys.stderr)
    return medians


def summary(what: str, medians: dict[str, list[float]]) -> str:
    """A Markdown table of the round medians, and the per-round difference of the two."""
    rows = [f"| {what} | rounds | median of the round medians | range |", "|---|---|---|---|"]
    for name, values in medians.items():
        rows.append(
            f"| {name} | {len(values)} | {statistics.median(values):.2f} ms "
            f"| {min(values):.2f}-{max(values):.2f} ms |"
        )
    first, second = medians.values()
    gaps = sorted(b - a for a, b in zip(first, second, strict=True))
    rows.append(
        f"\nPer round, the second less the first: median {statistics.median(gaps):+.2f} ms, "
        f"range {gaps[0]:+.2f} to {gaps[-1]:+.2f} ms."
    )
    return "\n".join(rows)
