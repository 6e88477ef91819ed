"""Where an idle stack's CPU goes, below what benchmarks/instant_orders.py --idle-seconds
measures per process (docs/benchmarks.md, "Idle").

    .venv/bin/python benchmarks/idle_probes.py threads --pid KAFKA_PID --seconds 30
    .venv/bin/python benchmarks/idle_probes.py consumers --count 3 --seconds 30
    .venv/bin/python benchmarks/idle_probes.py ticks --every 0.1 --seconds 30

`threads`: the CPU a running process used over the window, per thread name (a JVM's request
handlers, purgatory reapers, metrics meters...), from /proc. `consumers`: the CPU of a process
that runs nothing but idle aiokafka consumers with the services' settings (the idle fetch
wait, FETCHER_WAKE_MS, the batch subscribers' poll), on uvloop like the services, each in a group
of its own on one topic of the running stack. `ticks`: the CPU of a process on uvloop that
does nothing but wake every `--every` seconds (what a timer costs an idle service, such as
uvicorn's 100 ms main loop).
"""

import argparse
import asyncio
import collections
import os
import sys
import time
import uuid
from pathlib import Path

import uvloop
from aiokafka import AIOKafkaConsumer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from shared.consumers import (
    BATCH_IDLE_WAIT_MS,
    FETCH_WAIT_MS,
    FETCHER_WAKE_MS,
    IDLE_FETCH_WAIT_MS,
    long_poll_when_idle,
)

TICKS = os.sysconf("SC_CLK_TCK")


def thread_times(pid: int) -> dict[str, tuple[str, int]]:
    """Thread id -> (name, CPU ticks so far)."""
    found = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = Path(f"/proc/{pid}/task/{tid}/stat").read_text()
        except OSError:
            continue  # the thread ended
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        found[tid] = (name, int(fields[11]) + int(fields[12]))
    return found


def threads(pid: int, seconds: float) -> None:
    before = thread_times(pid)
    time.sleep(seconds)
    after = thread_times(pid)
    by_name: collections.Counter[str] = collections.Counter()
    for tid, (name, ticks) in after.items():
        by_name[name] += ticks - before.get(tid, (name, 0))[1]
    print(f"pid {pid}: {sum(by_name.values()) / TICKS / seconds:.4f} cores over {seconds:g} s")
    for name, ticks in by_name.most_common(20):
        if ticks:
            print(f"  {ticks / TICKS / seconds:.4f}  {name}")


async def consumers(
    bootstrap: str,
    topic: str,
    count: int,
    wake_ms: int,
    poll_ms: int,
    seconds: float,
    idle_wait: bool,
) -> None:
    run = uuid.uuid4().hex[:8]

    async def idle(n: int) -> None:
        consumer = AIOKafkaConsumer(
            topic,
            bootstrap_servers=bootstrap,
            group_id=f"idle-probe-{run}-{n}",
            enable_auto_commit=False,
            auto_offset_reset="latest",
            fetch_max_wait_ms=FETCH_WAIT_MS,
            consumer_timeout_ms=wake_ms,
        )
        await consumer.start()
        if idle_wait:
            long_poll_when_idle(consumer, lambda: True)  # a getmany always waiting
        try:
            while True:
                await consumer.getmany(timeout_ms=poll_ms, max_records=200)
        finally:
            await consumer.stop()

    tasks = [asyncio.create_task(idle(n)) for n in range(count)]
    print(f"{count} consumer(s) joining their groups; measuring after 15 s", flush=True)
    await asyncio.sleep(15)
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    used = (time.process_time() - cpu) / (time.monotonic() - wall)
    print(
        f"{count} idle consumer(s), fetch wait "
        f"{IDLE_FETCH_WAIT_MS if idle_wait else FETCH_WAIT_MS} ms, wake {wake_ms} ms, "
        f"poll {poll_ms} ms: {used:.4f} cores"
    )
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def ticks(every_s: float, seconds: float) -> None:
    async def tick() -> None:
        while True:  # noqa: ASYNC110 - the wake-up is what is measured
            await asyncio.sleep(every_s)

    ticking = asyncio.create_task(tick())
    await asyncio.sleep(1)
    cpu, wall = time.process_time(), time.monotonic()
    await asyncio.sleep(seconds)
    used = (time.process_time() - cpu) / (time.monotonic() - wall)
    print(f"waking every {every_s:g} s: {used:.5f} cores, {used * every_s * 1000:.3f} ms a wake-up")
    ticking.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    by_thread = sub.add_parser("threads", help="CPU per thread name of a running process")
    by_thread.add_argument("--pid", type=int, required=True)
    by_thread.add_argument("--seconds", type=float, default=30.0)
    idle = sub.add_parser("consumers", help="CPU of idle aiokafka consumers")
    idle.add_argument("--count", type=int, default=1)
    idle.add_argument("--wake-ms", type=int, default=FETCHER_WAKE_MS)
    idle.add_argument("--poll-ms", type=int, default=BATCH_IDLE_WAIT_MS)
    idle.add_argument("--seconds", type=float, default=30.0)
    idle.add_argument(
        "--no-idle-wait",
        action="store_true",
        help=f"every fetch waits FETCH_WAIT_MS ({FETCH_WAIT_MS} ms), as before the idle one",
    )
    idle.add_argument(
        "--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    )
    idle.add_argument("--topic", default="inventory.events")
    timer = sub.add_parser("ticks", help="CPU of a process that only wakes on a timer")
    timer.add_argument("--every", type=float, default=0.1)
    timer.add_argument("--seconds", type=float, default=30.0)
    args = parser.parse_args()
    if args.probe == "threads":
        threads(args.pid, args.seconds)
    elif args.probe == "ticks":
        uvloop.run(ticks(args.every, args.seconds))
    else:
        uvloop.run(
            consumers(
                args.bootstrap,
                args.topic,
                args.count,
                args.wake_ms,
                args.poll_ms,
                args.seconds,
                not args.no_idle_wait,
            )
        )


if __name__ == "__main__":
    main()
