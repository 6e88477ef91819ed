"""What a Kafka client costs per message on this machine: aiokafka (what the services use)
against confluent-kafka (librdkafka, in C; FastStream's `faststream.confluent` broker is
built on it), each producing at a fixed rate to a topic of its own and consuming what it
produced in the same process. Both producers are durable as the services' are (acks=all,
idempotent, no linger); each message is 300 bytes with a 26-byte key, like an order request.
Printed per client and rate: the client process's CPU time per message (producing and
consuming; librdkafka's own threads included), the broker's, and the produce→consume latency
from each message's scheduled send.

    .venv/bin/python benchmarks/kafka_clients.py --rates 300,1000 --seconds 20 --rounds 2

confluent-kafka is not one of the project's dependencies: the script installs it into the
virtualenv it runs in if it is missing (a wheel with librdkafka inside). The topic
`bench.kafka-clients` is created on first use (one partition).
"""

import argparse
import asyncio
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from instant_orders import Result, cpu_seconds  # noqa: E402
from optional import installed  # noqa: E402

from shared.producers import durable_producer  # noqa: E402

TOPIC = "bench.kafka-clients"
PAYLOAD = b"x" * 300
CONFLUENT = "confluent-kafka==2.16.2"


def confluent() -> Any:
    return installed("confluent_kafka", CONFLUENT)


async def ensure_topic(bootstrap: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(TOPIC, num_partitions=1, replication_factor=1)])
    except TopicAlreadyExistsError:
        pass
    finally:
        await admin.close()


class Run:
    """One client at one rate: the latencies, and the CPU over the steady middle."""

    def __init__(self, rate: int, seconds: float) -> None:
        self.rate, self.total = rate, int(rate * seconds)
        self.start = time.perf_counter() + 0.5
        self.latencies: list[float] = []
        self.window = (self.start + seconds * 0.2, self.start + seconds * 0.9)
        self.marks: list[tuple[float, float]] = []
        self.in_window = 0
        self.done = asyncio.Event()

    def scheduled(self, i: int) -> float:
        return self.start + i / self.rate

    def received(self, value: bytes, now: float) -> None:
        i = int(value[:12])
        self.latencies.append(now - self.scheduled(i))
        self.in_window += self.window[0] <= now < self.window[1]
        if len(self.latencies) == self.total:
            self.done.set()

    async def sample_cpu(self) -> None:
        for moment in self.window:
            await asyncio.sleep(max(0.0, moment - time.perf_counter()))
            used = cpu_seconds()  # "generator": this process, its librdkafka threads too
            self.marks.append((used["generator"], used["kafka"]))

    def row(self, client: str) -> str:
        (c0, b0), (c1, b1) = self.marks
        n = max(1, self.in_window)
        taken = Result(self.rate, 0, latencies=self.latencies)
        return (
            f"| {client} | {self.rate} | {len(self.latencies)}/{self.total} | "
            f"{taken.pct(0.5):.2f} | {taken.pct(0.99):.2f} | {(c1 - c0) * 1e6 / n:.0f} | "
            f"{(b1 - b0) * 1e6 / n:.0f} |"
        )


def value(i: int) -> bytes:
    return b"%012d" % i + PAYLOAD[12:]


async def with_aiokafka(bootstrap: str, run: Run) -> None:
    producer = durable_producer(bootstrap, "bench-aiokafka")
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=500)
    await producer.start()
    await consumer.start()
    tp = TopicPartition(TOPIC, 0)
    consumer.assign([tp])
    await consumer.seek_to_end(tp)
    await consumer.position(tp)

    async def consume() -> None:
        while len(run.latencies) < run.total:
            got = await consumer.getmany(tp, timeout_ms=1000, max_records=500)
            now = time.perf_counter()
            for record in got.get(tp, []):
                run.received(record.value, now)

    try:
        consuming = asyncio.create_task(consume())
        sampling = asyncio.create_task(run.sample_cpu())
        for i in range(run.total):
            await asyncio.sleep(max(0.0, run.scheduled(i) - time.perf_counter()))
            key = b"%026d" % i
            await producer.send(TOPIC, value(i), key=key, partition=0)
        await asyncio.wait_for(consuming, timeout=60)  # it returns once all are received
        await sampling
    finally:
        await consumer.stop()
        await producer.stop()


async def with_confluent(bootstrap: str, run: Run) -> None:
    ck = confluent()
    producer = ck.Producer(
        {
            "bootstrap.servers": bootstrap,
            "client.id": "bench-confluent",
            "acks": "all",
            "enable.idempotence": True,
            "linger.ms": 0,
        }
    )
    consumer = ck.Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-confluent-{os.getpid()}",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 500,
        }
    )
    _, end = consumer.get_watermark_offsets(ck.TopicPartition(TOPIC, 0), timeout=10)
    consumer.assign([ck.TopicPartition(TOPIC, 0, end)])  # from the end, resolved before sending
    loop = asyncio.get_running_loop()
    stop = threading.Event()

    def consume() -> None:  # librdkafka's poll blocks: a thread, as faststream.confluent does
        while not stop.is_set():
            first = consumer.poll(0.2)  # returns as soon as a message is there
            if first is None:
                continue
            now = time.perf_counter()
            for message in [first, *consumer.consume(num_messages=500, timeout=0)]:
                if message.error() is None:
                    loop.call_soon_threadsafe(run.received, message.value(), now)

    consuming = loop.run_in_executor(None, consume)
    try:
        sampling = asyncio.create_task(run.sample_cpu())
        for i in range(run.total):
            await asyncio.sleep(max(0.0, run.scheduled(i) - time.perf_counter()))
            producer.produce(TOPIC, value(i), key=b"%026d" % i, partition=0)
            producer.poll(0)  # delivery reports, without blocking
        await loop.run_in_executor(None, producer.flush, 30)
        await asyncio.wait_for(run.done.wait(), timeout=60)
        await sampling
    finally:
        stop.set()
        await consuming
        consumer.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="300,1000")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    confluent()  # installed before the first run, not during it
    await ensure_topic(bootstrap)
    clients: dict[str, Callable[[str, Run], Any]] = {
        "aiokafka": with_aiokafka,
        "confluent-kafka": with_confluent,
    }
    print(
        "| client | messages/s | consumed | p50 ms | p99 ms | client µs CPU/message | "
        "broker µs CPU/message |\n|---|---|---|---|---|---|---|",
        flush=True,
    )
    for _ in range(args.rounds):
        for rate in (int(r) for r in args.rates.split(",") if r):
            for name, client in clients.items():
                run = Run(rate, args.seconds)
                await client(bootstrap, run)
                print(run.row(name), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
