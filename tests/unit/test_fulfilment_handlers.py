"""Fulfilment's handlers on fakes: the story of a SKU's backorders, from the order inventory
could not serve to its code or its cancellation."""

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from services.fulfilment.adapters.supplier import SimulatedSupplier
from services.fulfilment.domain.model import BackorderState
from services.fulfilment.service_layer import backorders
from services.fulfilment.service_layer.backorders import Policy
from services.fulfilment.service_layer.unit_of_work import UnitOfWork
from shared.contracts import (
    AllocateBackorder,
    BackorderAllocated,
    BackorderCancelled,
    BackorderStillWaiting,
    CancelBackorder,
    DeliverStock,
    InventoryEvent,
    OrderBackordered,
    ProductSnapshot,
    StockArrived,
)
from shared.topics import INVENTORY_COMMANDS
from tests.fulfilment_fakes import FakeStore
from tests.inventory_contract import VAULT

SKU = "SKU-GIFT-10"
ACCOUNT = uuid.uuid4()
DEFAULT_DEADLINE_S = 3600.0


class RecordingSupplier:
    def __init__(self) -> None:
        self.asked: list[tuple[str, int]] = []

    async def request(self, uow: UnitOfWork, sku: str, quantity: int) -> None:
        self.asked.append((sku, quantity))


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


@pytest.fixture
def supplier() -> RecordingSupplier:
    return RecordingSupplier()


@pytest.fixture
def policy(supplier: RecordingSupplier) -> Policy:
    return Policy(DEFAULT_DEADLINE_S, supplier, supplier_batch=10)


def backordered(tx: str, placed_s_ago: float = 0, sku: str = SKU) -> OrderBackordered:
    return OrderBackordered(
        transaction_id=tx,
        account_id=ACCOUNT,
        sku=sku,
        placed_at=datetime.now(UTC) - timedelta(seconds=placed_s_ago),
    )


def arrived(available: int, sku: str = SKU) -> StockArrived:
    return StockArrived(sku=sku, added=available, available=available)


def allocated(tx: str) -> BackorderAllocated:
    return BackorderAllocated(
        transaction_id=tx, account_id=ACCOUNT, sku=SKU, stock_id=1, sealed_code="k1:AAAA"
    )


def product(active: bool, version: int, deadline_s: int | None = None) -> ProductSnapshot:
    return ProductSnapshot.model_validate(
        {
            "sku": SKU,
            "name": "Gift card",
            "currency": "USD",
            "price": "10.00",
            "active": active,
            "version": version,
            "backorderDeadlineSeconds": deadline_s,
        }
    )


async def follow(store: FakeStore, policy: Policy, *events: InventoryEvent) -> None:
    await backorders.follow_inventory(list(events), store.uow(), policy)


def states(store: FakeStore) -> dict[str, BackorderState]:
    return {tx: row.backorder.state for tx, row in store.state.backorders.items()}


def commands(store: FakeStore) -> Sequence[object]:
    assert all(row.topic == INVENTORY_COMMANDS.name and row.key == SKU for row in store.outbox)
    return store.messages()


async def test_a_backorder_waits_until_its_deadline(store: FakeStore, policy: Policy) -> None:
    event = backordered("tx-1")
    await follow(store, policy, event, event)  # the second is a redelivery
    [row] = store.state.backorders.values()
    assert row.backorder.state is BackorderState.WAITING
    assert row.backorder.deadline_at == event.placed_at + timedelta(seconds=DEFAULT_DEADLINE_S)
    assert commands(store) == []


async def test_a_products_own_deadline_applies(store: FakeStore, policy: Policy) -> None:
    await backorders.apply_product(product(True, 1, deadline_s=60), store.uow(), policy)
    event = backordered("tx-1")
    await follow(store, policy, event)
    assert store.state.backorders["tx-1"].backorder.deadline_at == event.placed_at + timedelta(
        seconds=60
    )


async def test_stock_goes_to_the_oldest_waiting_first(store: FakeStore, policy: Policy) -> None:
    await follow(
        store,
        policy,
        backordered("tx-new", placed_s_ago=1),
        backordered("tx-old", placed_s_ago=9),
        backordered("tx-mid", placed_s_ago=5),
        arrived(2),
    )
    assert states(store) == {
        "tx-new": BackorderState.WAITING,
        "tx-old": BackorderState.ALLOCATING,
        "tx-mid": BackorderState.ALLOCATING,
    }
    assert commands(store) == [
        AllocateBackorder(transaction_id="tx-old", sku=SKU),
        AllocateBackorder(transaction_id="tx-mid", sku=SKU),
    ]
    # stock already being offered is not offered twice
    await follow(store, policy, arrived(2))
    assert len(commands(store)) == 2


