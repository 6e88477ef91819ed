"""Consumer lag per group, topic and partition, computed by the services themselves.

When its /metrics is scraped (shared.web.OnScrape: not on a timer of its own, so an idle
service asks the broker nothing between scrapes), a service reads, for each consumer group it
watches, the group's committed offsets (admin client, `list_consumer_group_offsets`) and the
partitions' end offsets, and sets `kafka_consumer_lag_messages{group, topic, partition}`.

A service watches its own groups AND the groups that consume what it produces: a consumer
that is down cannot report its own lag, which is exactly when the lag matters. So the
`inventory` group's lag is also reported by api and fulfilment (they write its commands), and
every group is reported by at least two services; queries take
`max by (group, topic, partition)`.

The monitor survives broker outages: a failed reading is counted
(`kafka_consumer_lag_refresh_failures_total`), logged once until a reading works again (by the
OnScrape that reads it), and the clients are rebuilt for the next one; the gauges keep their
last values and `kafka_consumer_lag_last_refresh_timestamp_seconds` tells how old they are.
"""

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from shared import metrics, topics

# Every consumer group of the system and the topics it reads (see each service's subscribers).
CONSUMER_GROUPS: Mapping[str, tuple[topics.Topic, ...]] = {
    "api": (topics.INVENTORY_EVENTS,),
    "api-catalog": (topics.CATALOG_PRODUCTS,),
    "inventory": (topics.INVENTORY_COMMANDS,),
    "fulfilment": (topics.INVENTORY_EVENTS,),
    "fulfilment-catalog": (topics.CATALOG_PRODUCTS,),
}
OWN_GROUPS: Mapping[str, tuple[str, ...]] = {
    "api": ("api", "api-catalog"),
    "inventory": ("inventory",),
    "fulfilment": ("fulfilment", "fulfilment-catalog"),
}
# The internal topics each service writes (orders.events is read by downstream consumers,
# whose groups are theirs to watch).
PRODUCES: Mapping[str, tuple[topics.Topic, ...]] = {
    "api": (topics.INVENTORY_COMMANDS,),
    "inventory": (topics.INVENTORY_EVENTS, topics.CATALOG_PRODUCTS),
    "fulfilment": (topics.INVENTORY_COMMANDS,),
}

REFRESH_TIMEOUT_S = 5.0


def watched_groups(service: str) -> dict[str, tuple[topics.Topic, ...]]:
    """The service's own groups, then the groups that read what it produces, with the topics
    each reads."""
    produced = PRODUCES.get(service, ())
    fed = [g for g, read in CONSUMER_GROUPS.items() if any(t in produced for t in read)]
    return {g: CONSUMER_GROUPS[g] for g in [*OWN_GROUPS.get(service, ()), *fed]}


def lag_of(end: int, committed: int | None, beginning: int) -> int:
    """Messages left to read; a group without a committed offset starts at the beginning
    (every subscriber uses auto_offset_reset=earliest)."""
    position = committed if committed is not None and committed >= 0 else beginning
    return max(0, end - position)


class LagMonitor:
    def __init__(
        self,
        bootstrap: str,
        client_id: str,
        groups: Mapping[str, Sequence[topics.Topic]],
        *,
        timeout_s: float = REFRESH_TIMEOUT_S,
    ) -> None:
        self._bootstrap = bootstrap
        self._client_id = client_id
        self.groups = {group: tuple(read) for group, read in groups.items()}
        self._timeout_s = timeout_s
        self._admin: AIOKafkaAdminClient | None = None
        self._offsets: AIOKafkaConsumer | None = None

    async def stop(self) -> None:
        await self._close_clients()

    async def refresh(self) -> dict[tuple[str, str, int], int]:
        """One round: reads the offsets and sets the gauges; returns the lag it set."""
        admin, offsets = await self._clients()
        partitions = {
            group: [
                TopicPartition(topic.name, p) for topic in read for p in range(topic.partitions)
            ]
            for group, read in self.groups.items()
        }
        every = sorted({tp for tps in partitions.values() for tp in tps})
        ends: dict[TopicPartition, int] = await offsets.end_offsets(every)
        committed: dict[str, dict[TopicPartition, int]] = {}
        for group in self.groups:
            found = await admin.list_consumer_group_offsets(group)
            committed[group] = {tp: meta.offset for tp, meta in found.items()}
        without = sorted(
            {
                tp
                for group, tps in partitions.items()
                for tp in tps
                if committed[group].get(tp, -1) < 0
            }
        )
        beginnings: dict[TopicPartition, int] = (
            await offsets.beginning_offsets(without) if without else {}
        )
        lags: dict[tuple[str, str, int], int] = {}
        for group, tps in partitions.items():
            for tp in tps:
                lag = lag_of(ends[tp], committed[group].get(tp), beginnings.get(tp, 0))
                lags[(group, tp.topic, tp.partition)] = lag
                metrics.CONSUMER_LAG.labels(group, tp.topic, str(tp.partition)).set(lag)
        metrics.CONSUMER_LAG_REFRESHED.set(time.time())
        return lags

    async def read(self) -> None:
        """`refresh`, bounded by the timeout. A failure is counted, the clients are rebuilt
        for the next reading, and the error is raised again (its OnScrape logs it); the
        gauges keep their last values meanwhile."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self.refresh()
        except Exception:  # the broker, the network, a client in a bad state
            metrics.CONSUMER_LAG_FAILURES.inc()
            await self._close_clients()
            raise

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._offsets is None:
            await self._close_clients()
            admin = AIOKafkaAdminClient(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                request_timeout_ms=int(self._timeout_s * 1000),
            )
            offsets = AIOKafkaConsumer(
                bootstrap_servers=self._bootstrap,
                client_id=self._client_id,
                group_id=None,
                enable_auto_commit=False,
                request_timeout_ms=int(self._timeout_s * 1000),
            )
            try:
                await admin.start()
                await offsets.start()
            except BaseException:
                with contextlib.suppress(Exception):
                    await admin.close()
                with contextlib.suppress(Exception):
                    await offsets.stop()
                raise
            self._admin, self._offsets = admin, offsets
        return self._admin, self._offsets

    async def _close_clients(self) -> None:
        admin, offsets, self._admin, self._offsets = self._admin, self._offsets, None, None
        if admin is not None:
            with contextlib.suppress(Exception):
                await admin.close()
        if offsets is not None:
            with contextlib.suppress(Exception):
                await offsets.stop()
