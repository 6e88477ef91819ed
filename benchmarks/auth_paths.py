"""What authenticating a request costs the api process, by path: credentials the cache of
successful checks answers (every order of a working client), credentials the memory of
refusals answers, and, with API_DATABASE_URL set, credentials looked up in the api database.
CPU time of this process per call (`time.process_time`), over rounds; the repositories are
the fakes (tests/api_fakes.py) except for the database path.

    .venv/bin/python benchmarks/auth_paths.py --rounds 5
    # the hit path of another checkout (e.g. before a change), for comparison:
    git archive <commit> | tar -x -C /tmp/before
    .venv/bin/python benchmarks/auth_paths.py --code /tmp/before --paths hit
"""

import argparse
import asyncio
import inspect
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def load(code: Path) -> tuple[Any, Any, Any]:
    sys.path.insert(0, str(code))
    from services.api.entrypoints import http
    from services.api.service_layer import accounts
    from tests.api_fakes import FakeStore

    return http, accounts, FakeStore


async def per_call_ns(call: Callable[[], Awaitable[object]], count: int) -> tuple[float, float]:
    """(CPU, wall) nanoseconds per call."""
    cpu, wall = time.process_time(), time.perf_counter()
    for _ in range(count):
        await call()
    return (
        (time.process_time() - cpu) / count * 1e9,
        (time.perf_counter() - wall) / count * 1e9,
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--code", type=Path, default=REPO)
    parser.add_argument("--paths", default="hit,refused,database")
    parser.add_argument("--count", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    http, accounts, fake_store = load(args.code)

    store = fake_store()
    issued, _ = await accounts.create_account(store.uow(), "bench", [("USD", Decimal(1))], 4)
    auth = accounts.Authenticator(store.uow, ttl_s=3600)
    svc = http.ApiServices(
        new_uow=store.uow,
        order_desk=None,
        auth=auth,
        vault=None,
        limiter=http.RateLimiter(1e12, 10**12),
    )
    takes_scope = len(inspect.signature(http.authenticate).parameters) == 4
    scope = {"type": "http", "client": ("127.0.0.1", 40000)}

    async def authenticate(api_key: str, token: str) -> object:
        bearer = f"Bearer {token}"
        try:
            if takes_scope:
                return await http.authenticate(svc, api_key, bearer, scope)
            return await http.authenticate(svc, api_key, bearer)
        except Exception as exc:  # the refusals: 401 and the like
            exc.__traceback__ = None  # as Starlette does once it answered
            return exc

    paths: dict[str, tuple[Callable[[], Awaitable[object]], int]] = {
        "hit": (lambda: authenticate(issued.api_key, issued.access_token), args.count),
        "refused": (lambda: authenticate("ak_unknown-to-everyone", "tk_x"), args.count),
    }
    pool = None
    if "database" in args.paths and os.environ.get("API_DATABASE_URL"):
        from services.api.adapters.postgres import PostgresUnitOfWork
        from shared import db

        pool = await db.create_pool(os.environ["API_DATABASE_URL"], 4)
        looked_up = accounts.Authenticator(
            lambda: PostgresUnitOfWork(pool), ttl_s=0, failures_burst=10**9
        )

        async def database() -> object:
            return await looked_up.caller(f"ak_{uuid.uuid4().hex}", "tk_x")

        paths["database"] = (database, max(1, args.count // 100))

    print(f"code: {args.code}")
    for name in args.paths.split(","):
        if name not in paths:
            continue
        call, count = paths[name]
        await call()
        runs = [await per_call_ns(call, count) for _ in range(args.rounds)]
        cpu = [c for c, _ in runs]
        wall = statistics.median(w for _, w in runs)
        print(
            f"{name:>9}: CPU per call median {statistics.median(cpu):9.0f} ns, min "
            f"{min(cpu):9.0f} ns; wall median {wall:9.0f} ns ({args.rounds} rounds of {count})"
        )
    if pool is not None:
        await pool.close()


if __name__ == "__main__":
    asyncio.run(main())