async def test_an_allocation_completes_the_backorder_once(store: FakeStore, policy: Policy) -> None:
    await follow(store, policy, backordered("tx-1"), arrived(3))
    await follow(store, policy, allocated("tx-1"), allocated("tx-1"))
    assert states(store) == {"tx-1": BackorderState.COMPLETED}
    assert store.state.skus[SKU].stock_hint == 2  # taken once


async def test_still_waiting_puts_it_back_and_forgets_the_stock(
    store: FakeStore, policy: Policy
) -> None:
    await follow(store, policy, backordered("tx-1"), arrived(1))
    await follow(store, policy, BackorderStillWaiting(transaction_id="tx-1", sku=SKU))
    assert states(store) == {"tx-1": BackorderState.WAITING}
    assert store.state.skus[SKU].stock_hint == 0
    assert len(commands(store)) == 1  # nothing offered again without stock


async def test_still_waiting_for_a_withdrawn_product_cancels(
    store: FakeStore, policy: Policy
) -> None:
    await follow(store, policy, backordered("tx-1"), arrived(1))
    await backorders.apply_product(product(False, 1), store.uow(), policy)
    await follow(store, policy, BackorderStillWaiting(transaction_id="tx-1", sku=SKU))
    assert states(store) == {"tx-1": BackorderState.CANCELLING}
    assert commands(store)[-1] == CancelBackorder(
        transaction_id="tx-1", sku=SKU, reason="PRODUCT_WITHDRAWN"
    )


async def test_a_cancellation_is_recorded_once_with_its_reason(
    store: FakeStore, policy: Policy
) -> None:
    cancelled = BackorderCancelled(
        transaction_id="tx-1", account_id=ACCOUNT, sku=SKU, reason="DEADLINE_PASSED"
    )
    await follow(store, policy, backordered("tx-1"), cancelled, cancelled, allocated("tx-1"))
    row = store.state.backorders["tx-1"].backorder
    assert (row.state, row.cancel_reason) == (BackorderState.CANCELLED, "DEADLINE_PASSED")


async def test_withdrawing_a_product_cancels_its_waiting_backorders(
    store: FakeStore, policy: Policy
) -> None:
    await follow(store, policy, backordered("tx-1"), backordered("tx-2"), arrived(1))
    await backorders.apply_product(product(False, 2), store.uow(), policy)
    await backorders.apply_product(product(True, 1), store.uow(), policy)  # an older snapshot
    assert states(store) == {"tx-1": BackorderState.ALLOCATING, "tx-2": BackorderState.CANCELLING}
    assert not store.state.skus[SKU].active
    # a new backorder of the withdrawn product is cancelled at once
    await follow(store, policy, backordered("tx-3"))
    assert states(store)["tx-3"] is BackorderState.CANCELLING


async def test_a_product_back_on_sale_offers_its_stock(store: FakeStore, policy: Policy) -> None:
    await backorders.apply_product(product(False, 1), store.uow(), policy)
    await follow(store, policy, arrived(1))
    assert commands(store) == []
    await backorders.apply_product(product(True, 2), store.uow(), policy)
    assert commands(store) == []  # no backorder yet
    await follow(store, policy, backordered("tx-1"))
    assert states(store) == {"tx-1": BackorderState.ALLOCATING}


async def test_overdue_backorders_are_cancelled(store: FakeStore, policy: Policy) -> None:
    await follow(store, policy, backordered("tx-late", placed_s_ago=DEFAULT_DEADLINE_S + 1))
    await follow(store, policy, backordered("tx-fresh"))
    assert await backorders.cancel_overdue(store.uow()) == 1
    assert states(store) == {
        "tx-late": BackorderState.CANCELLING,
        "tx-fresh": BackorderState.WAITING,
    }
    assert commands(store) == [
        CancelBackorder(transaction_id="tx-late", sku=SKU, reason="DEADLINE_PASSED")
    ]
    assert await backorders.cancel_overdue(store.uow()) == 0


