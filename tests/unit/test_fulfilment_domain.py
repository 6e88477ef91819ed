"""The backorder's life: every transition from every state, legal or refused."""

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest

from services.fulfilment.domain.model import (
    Backorder,
    BackorderState,
    IllegalTransition,
    SkuKnowledge,
    deadline,
    round_size,
    supplier_quantity,
)
from shared.contracts import AllocateBackorder, CancelBackorder

W, A, C = BackorderState.WAITING, BackorderState.ALLOCATING, BackorderState.CANCELLING
DONE, GONE = BackorderState.COMPLETED, BackorderState.CANCELLED
T0 = datetime(2026, 1, 1, tzinfo=UTC)

TRANSITIONS: dict[
    str, tuple[Callable[[Backorder], object], dict[BackorderState, BackorderState]]
] = {
    "start_allocating": (Backorder.start_allocating, {W: A}),
    "still_waiting": (Backorder.still_waiting, {A: W}),
    "start_cancelling": (lambda b: b.start_cancelling("DEADLINE_PASSED"), {W: C}),
    "complete": (Backorder.complete, {W: DONE, A: DONE, C: DONE}),
    "cancel": (lambda b: b.cancel("PRODUCT_WITHDRAWN"), {W: GONE, A: GONE, C: GONE}),
    "resend": (Backorder.resend, {A: A, C: C}),
}


def in_state(state: BackorderState, reason: str | None = None) -> Backorder:
    return Backorder(
        transaction_id="tx-1",
        account_id=uuid.UUID(int=1),
        sku="SKU-1",
        placed_at=T0,
        deadline_at=T0 + timedelta(hours=1),
        state=state,
        cancel_reason=reason,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(("name", "start"), [(n, s) for n in TRANSITIONS for s in BackorderState])
def test_each_transition_from_each_state(name: str, start: BackorderState) -> None:
    transition, legal = TRANSITIONS[name]
    backorder = in_state(start)
    if start in legal:
        transition(backorder)
        assert backorder.state is legal[start]
    else:
        with pytest.raises(IllegalTransition, match=f"is {start}: cannot"):
            transition(backorder)
        assert backorder.state is start


def test_a_new_backorder_waits_and_is_open() -> None:
    backorder = Backorder("tx", uuid.uuid4(), "SKU", T0, T0)
    assert backorder.state is W
    assert backorder.is_open
    assert [s for s in BackorderState if in_state(s).is_open] == [W, A, C]


def test_asking_for_a_code_or_a_cancel_gives_the_command_to_send() -> None:
    assert in_state(W).start_allocating() == AllocateBackorder(transaction_id="tx-1", sku="SKU-1")
    cancelling = in_state(W)
    command = cancelling.start_cancelling("PRODUCT_WITHDRAWN")
    assert command == CancelBackorder(
        transaction_id="tx-1", sku="SKU-1", reason="PRODUCT_WITHDRAWN"
    )
    assert cancelling.cancel_reason == "PRODUCT_WITHDRAWN"


def test_inventorys_cancel_reason_is_recorded() -> None:
    backorder = in_state(C, "PRODUCT_WITHDRAWN")
    backorder.cancel("DEADLINE_PASSED")
    assert (backorder.state, backorder.cancel_reason) == (GONE, "DEADLINE_PASSED")


def test_an_allocation_wins_over_a_cancel_asked_for() -> None:
    backorder = in_state(C, "DEADLINE_PASSED")
    backorder.complete()
    assert backorder.state is DONE


def test_resend_repeats_the_command_in_flight() -> None:
    assert in_state(A).resend() == AllocateBackorder(transaction_id="tx-1", sku="SKU-1")
    assert in_state(C, "PRODUCT_WITHDRAWN").resend() == CancelBackorder(
        transaction_id="tx-1", sku="SKU-1", reason="PRODUCT_WITHDRAWN"
    )
    # a row cancelling from before reasons were recorded
    assert in_state(C).resend() == CancelBackorder(
        transaction_id="tx-1", sku="SKU-1", reason="DEADLINE_PASSED"
    )


def test_the_deadline_is_the_products_else_the_default() -> None:
    own = SkuKnowledge("SKU", True, 60, 1, 0)
    unset = SkuKnowledge("SKU", True, None, 1, 0)
    assert deadline(T0, own, 3600) == T0 + timedelta(seconds=60)
    assert deadline(T0, unset, 3600) == T0 + timedelta(hours=1)
    assert deadline(T0, None, 5) == T0 + timedelta(seconds=5)


def test_a_round_offers_the_stock_not_already_offered() -> None:
    assert [round_size(5, 2), round_size(2, 2), round_size(1, 3)] == [3, 0, 0]


def test_the_supplier_is_asked_for_whole_batches_of_the_shortfall() -> None:
    assert supplier_quantity(waiting=3, stock_hint=5, batch=10) == 0
    assert supplier_quantity(waiting=12, stock_hint=1, batch=10) == 20
    assert supplier_quantity(waiting=10, stock_hint=0, batch=10) == 10
    assert supplier_quantity(waiting=99_999, stock_hint=0, batch=10) == 5_000
