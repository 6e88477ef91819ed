"""The latency floor of the instant path on this machine: a bare aiokafka produce→consume
round trip (idempotent producer, acks=all, the same settings as the services) and a bare
PostgreSQL commit of a one-row insert (fsync and synchronous_commit on), each measured many
times one at a time. An instant order needs two Kafka hops and two commits at the least.

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
    ]
    print("| what | n | p50 ms | p99 ms | mean ms |\n|---|---|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    asyncio.run(main())
