"""The fault drill: sustained orders from one account, each with a client order number and the
duplicate check, retried the way a real client retries, while api, inventory, fulfilment,
Kafka and PostgreSQL are each killed with SIGKILL and started again in turn (round 1); then
the same load on two api and two inventory processes while one worker of each is killed
(round 2: the killed inventory worker's partitions move to the other). After each round, the
books:

    placed / found / doubled / not final / codes sold twice / money difference /
    5xx other than 503 / longest PROCESSING with stock there

Every column but the last must be 0 (the last is printed, in seconds). Run on the local stack
(`make drill`; `make drill DRILL_ARGS="--rate 60 --seconds 240"`); it needs nothing else and
leaves the stack running as it found it. Exit status 1 when the books are wrong.
"""

import argparse
import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import httpx

REPO = Path(__file__).resolve().parents[1]
STACK_PY = REPO / "deploy" / "local" / "stack.py"
VICTIMS = ("api", "inventory", "fulfilment", "kafka", "postgres")
# Round 2: these services run two worker processes each; one worker of each is killed.
WORKER_VICTIMS = ("inventory", "api")
PRICE = Decimal("1.00")


@dataclass
class Tally:
    placed: int = 0
    answered: int = 0
    errors_5xx: int = 0  # other than 503
    unavailable: int = 0  # 503, retried
    transport: int = 0  # connection refused/reset, timeouts: retried
    gave_up: list[str] = field(default_factory=list)
    kills: list[str] = field(default_factory=list)


