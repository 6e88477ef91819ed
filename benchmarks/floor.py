"""The latency floor of the instant path on this machine: a bare aiokafka produce→consume
round trip (idempotent producer, acks=all, the same settings as the services) and a bare
PostgreSQL commit of a one-row insert (fsync and synchronous_commit on), each measured many
times one at a time. An instant order needs two Kafka hops and two commits at the least.
Also what a PostgreSQL round trip costs to a backend that just answered and to one idle for
a few milliseconds, as the steps of a lone order find theirs.

    .venv/bin/python benchmarks/floor.py --count 300
"""

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path

import asyncpg
from aiokafka import AIOKafkaConsumer, TopicPartition

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from shared.producers import durable_producer
from shared.topics import ORDER_REPLIES


def summary(name: str, samples: list[float]) -> str:
    ordered = sorted(samples)

    def pct(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    mean = statistics.mean(samples) * 1000
    return f"| {name} | {len(samples)} | {pct(0.5):.2f} | {pct(0.99):.2f} | {mean:.2f} |"


async def kafka_round_trip(bootstrap: str, count: int) -> list[float]:
    producer = durable_producer(bootstrap, "floor")
    await producer.start()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    tp = TopicPartition(ORDER_REPLIES.name, 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    await consumer.position(tp)
    samples = []
    try:
        for _ in range(count):
            key = uuid.uuid4().hex.encode()
            began = time.perf_counter()
            await producer.send_and_wait(ORDER_REPLIES.name, b"{}", key=key, partition=0)
            while True:
                got = await consumer.getmany(tp, timeout_ms=1000)
                if any(r.key == key for r in got.get(tp, [])):
                    break
            samples.append(time.perf_counter() - began)
            await asyncio.sleep(0.005)
    finally:
        await consumer.stop()
        await producer.stop()
    return samples


async def pg_commit(url: str, count: int) -> list[float]:
    conn = await asyncpg.connect(url)
    samples = []
    try:
        # a real table (a temporary one is not WAL-logged), dropped afterwards
        await conn.execute("CREATE TABLE IF NOT EXISTS floor_probe (id bigserial, at timestamptz)")
        for _ in range(count):
            began = time.perf_counter()
            await conn.execute("INSERT INTO floor_probe (at) VALUES (now())")
            samples.append(time.perf_counter() - began)
        await conn.execute("DROP TABLE floor_probe")
    finally:
        await conn.close()
    return samples


async def pg_round_trips(url: str, count: int) -> dict[str, list[float]]:
    """What a round trip costs: to a backend that just answered (back to back), and to one
    idle for 5 ms (as each step of a lone order finds it); and a transaction's BEGIN and first
    statement as two round trips or as one simple-protocol query (both after 5 ms idle)."""
    conn = await asyncpg.connect(url)
    samples: dict[str, list[float]] = {
        "PostgreSQL `SELECT 1`, back to back": [],
        "PostgreSQL `SELECT 1`, after 5 ms idle": [],
        "PostgreSQL BEGIN, then `SELECT 1` (two round trips), after 5 ms idle": [],
        "PostgreSQL `BEGIN; SELECT 1` (one simple query), after 5 ms idle": [],
    }
    hot, idle, two, one = samples.values()
    try:
        for _ in range(count):
            await conn.fetchval("SELECT 1")
            began = time.perf_counter()
            await conn.fetchval("SELECT 1")
            hot.append(time.perf_counter() - began)
            await asyncio.sleep(0.005)
            began = time.perf_counter()
            await conn.fetchval("SELECT 1")
            idle.append(time.perf_counter() - began)
            await asyncio.sleep(0.005)
            began = time.perf_counter()
            await conn.execute("BEGIN")
            await conn.fetchval("SELECT 1")
            two.append(time.perf_counter() - began)
            await conn.execute("ROLLBACK")
            await asyncio.sleep(0.005)
            began = time.perf_counter()
            await conn.execute("BEGIN; SELECT 1")
            one.append(time.perf_counter() - began)
            await conn.execute("ROLLBACK")
            await asyncio.sleep(0.005)
    finally:
        await conn.close()
    return samples


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    url = os.environ.get("API_DATABASE_URL", "postgresql://api:api@127.0.0.1:5432/api")
    rows = [
        summary(
            "Kafka produce (acks=all, idempotent) → consume",
            await kafka_round_trip(bootstrap, args.count),
        ),
        summary("PostgreSQL one-row insert, autocommit", await pg_commit(url, args.count)),
        *(summary(name, taken) for name, taken in (await pg_round_trips(url, args.count)).items()),
    ]
    print("| what | n | p50 ms | p99 ms | mean ms |\n|---|---|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    asyncio.run(main())
