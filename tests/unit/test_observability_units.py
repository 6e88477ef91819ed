"""Observability without the stack: which consumer groups each service watches, the lag
arithmetic, the lag readings surviving a broker outage, gauges read when they are scraped, and
the gauges and counters the services derive from what they see."""

import asyncio
import contextlib
import logging

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from fastapi import FastAPI
from prometheus_client import REGISTRY

from services.api import metrics as api_metrics
from shared import lag
from shared.runtime import every
from shared.web import OnScrape, install_common
from tests.helpers import unique, wait_until


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_the_groups_are_those_the_services_subscribe_with() -> None:
    from services.api.app import create_app as api_app
    from services.fulfilment.app import create_app as fulfilment_app
    from services.inventory.app import create_app as inventory_app

    subscribed: dict[str, dict[str, set[str]]] = {}
    for create_app in (api_app, inventory_app, fulfilment_app):
        runtime = create_app().state.runtime
        subscribed[runtime.service] = {
            sub.group_id: set(sub.topic_names) for sub in runtime.broker.subscribers
        }
    for service, groups in subscribed.items():
        assert set(lag.OWN_GROUPS[service]) == set(groups), service
        for group, topic_names in groups.items():
            assert {t.name for t in lag.CONSUMER_GROUPS[group]} == topic_names, group


def test_every_group_is_watched_by_its_service_and_by_another_one() -> None:
    """A consumer that is down cannot report its own lag: someone else must."""
    for group in lag.CONSUMER_GROUPS:
        watchers = [s for s in lag.OWN_GROUPS if group in lag.watched_groups(s)]
        owner = next(s for s, own in lag.OWN_GROUPS.items() if group in own)
        assert owner in watchers, group
        assert len(watchers) >= 2, f"{group} is watched only by {watchers}"
    assert set(lag.watched_groups("api")) == {"api", "api-catalog", "inventory"}
    assert set(lag.watched_groups("fulfilment")) == {
        "fulfilment",
        "fulfilment-catalog",
        "inventory",
    }


@pytest.mark.parametrize(
    ("end", "committed", "beginning", "expected"),
    [
        (10, 7, 0, 3),  # three to read
        (10, 10, 0, 0),  # caught up
        (10, None, 4, 6),  # never committed: reads from the beginning (earliest)
        (10, -1, 0, 10),  # the broker's "no offset"
        (5, 9, 0, 0),  # a stale end offset never makes a negative lag
    ],
)
def test_lag_arithmetic(end: int, committed: int | None, beginning: int, expected: int) -> None:
    assert lag.lag_of(end, committed, beginning) == expected


class FlakyBroker(lag.LagMonitor):
    """Fails its first readings as an unreachable broker would, then answers."""

    def __init__(self, failures: int) -> None:
        super().__init__("127.0.0.1:1", "test", {})
        self.failures = failures
        self.rounds = 0

    async def refresh(self) -> dict[tuple[str, str, int], int]:
        self.rounds += 1
        if self.rounds <= self.failures:
            raise KafkaConnectionError("broker unreachable")
        return {}


async def test_lag_readings_outlive_a_broker_outage(caplog: pytest.LogCaptureFixture) -> None:
    failures = sample("kafka_consumer_lag_refresh_failures_total")
    monitor = FlakyBroker(failures=3)
    for _ in range(3):
        with pytest.raises(KafkaConnectionError):  # counted, and raised for its OnScrape
            await monitor.read()
    assert sample("kafka_consumer_lag_refresh_failures_total") == failures + 3
    # As the runtime reads it: the scrapes never fail with the broker, and say so once.
    scraped = OnScrape("reading the consumer lag", monitor.read, fresh_for_s=0)
    monitor.rounds, failures = 0, sample("kafka_consumer_lag_refresh_failures_total")
    with caplog.at_level(logging.INFO, logger="shared.web"):
        for _ in range(5):
            await scraped.scraped()
    await monitor.stop()
    assert monitor.rounds == 5
    assert sample("kafka_consumer_lag_refresh_failures_total") == failures + 3
    assert [r.getMessage() for r in caplog.records] == [
        "reading the consumer lag failed (KafkaConnectionError); tried again at the next scrape",
        "reading the consumer lag works again",
    ]


def test_processing_orders_gauges_cover_both_stages() -> None:
    api_metrics.set_processing([("awaiting_decision", 3, 12.5)])
    assert sample("orders_processing", stage="awaiting_decision") == 3
    assert sample("orders_processing_oldest_age_seconds", stage="awaiting_decision") == 12.5
    # A stage with no order is 0, not left at its last value.
    assert sample("orders_processing", stage="backordered") == 0
    api_metrics.set_processing([("backordered", 2, 7200.0)])
    assert sample("orders_processing", stage="awaiting_decision") == 0
    assert sample("orders_processing_oldest_age_seconds", stage="awaiting_decision") == 0
    assert sample("orders_processing", stage="backordered") == 2


