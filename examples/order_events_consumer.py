"""A downstream consumer of instant-orders' public order events.

Follows every order's status from the `orders.events` topic, the way a reporting or ERP
system would: its own consumer group, offsets committed after processing (at-least-once),
duplicates dropped by eventId, one order's events in order (they share a key, so a partition).

    .venv/bin/python examples/order_events_consumer.py --bootstrap 127.0.0.1:9092
    .venv/bin/python examples/order_events_consumer.py --from-beginning --exit-at-end
    .venv/bin/python examples/order_events_consumer.py --since 2026-12-01T00:00:00Z

Prints one JSON line per new event: {"transactionId", "type", "status", "sku", "grandTotal"}.
Only needs aiokafka; the event format is docs/asyncapi.yaml.
"""

import argparse
import asyncio
import contextlib
import json
import sys
from collections import OrderedDict
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

TOPIC = "orders.events"


class SeenEvents:
    """The last `size` event ids, to drop redeliveries (a real consumer would keep them in
    its own database, in the transaction that applies the event)."""

    def __init__(self, size: int = 100_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size

    def first_time(self, event_id: str) -> bool:
        if event_id in self._ids:
            return False
        self._ids[event_id] = None
        if len(self._ids) > self._size:
            self._ids.popitem(last=False)
        return True


class StartAt(ConsumerRebalanceListener):  # type: ignore[misc]
    """Starts each partition the group has no offset for at its first event at or after
    `since_ms` (a partition with none since then: at its end)."""

    def __init__(self, consumer: AIOKafkaConsumer, since_ms: int) -> None:
        self._consumer = consumer
        self._since_ms = since_ms

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        return None

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        fresh = [tp for tp in assigned if await self._consumer.committed(tp) is None]
        if not fresh:
            return
        found = await self._consumer.offsets_for_times(dict.fromkeys(fresh, self._since_ms))
        ends = await self._consumer.end_offsets(fresh)
        for tp in fresh:
            at = found.get(tp)
            self._consumer.seek(tp, at.offset if at is not None else ends[tp])


async def consume(
    bootstrap: str, group: str, from_beginning: bool, exit_at_end: bool, since: datetime | None
) -> None:
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest" if from_beginning else "latest",
    )
    listener = None if since is None else StartAt(consumer, int(since.timestamp() * 1000))
    consumer.subscribe([TOPIC], listener=listener)
    await consumer.start()
    seen = SeenEvents()
    statuses: dict[str, str] = {}
    try:
        while True:
            batches = await consumer.getmany(timeout_ms=1000, max_records=500)
            for records in batches.values():
                for record in records:
                    event = json.loads(record.value or b"{}")
                    if event.get("schemaVersion") != 1 or not seen.first_time(event["eventId"]):
                        continue
                    statuses[event["transactionId"]] = event["status"]
                    print(
                        json.dumps(
                            {
                                "transactionId": event["transactionId"],
                                "type": event["type"],
                                "status": event["status"],
                                "sku": event["sku"],
                                "grandTotal": event["grandTotal"],
                            }
                        ),
                        flush=True,
                    )
            if batches:
                await consumer.commit()  # after processing: at-least-once
            elif exit_at_end:
                assignment = consumer.assignment()
                ends = await consumer.end_offsets(list(assignment))
                positions = {tp: await consumer.position(tp) for tp in assignment}
                if assignment and all(positions[tp] >= ends[tp] for tp in assignment):
                    break
    finally:
        await consumer.stop()
    print(f"{len(statuses)} orders followed", file=sys.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description="Follow instant-orders' order events.")
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--group", default="example-order-follower")
    parser.add_argument(
        "--from-beginning",
        action="store_true",
        help="a new group starts at the oldest event instead of the newest",
    )
    parser.add_argument(
        "--since",
        type=since_time,
        help="a new group starts at the first event at or after this time (ISO 8601, e.g. "
        "2026-12-01T00:00:00Z; without a zone, UTC)",
    )
    parser.add_argument(
        "--exit-at-end", action="store_true", help="stop once every partition is read to its end"
    )
    args = parser.parse_args()
    if args.since is not None and args.from_beginning:
        parser.error("--since and --from-beginning both say where a new group starts: give one")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(
            consume(args.bootstrap, args.group, args.from_beginning, args.exit_at_end, args.since)
        )


def since_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a time: give ISO 8601, e.g. 2026-12-01T00:00:00Z"
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


if __name__ == "__main__":
    main()
