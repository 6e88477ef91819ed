"""The api's use cases over the fakes: an account's money and an order's life, told as
stories (accepted and paid once, completed or cancelled and refunded once, asked about again)."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.api.domain.model import (
    AccountNotFound,
    CreateInstantOrder,
    DuplicateClientOrderNumber,
    IdempotencyKeyReused,
    IllegalTransition,
    InsufficientBalance,
    OperatorCredit,
    Order,
    OrderNotFound,
)
from services.api.service_layer import accounts, orders
from services.api.service_layer.fx import OperatorRates
from services.api.service_layer.orders import BrokerUnavailable, OrderDesk
from shared import topics
from shared.contracts import (
    BackorderAllocated,
    BackorderCancelled,
    CancelBackorder,
    Decision,
    OrderBackordered,
    OrderReserved,
    PlaceOrder,
)
from tests.api_contract import product_record
from tests.api_fakes import FakeStore, FakeWallets, reserved
from tests.helpers import wait_until

SLOTS = 4
DAY = 24 * 3600.0


class Publisher:
    def __init__(self, fail: bool = False) -> None:
        self.sent: list[tuple[str, bytes, bytes]] = []
        self.fail = fail

    async def send(self, topic: str, key: bytes, value: bytes) -> None:
        if self.fail:
            raise BrokerUnavailable("down")
        self.sent.append((topic, key, value))


class Replies:
    """Inventory answering at once: RESERVED with stock id 7, or nothing (`silent`)."""

    topic = "api.replies.test"
    partition = 2

    def __init__(self, silent: bool = False) -> None:
        self.silent = silent

    def expect(self, transaction_id: str) -> asyncio.Future[Decision]:
        future: asyncio.Future[Decision] = asyncio.get_running_loop().create_future()
        if not self.silent:
            future.set_result(reserved(transaction_id))
        return future

    def forget(self, transaction_id: str) -> None:
        pass


class Health:
    accepting = True

    def __init__(self) -> None:
        self.failures = 0

    def failed(self) -> None:
        self.failures += 1


async def funded(store: FakeStore, usd: str, sku: str = "SKU") -> uuid.UUID:
    issued, _ = await accounts.create_account(store.uow(), "Acme", [("USD", Decimal(usd))], SLOTS)
    async with store.uow() as uow:
        await uow.products.apply(product_record(sku, price="2.00"), 1)
    return issued.account_id


def desk(store: FakeStore, **kw: Any) -> OrderDesk:
    return OrderDesk(
        new_uow=store.uow,
        publisher=kw.get("publisher", Publisher()),
        replies=kw.get("replies", Replies()),
        health=kw.get("health", Health()),
        decision_window_s=kw.get("window", 0.5),
        rates=kw.get("rates", OperatorRates(store.uow)),
    )


def instant(account_id: uuid.UUID, number: str | None = None) -> CreateInstantOrder:
    return CreateInstantOrder(account_id, "SKU", number, number is not None, None)


async def balance(store: FakeStore, account_id: uuid.UUID) -> Decimal:
    async with store.uow() as uow:
        return dict(await uow.wallets.balances(account_id))["USD"]


async def test_an_instant_order_is_paid_once_published_and_completed_with_its_code() -> None:
    store, publisher = FakeStore(), Publisher()
    account_id = await funded(store, "10.00")

    order = await desk(store, publisher=publisher).place_instant(instant(account_id))

    assert (order.status, order.stock_id, order.sealed_code) == ("COMPLETED", 7, "sealed")
    assert await balance(store, account_id) == Decimal("8.00")
    [(topic, key, value)] = publisher.sent
    assert (topic, key) == (topics.INVENTORY_COMMANDS.name, b"SKU")
    sent = PlaceOrder.model_validate_json(value)
    assert (sent.transaction_id, sent.reply_to, sent.reply_partition) == (
        order.transaction_id,
        Replies.topic,
        Replies.partition,
    )
    assert [r.type for r in store.events(topics.ORDER_EVENTS.name)] == [
        "OrderAccepted",
        "OrderCompleted",
    ]


async def test_without_a_decision_in_the_window_the_order_is_processing_and_kept() -> None:
    store = FakeStore()
    account_id = await funded(store, "10.00")

    order = await desk(store, replies=Replies(silent=True), window=0.05).place_instant(
        instant(account_id)
    )

    assert order.status == "PROCESSING"
    async with store.uow() as uow:
        assert await uow.orders.get(account_id, order.transaction_id) == order


async def test_the_window_counts_from_when_the_request_came_in() -> None:
    """An order whose request came in most of a window ago waits only for what is left of
    it (a silent inventory would otherwise hold it for the whole window)."""
    store = FakeStore()
    account_id = await funded(store, "10.00")
    orders_desk = desk(store, replies=Replies(silent=True), window=2.0)

    began = time.monotonic()
    order = await orders_desk.place_instant(instant(account_id), received=began - 1.9)

    assert order.status == "PROCESSING"
    assert time.monotonic() - began < 1.0, "it waited for a window counted from the call"


async def test_a_reservation_recorded_late_is_answered_processing_and_completes_after() -> None:
    """Recording the reservation past the window and RECORD_GRACE_S (a backlog of
    recordings under overload): the answer does not wait for it, the order completes once it
    ends, and the order keeps its place in flight until then."""
    store = FakeStore()
    account_id = await funded(store, "10.00")
    orders_desk = desk(store, window=0.2)
    unblocked, _ = slowed_recording(orders_desk)
    began = time.monotonic()

    order = await asyncio.wait_for(orders_desk.place_instant(instant(account_id)), 5)

    answered_after = time.monotonic() - began
    assert order.status == "PROCESSING"
    assert answered_after < 0.2 + orders.RECORD_GRACE_S + 0.2, answered_after
    assert orders_desk._in_flight == 1, "the recording still holds the order's place"
    unblocked.set()

    async def recorded() -> bool:
        async with store.uow() as uow:
            stored = await uow.orders.get(account_id, order.transaction_id)
        return stored is not None and stored.status == "COMPLETED" and not orders_desk._in_flight

    await wait_until(recorded, timeout=5)
    async with store.uow() as uow:
        assert (await uow.orders.get(account_id, order.transaction_id)).stock_id == 7  # type: ignore[union-attr]
    assert [r.type for r in store.events(topics.ORDER_EVENTS.name)] == [
        "OrderAccepted",
        "OrderCompleted",
    ]


def slowed_recording(orders_desk: OrderDesk, fail: bool = False) -> tuple[asyncio.Event, list[str]]:
    """Holds the desk's recording flushes until the event is set; then records them (or fails
    them, `fail`). The list holds the transaction ids of the orders whose flush started."""
    unblocked, started = asyncio.Event(), []
    flush = orders_desk._recording._flush

    async def slow_flush(items: Any) -> Any:
        started.extend(order.transaction_id for order, _, _ in items)
        await asyncio.wait_for(unblocked.wait(), 10)
        if fail:
            raise ConnectionError("the database went away")
        return await flush(items)

    orders_desk._recording._flush = slow_flush
    return unblocked, started


async def test_a_request_given_up_while_recording_keeps_its_place_until_it_is_recorded() -> None:
    store = FakeStore()
    account_id = await funded(store, "10.00")
    orders_desk = desk(store, window=5.0)
    unblocked, started = slowed_recording(orders_desk)
    request = asyncio.create_task(orders_desk.place_instant(instant(account_id)))
    await wait_until(lambda: started, timeout=5)

    request.cancel()  # the client went away, or the server is stopping
    with pytest.raises(asyncio.CancelledError):
        await request

    assert orders_desk._in_flight == 1, "the recording still holds the order's place"
    unblocked.set()
    await wait_until(lambda: orders_desk._in_flight == 0, timeout=5)
    async with store.uow() as uow:
        order = await uow.orders.get(account_id, started[0])
    assert order is not None
    assert order.status == "COMPLETED", "the recording went on"


async def test_a_recording_failing_after_a_late_answer_is_logged_and_gives_its_place_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FakeStore()
    account_id = await funded(store, "10.00")
    orders_desk = desk(store, window=0.05)
    unblocked, _ = slowed_recording(orders_desk, fail=True)

    order = await asyncio.wait_for(orders_desk.place_instant(instant(account_id)), 5)

    assert order.status == "PROCESSING"
    unblocked.set()
    await wait_until(lambda: orders_desk._in_flight == 0, timeout=5)
    assert "completes from inventory's event" in caplog.text
    assert "ConnectionError" in caplog.text


async def test_a_failed_publish_marks_the_broker_down_and_keeps_the_paid_order() -> None:
    store, health = FakeStore(), Health()
    account_id = await funded(store, "10.00")

    order = await desk(store, publisher=Publisher(fail=True), health=health).place_instant(
        instant(account_id)
    )

    assert (order.status, health.failures) == ("PROCESSING", 1)
    assert await balance(store, account_id) == Decimal("8.00")


async def test_orders_of_one_wallet_in_one_batch_pay_together_or_one_by_one() -> None:
    store = FakeStore()
    account_id = await funded(store, "5.00")  # slots 1.25 each: no slot holds 2.00
    results = await desk(store)._accept_batch([instant(account_id) for _ in range(3)])

    paid = [r for r in results if isinstance(r, tuple)]
    refused = [r for r in results if isinstance(r, InsufficientBalance)]
    assert (len(paid), len(refused)) == (2, 1)
    assert await balance(store, account_id) == Decimal("1.00")


async def test_the_dup_check_refuses_a_second_order_with_the_same_number() -> None:
    store = FakeStore()
    account_id = await funded(store, "10.00")
    first = await desk(store).place_instant(instant(account_id, "n-1"))

    with pytest.raises(DuplicateClientOrderNumber) as refused:
        await desk(store).place_instant(instant(account_id, "n-1"))

    assert refused.value.transaction_id == first.transaction_id
    assert await balance(store, account_id) == Decimal("8.00")


async def accepted_order(store: FakeStore, account_id: uuid.UUID) -> Order:
    return await desk(store, replies=Replies(silent=True), window=0.01).place_instant(
        instant(account_id)
    )


async def test_a_reservation_redelivered_completes_the_order_once() -> None:
    store = FakeStore()
    account_id = await funded(store, "10.00")
    order = await accepted_order(store, account_id)
    reserved = OrderReserved(
        transaction_id=order.transaction_id,
        account_id=account_id,
        sku="SKU",
        stock_id=3,
        sealed_code="c",
    )

    for _ in range(2):
        await orders.follow_inventory(store.uow(), [reserved, reserved], SLOTS)

    async with store.uow() as uow:
        stored = await uow.orders.get(account_id, order.transaction_id)
    assert stored == order.complete(3, "c")
    assert [r.type for r in store.events()].count("OrderCompleted") == 1


async def test_a_backorder_cancelled_is_refunded_once_and_a_late_allocation_changes_nothing() -> (
    None
):
    store = FakeStore()
    account_id = await funded(store, "10.00")
    order = await accepted_order(store, account_id)
    tx = order.transaction_id
    events = [
        OrderBackordered(
            transaction_id=tx, account_id=account_id, sku="SKU", placed_at=order.created_at
        ),
        BackorderCancelled(
            transaction_id=tx, account_id=account_id, sku="SKU", reason="DEADLINE_PASSED"
        ),
        BackorderAllocated(
            transaction_id=tx, account_id=account_id, sku="SKU", stock_id=1, sealed_code="c"
        ),
    ]

    for _ in range(2):  # redelivered
        await orders.follow_inventory(store.uow(), events, SLOTS)

    async with store.uow() as uow:
        stored = await uow.orders.get(account_id, tx)
    assert stored is not None
    assert (stored.status, stored.cancel_reason, stored.stock_id) == (
        "CANCELLED",
        "DEADLINE_PASSED",
        None,
    )
    assert await balance(store, account_id) == Decimal("10.00")
    assert [r.type for r in store.events()] == [
        "OrderAccepted",
        "OrderBackordered",
        "OrderCancelled",
    ]


async def test_a_failing_batch_of_outcomes_leaves_nothing_applied(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    store = FakeStore()
    account_id = await funded(store, "10.00")
    reserved_one, cancelled_one = [await accepted_order(store, account_id) for _ in range(2)]

    async def refund_fails(*_: Any, **__: Any) -> bool:
        raise RuntimeError("the refund failed")

    monkeypatch.setattr(FakeWallets, "credit", refund_fails)
    events = [
        OrderReserved(
            transaction_id=reserved_one.transaction_id,
            account_id=account_id,
            sku="SKU",
            stock_id=3,
            sealed_code="c",
        ),
        BackorderCancelled(
            transaction_id=cancelled_one.transaction_id,
            account_id=account_id,
            sku="SKU",
            reason="PRODUCT_WITHDRAWN",
        ),
    ]

    with pytest.raises(RuntimeError, match="refund"):
        await orders.follow_inventory(store.uow(), events, SLOTS)

    async with store.uow() as uow:
        assert await uow.orders.get_many(
            [reserved_one.transaction_id, cancelled_one.transaction_id]
        ) == [reserved_one, cancelled_one]
    assert [r.type for r in store.events()] == ["OrderAccepted", "OrderAccepted"]


async def test_orders_still_processing_are_asked_about_again_once_per_interval() -> None:
    store = FakeStore()
    account_id = await funded(store, "10.00")
    order = await accepted_order(store, account_id)

    assert await orders.ask_again_about_undecided(store.uow(), 0, 600, DAY) == 1
    assert await orders.ask_again_about_undecided(store.uow(), 0, 600, DAY) == 0

    [row] = store.events(topics.INVENTORY_COMMANDS.name)
    command = PlaceOrder.model_validate_json(row.payload)
    assert (row.key, command.transaction_id, command.reply_to) == (
        "SKU",
        order.transaction_id,
        None,
    )


async def test_an_order_undecided_at_its_deadline_is_asked_to_be_cancelled_then_refunded() -> None:
    store = FakeStore()
    account_id = await funded(store, "10.00")
    undecided = await accepted_order(store, account_id)
    waiting = await accepted_order(store, account_id)
    async with store.uow() as uow, uow.transaction():
        await orders.record_backorder(uow, waiting.transaction_id)
        await uow.commit()

    # deadline 0: both are past it; only the one no decision was heard of is cancelled
    assert await orders.ask_again_about_undecided(store.uow(), 0, 600, 0) == 2

    sent = {
        r.type: r.payload for r in store.events(topics.INVENTORY_COMMANDS.name) if r.key == "SKU"
    }
    cancel = CancelBackorder.model_validate_json(sent["CancelBackorder"])
    assert (cancel.transaction_id, cancel.reason, cancel.account_id, cancel.placed_at) == (
        undecided.transaction_id,
        "DEADLINE_PASSED",
        account_id,
        undecided.created_at,
    )
    assert PlaceOrder.model_validate_json(sent["PlaceOrder"]).transaction_id == (
        waiting.transaction_id
    )
    # inventory's answer ends it as any cancellation: refunded once
    cancelled = BackorderCancelled(
        transaction_id=undecided.transaction_id,
        account_id=account_id,
        sku="SKU",
        reason="DEADLINE_PASSED",
    )
    await orders.follow_inventory(store.uow(), [cancelled, cancelled], SLOTS)
    async with store.uow() as uow:
        [order] = await uow.orders.get_many([undecided.transaction_id])
        assert await uow.wallets.balances(account_id) == [("USD", Decimal("8.00"))]
    assert (order.status, order.cancel_reason) == ("CANCELLED", "DEADLINE_PASSED")


async def test_an_operator_cancels_an_order_through_inventory_never_a_final_one() -> None:
    store = FakeStore()
    account_id = await funded(store, "10.00")
    order = await accepted_order(store, account_id)

    await orders.cancel_by_operator(store.uow(), order.transaction_id)

    [row] = [r for r in store.events(topics.INVENTORY_COMMANDS.name) if r.type == "CancelBackorder"]
    command = CancelBackorder.model_validate_json(row.payload)
    assert (command.transaction_id, command.reason) == (
        order.transaction_id,
        "CANCELLED_BY_OPERATOR",
    )
    async with store.uow() as uow:  # nothing changes here until inventory answers
        assert [o.status for o in await uow.orders.get_many([order.transaction_id])] == [
            "PROCESSING"
        ]
    with pytest.raises(OrderNotFound):
        await orders.cancel_by_operator(store.uow(), "01NOSUCHORDER0000000000000")
    await orders.follow_inventory(
        store.uow(),
        [
            BackorderCancelled(
                transaction_id=order.transaction_id,
                account_id=account_id,
                sku="SKU",
                reason="CANCELLED_BY_OPERATOR",
            )
        ],
        SLOTS,
    )
    with pytest.raises(IllegalTransition):
        await orders.cancel_by_operator(store.uow(), order.transaction_id)


async def test_an_operators_credit_is_applied_once_per_idempotency_key() -> None:
    store = FakeStore()
    account_id = await funded(store, "1.00")
    credit = OperatorCredit("op-7f3a", account_id, "USD", Decimal("10.00"))

    first = await accounts.credit_account(store.uow(), credit, SLOTS)
    again = await accounts.credit_account(store.uow(), replace(credit, amount=Decimal("10")), SLOTS)

    assert (first.replayed, again.replayed) == (False, True)
    assert first.balances == again.balances == [("USD", Decimal("11.00"))]
    for other in (
        replace(credit, amount=Decimal("10.01")),
        replace(credit, currency="EUR"),
        replace(credit, account_id=await funded(store, "1.00")),
    ):
        with pytest.raises(IdempotencyKeyReused) as reused:
            await accounts.credit_account(store.uow(), other, SLOTS)
        assert reused.value.earlier.amount == Decimal("10.00")
    async with store.uow() as uow:
        assert await uow.wallets.balances(account_id) == [("USD", Decimal("11.00"))]
    with pytest.raises(AccountNotFound):  # and the key stays free
        await accounts.credit_account(
            store.uow(), replace(credit, idempotency_key="op-new", account_id=uuid.uuid4()), SLOTS
        )
    assert "op-new" not in store.state.credits


async def test_an_account_authenticates_with_both_secrets_until_its_token_rotates() -> None:
    store = FakeStore()
    issued, balances = await accounts.create_account(
        store.uow(), "Acme", [("USD", Decimal("3.00"))], SLOTS
    )
    assert balances == [("USD", Decimal("3.00"))]
    auth = accounts.Authenticator(store.uow, ttl_s=0)
    caller = await auth.caller(issued.api_key, issued.access_token)
    assert caller is not None
    assert caller.account_id == issued.account_id
    assert await auth.caller(issued.api_key, "tk_wrong") is None

    token, _ = await accounts.rotate_token(store.uow(), issued.account_id, timedelta(0))

    assert await auth.caller(issued.api_key, token) is not None
    store.state.credentials = [  # the grace (0 s) has passed
        (a, k, h, e - timedelta(seconds=1) if e else e) for a, k, h, e in store.state.credentials
    ]
    assert await auth.caller(issued.api_key, issued.access_token) is None
    credited = await accounts.credit_account(
        store.uow(), OperatorCredit("key-1", issued.account_id, "USD", Decimal("1.00")), SLOTS
    )
    assert credited.balances == [("USD", Decimal("4.00"))]
    view = await accounts.account(store.uow(), issued.account_id)
    assert view.account.created_at <= datetime.now(UTC)