async def test_the_deadline_scan_says_when_the_next_deadline_comes(
    store: FakeStore, policy: Policy
) -> None:
    assert await backorders.scan_deadlines(store.uow) is None  # nothing waits
    for tx in ("tx-late-1", "tx-late-2"):
        await follow(store, policy, backordered(tx, placed_s_ago=DEFAULT_DEADLINE_S + 1))
    await follow(store, policy, backordered("tx-fresh", placed_s_ago=10))
    # a full batch: more may be overdue, the next round is due at once
    assert await backorders.scan_deadlines(store.uow, batch=1) == 0.0
    assert await backorders.scan_deadlines(store.uow, batch=1) == 0.0
    assert await backorders.scan_deadlines(store.uow) == pytest.approx(
        DEFAULT_DEADLINE_S - 10, abs=1
    )
    assert states(store) == {
        "tx-late-1": BackorderState.CANCELLING,
        "tx-late-2": BackorderState.CANCELLING,
        "tx-fresh": BackorderState.WAITING,
    }


async def test_commands_without_answer_are_sent_again(store: FakeStore, policy: Policy) -> None:
    await follow(
        store,
        policy,
        backordered("tx-1", placed_s_ago=DEFAULT_DEADLINE_S + 1),
        backordered("tx-2"),
        arrived(1),
    )
    await backorders.cancel_overdue(store.uow())  # tx-1 was offered first: nothing to cancel
    await follow(store, policy, backordered("tx-3", placed_s_ago=DEFAULT_DEADLINE_S + 1))
    await backorders.cancel_overdue(store.uow())
    sent = len(commands(store))
    assert await backorders.retry_stalled(store.uow, older_than_s=30) == 0
    store.later(31)
    assert await backorders.retry_stalled(store.uow, older_than_s=30) == 2
    # longest without answer first; tx-2 waits, but a code is being offered to tx-1 already
    assert commands(store)[sent:] == [
        AllocateBackorder(transaction_id="tx-1", sku=SKU),
        CancelBackorder(transaction_id="tx-3", sku=SKU, reason="DEADLINE_PASSED"),
    ]
    assert await backorders.retry_stalled(store.uow, older_than_s=30) == 0


async def test_a_waiting_sku_with_none_offered_is_offered_one_code(
    store: FakeStore, policy: Policy
) -> None:
    """A lost stock notice: the oldest order is offered a code, and inventory answers."""
    await follow(store, policy, backordered("tx-1", placed_s_ago=2), backordered("tx-2"))
    store.later(31)
    assert await backorders.retry_stalled(store.uow, older_than_s=30) == 1
    assert states(store) == {"tx-1": BackorderState.ALLOCATING, "tx-2": BackorderState.WAITING}


async def test_the_supplier_is_asked_for_the_shortfall(
    store: FakeStore, policy: Policy, supplier: RecordingSupplier
) -> None:
    await follow(store, policy, *(backordered(f"tx-{i}") for i in range(12)), arrived(1))
    assert supplier.asked[-1] == (SKU, 20)  # 12 waiting, 1 code: 11 short, in batches of 10


async def test_the_simulated_supplier_delivers_once_per_request(store: FakeStore) -> None:
    simulated = SimulatedSupplier(VAULT, delay_s=5)
    policy = Policy(DEFAULT_DEADLINE_S, simulated, supplier_batch=10)
    await follow(store, policy, backordered("tx-1"), backordered("tx-2"))
    assert await simulated.deliver_due(store.uow()) == 0
    store.later(6)
    assert await simulated.deliver_due(store.uow()) == 1
    assert await simulated.deliver_due(store.uow()) == 0
    [delivery] = [m for m in store.messages() if isinstance(m, DeliverStock)]
    assert (delivery.sku, len(delivery.sealed_codes)) == (SKU, 10)


async def test_a_round_of_deliveries_says_when_the_next_request_is_due(store: FakeStore) -> None:
    simulated = SimulatedSupplier(VAULT, delay_s=5)
    policy = Policy(DEFAULT_DEADLINE_S, simulated, supplier_batch=10)
    assert await simulated.deliver_round(store.uow) is None  # nothing asked
    await follow(store, policy, backordered("tx-1"))
    assert await simulated.deliver_round(store.uow) == pytest.approx(5, abs=0.5)
    store.later(6)
    assert await simulated.deliver_round(store.uow) is None  # delivered, none open
    assert len([m for m in store.messages() if isinstance(m, DeliverStock)]) == 1


async def test_open_backorders_are_counted_per_sku(store: FakeStore, policy: Policy) -> None:
    await follow(store, policy, backordered("tx-1", placed_s_ago=50), backordered("tx-2"))
    await follow(store, policy, backordered("tx-3", sku="SKU-OTHER"), allocated("tx-1"))
    counts = {o.sku: o.count for o in await backorders.open_backorders(store.uow())}
    assert counts == {SKU: 1, "SKU-OTHER": 1}
