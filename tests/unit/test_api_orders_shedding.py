"""Load shedding of instant orders: past max_in_flight, or when its acceptance cannot start in
time, an order is refused with 503 before anything is charged."""

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from services.api.domain.model import CreateInstantOrder, Overloaded, PipelineUnavailable
from services.api.entrypoints.http import as_api_error
from services.api.service_layer.orders import OrderDesk
from shared.batching import QueueWaitExceeded
from tests.helpers import wait_until

DEADLINE_S = 5.0


class NotAcceptedHere(Exception):
    """What the fake acceptance answers once released: these tests stop at the acceptance."""


class Acceptance:
    """Stands in for the acceptance group commit: records who reached it, holds them until
    `release` is set, then fails them (or raises `error` at once, if one is given)."""

    def __init__(self, error: Exception | None = None) -> None:
        self.reached: list[CreateInstantOrder] = []
        self.release = asyncio.Event()
        self._error = error

    async def submit(self, cmd: CreateInstantOrder) -> Any:
        self.reached.append(cmd)
        if self._error is not None:
            raise self._error
        await asyncio.wait_for(self.release.wait(), DEADLINE_S)
        raise NotAcceptedHere()


def order_request() -> CreateInstantOrder:
    return CreateInstantOrder(
        account_id=uuid.uuid4(),
        sku="SKU-1",
        client_order_number=None,
        dup_check=False,
        pay_with_currency=None,
    )


def orders_with(
    acceptance: Acceptance, monkeypatch: pytest.MonkeyPatch, *, max_in_flight: int
) -> OrderDesk:
    orders = OrderDesk(
        new_uow=cast(Any, None),
        publisher=cast(Any, None),
        replies=cast(Any, SimpleNamespace(topic="api.replies.test", partition=0)),
        health=cast(Any, SimpleNamespace(accepting=True)),
        decision_window_s=1.0,
        rates=cast(Any, None),
        max_in_flight=max_in_flight,
    )
    monkeypatch.setattr(orders._accepting, "submit", acceptance.submit)
    return orders


def shed(reason: str) -> float:
    return REGISTRY.get_sample_value("orders_shed_total", {"reason": reason}) or 0.0


async def test_an_order_past_max_in_flight_is_refused_at_once_and_admitted_again_later(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acceptance = Acceptance()
    orders = orders_with(acceptance, monkeypatch, max_in_flight=3)
    in_progress = [asyncio.create_task(orders.place_instant(order_request())) for _ in range(3)]
    await wait_until(lambda: len(acceptance.reached) == 3, timeout=DEADLINE_S, interval=0.001)
    shed_before = shed("in_flight")

    with pytest.raises(Overloaded):
        await asyncio.wait_for(orders.place_instant(order_request()), 0.5)

    assert len(acceptance.reached) == 3, "a refused order must not reach the acceptance"
    assert shed("in_flight") == shed_before + 1
    acceptance.release.set()
    results = await asyncio.wait_for(
        asyncio.gather(*in_progress, return_exceptions=True), DEADLINE_S
    )
    assert all(isinstance(r, NotAcceptedHere) for r in results), results

    with pytest.raises(NotAcceptedHere):
        await asyncio.wait_for(orders.place_instant(order_request()), DEADLINE_S)
    assert len(acceptance.reached) == 4, "once the orders in progress ended, one is admitted"


async def test_an_order_whose_acceptance_waited_too_long_is_refused_as_overloaded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acceptance = Acceptance(error=QueueWaitExceeded())
    orders = orders_with(acceptance, monkeypatch, max_in_flight=1)
    shed_before = shed("queue_wait")

    for _ in range(2):  # the second is admitted: the first one's slot was given back
        with pytest.raises(Overloaded):
            await asyncio.wait_for(orders.place_instant(order_request()), DEADLINE_S)

    assert len(acceptance.reached) == 2
    assert shed("queue_wait") == shed_before + 2


async def test_an_order_while_the_broker_is_unreachable_is_refused_before_acceptance(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    acceptance = Acceptance()
    orders = orders_with(acceptance, monkeypatch, max_in_flight=3)
    orders.health = cast(Any, SimpleNamespace(accepting=False))

    with pytest.raises(PipelineUnavailable):
        await asyncio.wait_for(orders.place_instant(order_request()), DEADLINE_S)

    assert acceptance.reached == []


def test_overloaded_is_answered_503_service_unavailable_with_retry_after() -> None:
    error = as_api_error(Overloaded())

    assert error.status == 503
    assert error.error == "SERVICE_UNAVAILABLE"
    assert "Retry-After" in error.headers
    assert int(error.headers["Retry-After"]) >= 1
