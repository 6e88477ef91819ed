"""The latency floor of the instant path on this machine: a bare aiokafka produce→consume
round trip (idempotent producer, acks=all, the same settings as the services) and a bare
PostgreSQL commit of a one-row insert (fsync and synchronous_commit on), each measured many
times one at a time. An instant order needs two Kafka hops and two commits at the least.
Also what a PostgreSQL round trip costs to a backend that just answered and to one idle for
a few milliseconds, as the steps of a lone order find theirs; and a transaction of the shape
of inventory's decision, as five round trips (asyncpg, psycopg 3) and as two (psycopg 3's
pipeline mode; psycopg is installed into the virtualenv for this if it is missing).

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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from optional import installed

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


PSYCOPG = "psycopg[binary]==3.3.9"
CLAIM = (
    "UPDATE floor_codes SET status = 'SOLD', taken_by = %s WHERE id = (SELECT id FROM "
    "floor_codes WHERE status = 'AVAILABLE' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED) "
    "RETURNING id"
)


async def pg_transaction_shapes(url: str, count: int) -> dict[str, list[float]]:
    """A transaction of the shape of inventory's decision on a lone order (BEGIN, a
    transaction-level advisory lock, a claim of one row by UPDATE ... RETURNING, an insert
    built from what the claim returned, COMMIT), each after 5 ms idle, on tables of its own
    (dropped afterwards): five round trips with asyncpg, the services' driver; the same five
    with psycopg 3; and psycopg 3's pipeline mode, which sends the first three statements
    together and the last two together (the insert needs the claim's answer): two round
    trips. psycopg is not a project dependency: installed into this virtualenv if missing."""
    psycopg = installed("psycopg", PSYCOPG)
    setup = await asyncpg.connect(url)
    await setup.execute("DROP TABLE IF EXISTS floor_codes, floor_outbox")  # a run cut short
    await setup.execute(
        "CREATE TABLE floor_codes (id bigserial PRIMARY KEY, status text NOT NULL, taken_by text);"
        "CREATE INDEX ON floor_codes (id) WHERE status = 'AVAILABLE';"
        "CREATE TABLE floor_outbox (id bigserial PRIMARY KEY, payload bytea NOT NULL)"
    )
    await setup.execute(
        "INSERT INTO floor_codes (status) SELECT 'AVAILABLE' FROM generate_series(1, $1)",
        3 * count + 30,
    )
    apg = await asyncpg.connect(url)
    pg3 = await psycopg.AsyncConnection.connect(url, autocommit=True)
    insert = "INSERT INTO floor_outbox (payload) VALUES (%s)"
    asyncpg_claim, asyncpg_insert = (sql.replace("%s", "$1") for sql in (CLAIM, insert))

    def payload(code: int) -> bytes:  # built from the claim's answer, as inventory's events are
        return b"%d" % code * 10

    async def asyncpg_five(key: str) -> None:
        async with apg.transaction():
            await apg.execute("SELECT pg_advisory_xact_lock(7, 1)")
            code = await apg.fetchval(asyncpg_claim, key)
            await apg.execute(asyncpg_insert, payload(code))

    async def psycopg_five(key: str) -> None:
        await pg3.execute("BEGIN")
        await pg3.execute("SELECT pg_advisory_xact_lock(7, 1)")
        code = (await (await pg3.execute(CLAIM, (key,))).fetchone())[0]
        await pg3.execute(insert, (payload(code),))
        await pg3.execute("COMMIT")

    async def psycopg_pipelined(key: str) -> None:
        async with pg3.pipeline() as pipeline:
            await pg3.execute("BEGIN")
            await pg3.execute("SELECT pg_advisory_xact_lock(7, 1)")
            claimed = await pg3.execute(CLAIM, (key,))
            await pipeline.sync()  # the first round trip: the claim's answer is needed
            code = (await claimed.fetchone())[0]
            await pg3.execute(insert, (payload(code),))
            await pg3.execute("COMMIT")
        # the second round trip: the block's end syncs

    variants = {
        "inventory's transaction shape, asyncpg, five round trips": asyncpg_five,
        "inventory's transaction shape, psycopg 3, five round trips": psycopg_five,
        "inventory's transaction shape, psycopg 3 pipeline, two round trips": psycopg_pipelined,
    }
    samples: dict[str, list[float]] = {name: [] for name in variants}
    try:
        for i in range(count + 10):  # the first ten warm the statements up, not counted
            key = uuid.uuid4().hex
            for name, transaction in variants.items():
                await asyncio.sleep(0.005)
                began = time.perf_counter()
                await transaction(key)
                if i >= 10:
                    samples[name].append(time.perf_counter() - began)
    finally:
        await apg.close()
        await pg3.close()
        await setup.execute("DROP TABLE floor_codes; DROP TABLE floor_outbox")
        await setup.close()
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
        *(
            summary(name, taken)
            for name, taken in (await pg_transaction_shapes(url, args.count)).items()
        ),
    ]
    print("| what | n | p50 ms | p99 ms | mean ms |\n|---|---|---|---|---|\n" + "\n".join(rows))


if __name__ == "__main__":
    asyncio.run(main())
