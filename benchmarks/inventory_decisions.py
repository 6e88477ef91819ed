"""Benchmark of inventory alone on a running stack (`make up` first): PlaceOrder commands
published straight to inventory.commands at a fixed rate, timed until their Decision arrives
on orders.replies.

Open loop: a command's latency counts from the moment it was *scheduled*. The products are
created and stocked first (enough codes for every order), so every order is RESERVED.

    .venv/bin/python benchmarks/inventory_decisions.py --rates 300,1000 --seconds 10 --skus 10
"""

import argparse
import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from shared.cli.common import local_secret, service_url  # noqa: E402
from shared.contracts import Decision, PlaceOrder, new_transaction_id  # noqa: E402
from shared.producers import durable_producer  # noqa: E402
from shared.topics import INVENTORY_COMMANDS, ORDER_REPLIES  # noqa: E402


async def stock_products(skus: list[str], codes_each: int) -> None:
    token = local_secret("ADMIN_TOKEN")
    async with httpx.AsyncClient(
        base_url=service_url("inventory"), headers={"Authorization": f"Bearer {token}"}, timeout=60
    ) as http:
        for sku in skus:
            put = await http.put(
                f"/admin/products/{sku}", json={"name": sku, "currency": "USD", "price": "1.00"}
            )
            put.raise_for_status()
            left = codes_each
            while left > 0:
                chunk = min(left, 5000)
                added = await http.post(f"/admin/products/{sku}/stock", json={"generate": chunk})
                added.raise_for_status()
                left -= chunk


async def run(bootstrap: str, rate: int, seconds: float, sku_count: int) -> str:
    total = int(rate * seconds)
    tag = uuid.uuid4().hex[:8]
    skus = [f"BENCH-{tag}-{i}" for i in range(sku_count)]
    await stock_products(skus, total // sku_count + 1)

    replies = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await replies.start()
    partitions = [TopicPartition(ORDER_REPLIES.name, p) for p in range(ORDER_REPLIES.partitions)]
    replies.assign(partitions)
    await replies.seek_to_end(*partitions)
    for partition in partitions:
        await replies.position(partition)
    producer = durable_producer(bootstrap, "bench-inventory-decisions")  # as the api's
    await producer.start()

    scheduled: dict[str, float] = {}
    latencies: list[float] = []
    outcomes: dict[str, int] = {}

    async def collect() -> None:
        while len(latencies) < total:
            batches = await replies.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in batches.values():
                for record in records:
                    decision = Decision.model_validate_json(record.value or b"{}")
                    if decision.transaction_id in scheduled:
                        latencies.append(now - scheduled[decision.transaction_id])
                        outcomes[decision.outcome] = outcomes.get(decision.outcome, 0) + 1

    collector = asyncio.create_task(collect())
    started = time.perf_counter()
    try:
        for i in range(total):
            at = started + i / rate
            if (delay := at - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            order = PlaceOrder(
                transaction_id=new_transaction_id(),
                account_id=uuid.uuid4(),
                sku=skus[i % sku_count],
                unit_price=Decimal("1.00"),
                currency="USD",
                placed_at=datetime.now(UTC),
                reply_to=ORDER_REPLIES.name,
            )
            scheduled[order.transaction_id] = at
            await producer.send(INVENTORY_COMMANDS.name, order.to_bytes(), key=order.sku.encode())
        await asyncio.wait_for(collector, timeout=60)
    finally:
        collector.cancel()
        await producer.stop()
        await replies.stop()
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(q: float) -> float:
        return 1000 * latencies[min(len(latencies) - 1, int(q * len(latencies)))]

    return (
        f"| {rate} | {sku_count} | {total / elapsed:.0f} | {pct(0.5):.1f} | {pct(0.9):.1f} "
        f"| {pct(0.99):.1f} | {1000 * latencies[-1]:.1f} | {outcomes} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", default="300,1000", help="orders per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--skus", type=int, default=10)
    parser.add_argument("--bootstrap", default=None, help="Kafka (default: the local stack's)")
    args = parser.parse_args()
    bootstrap = args.bootstrap or local_secret("KAFKA_BOOTSTRAP_SERVERS") or "127.0.0.1:9092"
    print("| rate/s | SKUs | achieved/s | p50 ms | p90 ms | p99 ms | max ms | outcomes |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for rate in (int(r) for r in args.rates.split(",")):
        print(asyncio.run(run(bootstrap, rate, args.seconds, args.skus)), flush=True)


if __name__ == "__main__":
    main()
