"""Benchmark of the in-stock instant path on a running stack (`make up` first).

Open loop: requests are sent on a fixed schedule at each rate, and a request's latency counts
from the moment it was *scheduled*, so a slow server cannot hide queueing (no coordinated
omission). All orders come from ONE account unless --accounts says otherwise: the case where a
naive design serialises on the balance row.

    .venv/bin/python benchmarks/instant_orders.py --rates 100,300,600,1000 --seconds 20

Prints a Markdown table, and with --record appends it to docs/benchmarks.md with the command.
The load generator is a minimal keep-alive HTTP/1.1 client (httpx's pool cost more CPU per
request than the api itself, on the same two cores); "answered/s" is answers over the time
the whole rate took, so a server that falls behind shows it.
"""

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.cli.common import local_secret, service_url  # noqa: E402


@dataclass
class Result:
    rate: int
    seconds: float
    sent: int = 0
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def row(self) -> str:
        lat = sorted(self.latencies)
        completed = self.statuses.get("COMPLETED", 0)

        def pct(p: float) -> str:
            return f"{lat[min(len(lat) - 1, int(p * len(lat)))] * 1000:.1f}" if lat else "-"

        achieved = len(lat) / self.elapsed if self.elapsed else 0.0
        other = {k: v for k, v in self.statuses.items() if k != "COMPLETED"}
        worst = f"{lat[-1] * 1000:.1f}" if lat else "-"
        others = json.dumps(other) if other else "-"
        return (
            f"| {self.rate} | {achieved:.0f} | {pct(0.50)} | {pct(0.95)} | {pct(0.99)} | "
            f"{worst} | {completed} | {others} |"
        )


async def admin(client: httpx.AsyncClient, method: str, url: str, **kw: object) -> dict:
    response = await client.request(method, url, **kw)  # type: ignore[arg-type]
    if response.status_code >= 400:
        raise SystemExit(f"set-up failed: {method} {url} → {response.status_code} {response.text}")
    return response.json()["data"]


async def setup(codes: int, accounts: int) -> tuple[str, list[dict[str, str]]]:
    token = local_secret("ADMIN_TOKEN")
    if not token:
        raise SystemExit("No ADMIN_TOKEN: run `make up` first, or export the stack's settings.")
    headers = {"Authorization": f"Bearer {token}"}
    sku = f"BENCH-{uuid.uuid4().hex[:8]}"
    async with httpx.AsyncClient(headers=headers, timeout=60) as client:
        inv, api = service_url("inventory"), service_url("api")
        version = (
            await admin(
                client,
                "PUT",
                f"{inv}/admin/products/{sku}",
                json={"name": "Benchmark card", "currency": "USD", "price": "1.00"},
            )
        )["version"]
        remaining = codes
        while remaining > 0:
            batch = min(remaining, 5000)
            await admin(
                client, "POST", f"{inv}/admin/products/{sku}/stock", json={"generate": batch}
            )
            remaining -= batch
            print(f"stocked {codes - remaining}/{codes} codes", file=sys.stderr)
        deadline = time.monotonic() + 15
        while True:
            seen = await client.get(f"{api}/admin/products/{sku}")
            if seen.status_code == 200 and seen.json()["data"]["version"] >= version:
                break
            if time.monotonic() > deadline:
                raise SystemExit("the api did not see the benchmark product within 15 s")
            await asyncio.sleep(0.1)
        creds = []
        for _ in range(accounts):
            data = await admin(
                client,
                "POST",
                f"{api}/admin/accounts",
                json={
                    "name": "bench",
                    "balances": [{"currency": "USD", "amount": "10000000.00"}],
                    "rateLimitPerSecond": "100000",
                },
            )
            creds.append(
                {"x-api-key": data["apiKey"], "Authorization": f"Bearer {data['accessToken']}"}
            )
    return sku, creds


class Connection:
    """One keep-alive HTTP/1.1 connection: a minimal client, so that the load generator, on
    the same two cores as the stack, costs far less CPU than the server it measures."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None or self.writer.is_closing():
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.writer.write(
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{head}\r\n".encode()
            + body
        )
        status_line = await self.reader.readline()
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return int(status_line.split()[1]), await self.reader.readexactly(length)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def run_rate(
    sku: str, creds: list[dict[str, str]], rate: int, seconds: float, connections: int
) -> Result:
    result = Result(rate, seconds)
    url = httpx.URL(service_url("api"))
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(Connection(url.host, url.port or 80))
    body = json.dumps({"sku": sku}).encode()
    total = int(rate * seconds)
    start = time.perf_counter() + 0.2

    async def one(i: int) -> None:
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        conn = await pool.get()
        try:
            status, payload = await conn.post("/v2/orders/instant", body, creds[i % len(creds)])
            key = json.loads(payload)["data"]["status"] if status == 200 else f"HTTP {status}"
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            conn.close()
            conn = Connection(url.host, url.port or 80)
            key = type(exc).__name__
        finally:
            pool.put_nowait(conn)
        result.latencies.append(time.perf_counter() - scheduled)
        result.statuses[key] = result.statuses.get(key, 0) + 1

    began = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(total)))
    result.elapsed = time.perf_counter() - began
    result.sent = total
    while not pool.empty():
        pool.get_nowait().close()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,300,600,1000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--accounts", type=int, default=1)
    parser.add_argument(
        "--connections",
        type=int,
        default=64,
        help="keep-alive connections (requests in flight at most)",
    )
    parser.add_argument("--record", action="store_true", help="append to docs/benchmarks.md")
    args = parser.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    needed = int(sum(rates) * args.seconds * 1.05) + 100
    print(
        f"setting up: one product with {needed} codes, {args.accounts} account(s)", file=sys.stderr
    )
    sku, creds = await setup(needed, args.accounts)
    header = (
        "| offered orders/s | answered/s | p50 ms | p95 ms | p99 ms | max ms | COMPLETED "
        "| other |\n"
        "|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for rate in rates:
        print(f"running {rate} orders/s for {args.seconds:g}s", file=sys.stderr)
        result = await run_rate(sku, creds, rate, args.seconds, args.connections)
        rows.append(result.row())
        print(rows[-1], file=sys.stderr)
    command = "benchmarks/instant_orders.py " + " ".join(sys.argv[1:])
    table = "\n".join([header, *rows])
    print(table)
    if args.record:
        stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
        with (REPO / "docs" / "benchmarks.md").open("a") as out:
            out.write(
                f"\n### {stamp}: {args.accounts} account(s), {args.seconds:g}s per rate\n\n"
                f"Command: `.venv/bin/python {command}` on {os.cpu_count()} cores, "
                f"Python {platform.python_version()}, the whole stack on this machine.\n\n"
                f"{table}\n"
            )


if __name__ == "__main__":
    asyncio.run(main())
