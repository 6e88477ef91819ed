"""The api's rules, without I/O: an order's transitions, and the wallet's slot rule (which
slot pays, how a credit is split, the slow path over every slot, never below zero)."""

import uuid
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from services.api.domain.model import (
    IllegalTransition,
    InsufficientBalance,
    Order,
    Wallet,
    rebalanced,
)

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def processing() -> Order:
    return Order(
        transaction_id="tx-1",
        account_id=uuid.uuid4(),
        client_order_number="",
        sku="SKU-1",
        quantity=1,
        unit_price=Decimal("9.75"),
        currency="USD",
        grand_total=Decimal("9.75"),
        status="PROCESSING",
        created_at=NOW,
    )


def test_a_processing_order_completes_with_its_code() -> None:
    done = processing().complete(42, "sealed")
    assert (done.status, done.stock_id, done.sealed_code) == ("COMPLETED", 42, "sealed")


def test_a_backordered_order_still_processes_and_may_complete_or_be_cancelled() -> None:
    waiting = processing().backorder(NOW)
    assert (waiting.status, waiting.backordered) == ("PROCESSING", True)
    assert waiting.complete(1, "s").status == "COMPLETED"
    cancelled = waiting.cancel("DEADLINE_PASSED")
    assert (cancelled.status, cancelled.cancel_reason) == ("CANCELLED", "DEADLINE_PASSED")


def test_an_order_is_backordered_once() -> None:
    with pytest.raises(IllegalTransition):
        processing().backorder(NOW).backorder(NOW)


@pytest.mark.parametrize(
    "final", [processing().complete(1, "s"), processing().cancel("PRODUCT_WITHDRAWN")]
)
def test_a_final_order_refuses_every_transition(final: Order) -> None:
    with pytest.raises(IllegalTransition, match=final.status):
        final.complete(2, "other")
    with pytest.raises(IllegalTransition):
        final.cancel("DEADLINE_PASSED")
    with pytest.raises(IllegalTransition):
        final.backorder(NOW)


def test_a_credit_is_split_evenly_over_the_slots_first_slots_taking_the_cents() -> None:
    wallet = Wallet("USD")
    wallet.credit(Decimal("10.02"), 4)
    assert wallet.slots == [Decimal("2.51"), Decimal("2.51"), Decimal("2.50"), Decimal("2.50")]
    wallet.credit(Decimal("0.01"), 4)
    assert wallet.slots[0] == Decimal("2.52")
    assert wallet.balance == Decimal("10.03")


def test_one_slot_that_holds_the_amount_pays_it() -> None:
    wallet = Wallet("USD", [Decimal(1), Decimal(5), Decimal(5)])
    assert wallet.slots_that_pay(Decimal(3)) == [1, 2]
    assert wallet.take_from_one_slot(Decimal(3), choose=max)
    assert wallet.slots == [Decimal(1), Decimal(5), Decimal(2)]
    assert not wallet.take_from_one_slot(Decimal(6))
    assert wallet.balance == Decimal(8)


def test_when_no_slot_holds_it_all_slots_pay_and_the_rest_is_spread_again() -> None:
    wallet = Wallet("USD", [Decimal(2), Decimal(2), Decimal("2.01")])
    wallet.pay(Decimal(3))
    assert wallet.slots == [Decimal("1.01"), Decimal(1), Decimal(1)]


def test_a_balance_never_goes_below_zero() -> None:
    wallet = Wallet("USD", [Decimal(1), Decimal(1)])
    with pytest.raises(InsufficientBalance) as refused:
        wallet.pay(Decimal("2.01"))
    assert refused.value.currency == "USD"
    assert wallet.slots == [Decimal(1), Decimal(1)]
    wallet.pay(Decimal(2))
    assert wallet.slots == [Decimal(0), Decimal(0)]
    assert rebalanced([Decimal(0)], Decimal("0.01"), "USD") is None