def test_the_stuck_order_is_named_while_it_is_stuck_and_leaves_no_series_behind() -> None:
    def named() -> dict[str, float]:
        [family] = api_metrics.STUCK_ORDER.collect()
        return {s.labels["transaction_id"]: s.value for s in family.samples}

    api_metrics.name_stuck(("01STUCKA", 130.0))
    assert named() == {"01STUCKA": 130.0}
    api_metrics.name_stuck(("01STUCKB", 95.0))  # A got its decision; B is the oldest now
    assert named() == {"01STUCKB": 95.0}
    api_metrics.name_stuck(None)
    assert named() == {}


def test_inventory_counts_the_orders_it_had_already_decided() -> None:
    from services.inventory import metrics as inventory_metrics

    consumer = unique("consumer")
    inventory_metrics.count_already_decided(consumer, 2)
    assert sample("consumer_redeliveries_total", consumer=consumer) == 2
    inventory_metrics.count_already_decided(consumer, 0)
    assert sample("consumer_redeliveries_total", consumer=consumer) == 2


class Steps:
    """A step for OnScrape that counts its runs and, while `hold` is clear, waits."""

    def __init__(self, fail: int = 0) -> None:
        self.runs = 0
        self.fail = fail
        self.hold = asyncio.Event()
        self.hold.set()

    async def __call__(self) -> None:
        self.runs += 1
        await self.hold.wait()
        if self.runs <= self.fail:
            raise ConnectionError("database unreachable")


async def test_a_scrape_reads_again_only_once_the_last_reading_is_older_than_fresh_for() -> None:
    step = Steps()
    fresh = OnScrape("test", step, fresh_for_s=3600)
    await fresh.scraped()
    await fresh.scraped()
    assert step.runs == 1
    every_time = OnScrape("test", step, fresh_for_s=0)
    await every_time.scraped()
    await every_time.scraped()
    assert step.runs == 3


async def test_concurrent_scrapes_share_one_reading() -> None:
    step = Steps()
    step.hold.clear()
    refresh = OnScrape("test", step, fresh_for_s=0)
    scrapes = [asyncio.create_task(refresh.scraped()) for _ in range(3)]
    await wait_until(lambda: step.runs == 1, timeout=2, message="the reading started")
    step.hold.set()
    await asyncio.gather(*scrapes)
    assert step.runs == 1


async def test_a_slow_reading_does_not_hold_the_scrape_and_stop_ends_it() -> None:
    step = Steps()
    step.hold.clear()  # a database that does not answer
    refresh = OnScrape("test", step, fresh_for_s=0, wait_s=0.05)
    async with asyncio.timeout(2):
        await refresh.scraped()  # answers with the values as they are
        await refresh.scraped()  # joins the reading still running
    assert step.runs == 1
    async with asyncio.timeout(2):
        await refresh.stop()
    step.hold.set()
    await refresh.scraped()  # a new reading, not the cancelled one
    assert step.runs == 2


async def test_a_failing_reading_is_logged_once_and_again_when_it_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    step = Steps(fail=3)
    refresh = OnScrape("counting things", step, fresh_for_s=0)
    with caplog.at_level(logging.INFO, logger="shared.web"):
        for _ in range(5):
            await refresh.scraped()
    assert step.runs == 5
    assert [r.getMessage() for r in caplog.records] == [
        "counting things failed (ConnectionError); tried again at the next scrape",
        "counting things works again",
    ]


async def test_metrics_are_read_before_the_scrape_answers() -> None:
    gauge = unique("scraped_value")
    read: list[float] = []

    async def step() -> None:
        read.append(float(len(read) + 1))
        api_metrics.ORDERS_PROCESSING.labels(gauge).set(read[-1])

    app = FastAPI()
    install_common(app, "test", {}, on_scrape=[OnScrape("test", step, fresh_for_s=0)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        first = (await c.get("/metrics")).text
        second = (await c.get("/metrics")).text
    assert f'orders_processing{{stage="{gauge}"}} 1.0' in first
    assert f'orders_processing{{stage="{gauge}"}} 2.0' in second


async def test_a_failing_timer_step_is_logged_once_and_again_when_it_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    step = Steps(fail=3)
    with caplog.at_level(logging.INFO, logger="shared.runtime"):
        loop = asyncio.create_task(every(0.001, "refreshing things", step))
        try:
            await wait_until(lambda: step.runs >= 6, timeout=5, message="six runs")
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop
    assert [r.getMessage() for r in caplog.records] == [
        "refreshing things failed (ConnectionError); retrying every 0.0s",
        "refreshing things works again",
    ]