def say(message: str) -> None:
    print(f"[drill {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def stack(command: str, service: str, env: dict[str, str] | None = None) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(STACK_PY),
        command,
        service,
        cwd=REPO,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise RuntimeError(f"stack.py {command} {service} failed:\n{out.decode(errors='replace')}")


def workers_of(service: str) -> list[int]:
    """The worker processes of a service run by its supervisor (the pid the stack recorded)."""
    run_dir = Path(os.environ.get("IO_RUN_DIR", REPO / ".run"))
    supervisor = int((run_dir / "pids" / f"{service}.pid").read_text().split()[0])
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    return [int(pid) for pid in children]


async def provision(
    admin_api: httpx.AsyncClient, admin_inv: httpx.AsyncClient, codes: int, balance: Decimal
) -> tuple[str, dict[str, str], uuid.UUID]:
    sku = f"DRILL-{os.urandom(4).hex().upper()}"
    put = await admin_inv.put(
        f"/admin/products/{sku}",
        json={
            "name": f"Drill {sku}",
            "currency": "USD",
            "price": str(PRICE),
            "isInstantDeliverySupported": True,
        },
    )
    put.raise_for_status()
    for start in range(0, codes, 5000):
        added = await admin_inv.post(
            f"/admin/products/{sku}/stock", json={"generate": min(5000, codes - start)}
        )
        added.raise_for_status()
    account = await admin_api.post(
        "/admin/accounts",
        json={"name": f"drill {sku}", "balances": [{"currency": "USD", "amount": str(balance)}]},
    )
    account.raise_for_status()
    data = account.json()["data"]
    deadline = time.monotonic() + 30
    while (await admin_api.get(f"/admin/products/{sku}")).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the api never saw product {sku}")
        await asyncio.sleep(0.2)
    headers = {"x-api-key": data["apiKey"], "Authorization": f"Bearer {data['accessToken']}"}
    return sku, headers, uuid.UUID(data["accountId"])


async def place(
    http: httpx.AsyncClient, sku: str, number: str, tally: Tally, patience_s: float
) -> None:
    """One order, as a careful client places it: the same client order number on every retry,
    a duplicate answer (409) taken as "it was placed", 503 and transport errors retried."""
    body = {"sku": sku, "clientOrderNumber": number, "enableClientOrderNumberDupCheck": True}
    deadline = time.monotonic() + patience_s
    while time.monotonic() < deadline:
        try:
            response = await http.post("/v2/orders/instant", json=body)
        except httpx.HTTPError:
            tally.transport += 1
            await asyncio.sleep(0.5)
            continue
        if response.status_code in (200, 409):
            tally.answered += 1
            return
        if response.status_code == 503:
            tally.unavailable += 1
            await asyncio.sleep(float(response.headers.get("retry-after", "1")))
            continue
        if response.status_code >= 500:
            tally.errors_5xx += 1
            await asyncio.sleep(0.5)
            continue
        raise RuntimeError(f"order {number}: unexpected {response.status_code} {response.text}")
    tally.gave_up.append(number)


async def chaos(seconds: float, tally: Tally) -> None:
    """Each victim killed -9 and started again, at even times over the load's duration (each
    while orders are still being sent)."""
    began = time.monotonic()
    gap = seconds / (len(VICTIMS) + 1)
    for n, victim in enumerate(VICTIMS, start=1):
        await asyncio.sleep(max(0.0, began + n * gap - time.monotonic()))
        say(f"kill -9 {victim}")
        await stack("kill", victim)
        await asyncio.sleep(1.0)
        await stack("start", victim)
        tally.kills.append(victim)
        say(f"{victim} started again")


async def worker_chaos(seconds: float, tally: Tally) -> None:
    """One worker of each WORKER_VICTIMS service killed -9, at even times; its supervisor
    starts a new one, and until then the other worker carries the load (for inventory: the
    group gives it the killed consumer's partitions)."""
    began = time.monotonic()
    gap = seconds / (len(WORKER_VICTIMS) + 1)
    for n, service in enumerate(WORKER_VICTIMS, start=1):
        await asyncio.sleep(max(0.0, began + n * gap - time.monotonic()))
        workers = workers_of(service)
        if len(workers) < 2:
            raise RuntimeError(f"{service} runs {len(workers)} worker(s), not 2")
        say(f"kill -9 one {service} worker (pid {workers[0]} of {workers})")
        os.kill(workers[0], signal.SIGKILL)
        tally.kills.append(f"{service} worker")


async def books(
    api_dsn: str,
    inv_dsn: str,
    account_id: uuid.UUID,
    sku: str,
    numbers: list[str],
    balance: Decimal,
    settle_s: float,
) -> dict[str, Any]:
    api = await asyncpg.connect(api_dsn)
    inv = await asyncpg.connect(inv_dsn)
    try:
        deadline = time.monotonic() + settle_s
        while True:
            processing = await api.fetchval(
                "SELECT count(*) FROM orders WHERE account_id = $1 AND status = 'PROCESSING'",
                account_id,
            )
            if processing == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        rows = await api.fetch(
            "SELECT client_order_number, status, grand_total, stock_id, transaction_id, "
            "extract(epoch FROM updated_at - created_at) AS took "
            "FROM orders WHERE account_id = $1",
            account_id,
        )
        per_number: dict[str, int] = {}
        for r in rows:
            per_number[r["client_order_number"]] = per_number.get(r["client_order_number"], 0) + 1
        sold = await inv.fetch(
            "SELECT id, transaction_id FROM codes WHERE sku = $1 AND status = 'SOLD'", sku
        )
        sold_to = {r["transaction_id"]: r["id"] for r in sold}
        completed = [r for r in rows if r["status"] == "COMPLETED"]
        mismatched = sum(1 for r in completed if sold_to.get(r["transaction_id"]) != r["stock_id"])
        # a code on two orders, or an order shown a code other than the one inventory sold it
        # (a code sold to an order not COMPLETED yet is counted under "not final", not here)
        sold_twice = (len(sold) - len(sold_to)) + mismatched
        charged = sum((r["grand_total"] for r in rows if r["status"] != "CANCELLED"), Decimal(0))
        now = await api.fetchval(
            "SELECT coalesce(sum(balance), 0) FROM wallet_slots WHERE account_id = $1", account_id
        )
        debits_twice = await api.fetchval(
            "SELECT count(*) FROM (SELECT transaction_id FROM ledger WHERE account_id = $1 "
            "AND kind = 'DEBIT' GROUP BY transaction_id HAVING count(*) > 1) d",
            account_id,
        )
        return {
            "placed": len(numbers),
            "found": sum(1 for n in numbers if per_number.get(n, 0) >= 1),
            "doubled": sum(1 for n in numbers if per_number.get(n, 0) > 1),
            "not_final": sum(1 for r in rows if r["status"] == "PROCESSING"),
            "cancelled": sum(1 for r in rows if r["status"] == "CANCELLED"),
            "sold_twice": sold_twice,
            "money_difference": (balance - charged) - now,
            "debited_twice": debits_twice,
            "longest_processing_s": max((float(r["took"]) for r in completed), default=0.0),
        }
    finally:
        await api.close()
        await inv.close()


@dataclass(frozen=True)
class Round:
    name: str
    chaos: Callable[[float, Tally], Coroutine[Any, Any, None]]
    victims: str


async def run_round(args: argparse.Namespace, round_: Round) -> bool:
    """One round: load with its chaos, then the books; True when they are right."""
    env = os.environ
    admin = {"Authorization": f"Bearer {env['ADMIN_TOKEN']}"}
    api_url = f"http://127.0.0.1:{env.get('API_PORT', '8000')}"
    api_admin_url = f"http://127.0.0.1:{env.get('API_ADMIN_PORT', '8010')}"
    inv_url = f"http://127.0.0.1:{env.get('INVENTORY_PORT', '8001')}"
    count = int(args.rate * args.seconds)
    balance = PRICE * count
    tally = Tally()
    async with (
        httpx.AsyncClient(base_url=api_admin_url, headers=admin, timeout=30) as admin_api,
        httpx.AsyncClient(base_url=inv_url, headers=admin, timeout=60) as admin_inv,
    ):
        sku, headers, account_id = await provision(admin_api, admin_inv, count, balance)
    say(
        f"{round_.name}: {count} orders at {args.rate:g}/s for {args.seconds:g}s, sku {sku}, "
        f"killing {round_.victims}"
    )
    numbers = [f"drill-{i}" for i in range(count)]
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(
        base_url=api_url, headers=headers, timeout=10, limits=limits
    ) as http:
        started = time.monotonic()
        tasks = []
        chaos_task = asyncio.create_task(round_.chaos(args.seconds, tally))
        for i, number in enumerate(numbers):
            delay = started + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tally.placed += 1
            tasks.append(asyncio.create_task(place(http, sku, number, tally, args.settle)))
            if i and i % int(args.rate * 10) == 0:
                say(
                    f"{i}/{count} sent, {tally.answered} answered, {tally.unavailable} x 503, "
                    f"{tally.transport} transport errors, {tally.errors_5xx} other 5xx"
                )
        await chaos_task
        await asyncio.gather(*tasks)
    say(f"all sent; {len(tally.gave_up)} unanswered after retries; checking the books")
    result = await books(
        env["API_DATABASE_URL"],
        env["INVENTORY_DATABASE_URL"],
        account_id,
        sku,
        numbers,
        balance,
        args.settle,
    )
    line = (
        f"{round_.name}: placed {result['placed']} / found {result['found']} / doubled "
        f"{result['doubled']} / not final {result['not_final']} / codes sold twice "
        f"{result['sold_twice']} / money difference {result['money_difference']} / 5xx other "
        f"than 503 {tally.errors_5xx} / longest PROCESSING with stock there "
        f"{result['longest_processing_s']:.1f}s"
    )
    print(line, flush=True)
    say(
        f"also: {result['cancelled']} cancelled, {result['debited_twice']} debited twice, "
        f"{tally.unavailable} x 503 and {tally.transport} transport errors retried, "
        f"kills: {', '.join(tally.kills)}"
    )
    wrong = (
        result["found"] != result["placed"]
        or result["doubled"]
        or result["not_final"]
        or result["sold_twice"]
        or result["money_difference"]
        or result["debited_twice"]
        or tally.errors_5xx
        or result["cancelled"]
    )
    return not wrong


async def with_two_workers(services: Sequence[str], on: bool) -> None:
    """Restart `services` with two worker processes each (on), or as the environment says."""
    env = dict(os.environ)
    for service in services:
        name = f"{service.upper()}_PROCESSES"
        if on:
            env[name] = "2"
        say(f"restarting {service} with {env.get(name, 'its default')} process(es)")
        await stack("restart", service, env)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=40.0, help="orders per second")
    parser.add_argument("--seconds", type=float, default=150.0, help="how long the load runs")
    parser.add_argument("--settle", type=float, default=120.0, help="wait for final states")
    parser.add_argument(
        "--rounds", default="1,2", help="which rounds: 1 (every process), 2 (two workers)"
    )
    args = parser.parse_args()
    if not os.environ.get("ADMIN_TOKEN"):
        say("ADMIN_TOKEN is not set: run `make drill`")
        return 2
    rounds = {
        "1": Round("round 1", chaos, ", ".join(VICTIMS) + " in turn"),
        "2": Round(
            "round 2",
            worker_chaos,
            "one worker of " + " and of ".join(WORKER_VICTIMS) + " (two workers each)",
        ),
    }
    chosen = [part.strip() for part in args.rounds.split(",") if part.strip()]
    if not chosen or any(part not in rounds for part in chosen):
        say(f"--rounds {args.rounds!r}: give 1, 2 or 1,2")
        return 2
    right = True
    for key in chosen:
        if key == "2":
            await with_two_workers(WORKER_VICTIMS, on=True)
            try:
                right = await run_round(args, rounds[key]) and right
            finally:
                await with_two_workers(WORKER_VICTIMS, on=False)
        else:
            right = await run_round(args, rounds[key]) and right
    return 0 if right else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
