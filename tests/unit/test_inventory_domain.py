"""Inventory's domain rules: who gets a code, who waits, what a waiting order can become."""

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.inventory.domain import model
from services.inventory.domain.model import ClaimedCode, CodeStatus, DecisionState, NewCode
from shared.contracts import PlaceOrder
from shared.crypto import Binding, SealedCode

CODE = ClaimedCode(stock_id=7, sealed=SealedCode("k1", b"\x00" * 40, Binding.STOCK_ITEM))


def order(sku: str = "SKU-1", transaction_id: str | None = None, **fields: object) -> PlaceOrder:
    return PlaceOrder.model_validate(
        {
            "transactionId": transaction_id or uuid.uuid4().hex,
            "accountId": str(uuid.uuid4()),
            "sku": sku,
            "unitPrice": "9.75",
            "currency": "USD",
            "placedAt": datetime.now(UTC).isoformat(),
            **fields,
        }
    )


def test_an_order_with_a_code_is_reserved_and_one_without_waits() -> None:
    placed = order()
    reserved = model.reserve_or_backorder(placed, CODE)
    waiting = model.reserve_or_backorder(placed, None)
    assert (reserved.state, reserved.stock_id, reserved.instant_outcome) == (
        DecisionState.RESERVED,
        7,
        "RESERVED",
    )
    assert (waiting.state, waiting.stock_id, waiting.waiting) == (
        DecisionState.BACKORDERED,
        None,
        True,
    )
    assert placed.unit_price == Decimal("9.75")


def test_orders_of_a_sku_with_waiting_backorders_queue_behind_them() -> None:
    orders = [order("A", "a1"), order("B", "b1"), order("A", "a2"), order("C", "c1")]
    assert model.claims_to_attempt(orders, {"B"}) == {"A": ["a1", "a2"], "C": ["c1"]}
    assert model.claims_to_attempt(orders, {"A", "B", "C"}) == {}


def test_a_waiting_order_gets_a_code_or_is_cancelled() -> None:
    allocated = model.reserve_or_backorder(order(), None)
    assert allocated.waiting
    allocated.allocate(CODE)
    assert (allocated.state, allocated.stock_id) == (DecisionState.ALLOCATED, 7)
    assert not allocated.waiting
    # Placed as a backorder: that stays the answer the order got when it was placed.
    assert allocated.instant_outcome == "BACKORDERED"

    cancelled = model.reserve_or_backorder(order(), None)
    cancelled.cancel()
    assert (cancelled.state, cancelled.waiting) == (DecisionState.CANCELLED, False)
    assert not model.reserve_or_backorder(order(), CODE).waiting


def test_a_naive_placement_time_is_read_as_utc() -> None:
    decided = model.reserve_or_backorder(order(placedAt="2026-01-02T03:04:05"), None)
    assert decided.placed_at == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_an_order_twice_in_one_batch_is_decided_once() -> None:
    first, other = order(transaction_id="t1"), order(transaction_id="t2")
    again = order(transaction_id="t1")
    assert model.first_of_each_order([first, other, again]) == [first, other]


def test_codes_with_the_same_fingerprint_are_stocked_once() -> None:
    sealed = SealedCode("k1", b"x", Binding.STOCK_ITEM)
    a, b, a_again = (
        NewCode(1, b"a" * 32, sealed),
        NewCode(2, b"b" * 32, sealed),
        NewCode(3, b"a" * 32, sealed),
    )
    assert model.distinct_codes([a, b, a_again]) == [a, b]


def test_demo_codes_are_distinct_and_pins_are_strings() -> None:
    codes = model.demo_codes(500)
    assert len({c.redeem_code for c in codes}) == 500
    assert all(c.redeem_code.startswith("DEMO-") and len(c.redeem_code) == 24 for c in codes)
    assert all(c.pin_code is not None and len(c.pin_code) == 4 for c in codes)
    assert all(c.pin_code.isdigit() for c in codes if c.pin_code is not None)
    for bad in (0, model.MAX_CODES_PER_DELIVERY + 1):
        with pytest.raises(ValueError, match="between 1 and"):
            model.demo_codes(bad)


def test_a_code_holding_its_own_new_fingerprint_is_not_its_own_duplicate() -> None:
    # Review: a row given its version 2 fingerprint and then marked for another pass finds
    # itself as the fingerprint's holder; it is one code, kept, never set aside.
    sealed = SealedCode("k1", b"\x00" * 40, Binding.STOCK_ITEM)
    for status in (CodeStatus.AVAILABLE, CodeStatus.SOLD):
        row = model.StockedCode(7, "SKU-A", status, sealed)
        again = model.Refingerprinted(row, b"fp", sealed)
        # the same row, read a second time (as the holder) by another query
        as_holder = model.StockedCode(7, "SKU-A", status, sealed)
        plan = model.plan_refingerprinting([again], {b"fp": as_holder})
        assert (plan.keep, plan.duplicates, plan.sold_twice) == ([again], [], [])


def test_a_code_sharing_a_holders_fingerprint_is_still_its_duplicate() -> None:
    sealed = SealedCode("k1", b"\x00" * 40, Binding.STOCK_ITEM)
    holder = model.StockedCode(3, "SKU-A", CodeStatus.SOLD, sealed)
    row = model.StockedCode(7, "SKU-A", CodeStatus.AVAILABLE, sealed)
    plan = model.plan_refingerprinting([model.Refingerprinted(row, b"fp", sealed)], {b"fp": holder})
    assert (plan.keep, plan.duplicates) == ([], [row])
