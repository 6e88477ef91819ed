"""Inventory's handlers on fakes: the story of a SKU's orders, stock and backorders."""

import logging
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from cryptography.exceptions import InvalidTag
from prometheus_client import REGISTRY

from services.inventory.domain.model import DecisionState, Refingerprinted
from services.inventory.service_layer import catalog
from services.inventory.service_layer.decisions import Reply, handle_commands
from shared.contracts import (
    AllocateBackorder,
    BackorderAllocated,
    BackorderCancelled,
    BackorderStillWaiting,
    CancelBackorder,
    CancelReason,
    Decision,
    DeliverStock,
    InventoryCommand,
    Message,
    OrderBackordered,
    OrderReserved,
    PlaceOrder,
    ProductSnapshot,
    StockArrived,
)
from shared.crypto import Binding, Code, SealedCode
from shared.topics import CATALOG_PRODUCTS, INVENTORY_EVENTS
from tests.helpers import fullwidth
from tests.inventory_contract import VAULT, OldCode
from tests.inventory_fakes import FakeCodes, FakeStockRoom, FakeStore, UniqueViolation

SKU = "SKU-GIFT-10"
ACCOUNT = uuid.uuid4()
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def place(tx: str, sku: str = SKU, reply_to: str | None = "orders.replies") -> PlaceOrder:
    return PlaceOrder(
        transaction_id=tx,
        account_id=ACCOUNT,
        sku=sku,
        unit_price=Decimal("10.00"),
        currency="USD",
        placed_at=T0 + timedelta(seconds=len(tx)),
        reply_to=reply_to,
    )


def allocate(tx: str, sku: str = SKU) -> AllocateBackorder:
    return AllocateBackorder(transaction_id=tx, sku=sku)


def cancel(tx: str, sku: str = SKU) -> CancelBackorder:
    return CancelBackorder(transaction_id=tx, sku=sku, reason="DEADLINE_PASSED")


@pytest.fixture
def store() -> FakeStore:
    return FakeStore()


async def create_product(store: FakeStore, sku: str = SKU) -> ProductSnapshot:
    return await catalog.put_product(
        ProductSnapshot(sku=sku, name="Gift card", currency="USD", price=Decimal("10.00")),
        store.uow(),
        VAULT,
    )


async def stock(store: FakeStore, *redeem_codes: str, sku: str = SKU) -> catalog.StockAdded:
    codes = [Code(redeem_code=c, pin_code="0042") for c in redeem_codes]
    return await catalog.add_stock(sku, codes, store.uow(), VAULT)


async def run(store: FakeStore, *commands: InventoryCommand) -> list[Reply]:
    return await handle_commands(list(commands), store.uow())


def events(store: FakeStore) -> list[Message]:
    return store.events(INVENTORY_EVENTS.name)


def opened(sold: Decision | OrderReserved | BackorderAllocated, sku: str = SKU) -> str:
    assert sold.sealed_code is not None
    return VAULT.open(SealedCode.from_wire(sold.sealed_code), sku, sold.stock_id).redeem_code


async def test_an_order_in_stock_is_reserved_with_the_oldest_code(store: FakeStore) -> None:
    await create_product(store)
    await stock(store, "FIRST", "SECOND")

    [reply] = await run(store, place("tx-1"))

    assert reply.topic == "orders.replies"
    assert reply.decision.outcome == "RESERVED"
    assert opened(reply.decision) == "FIRST"
    reserved = events(store)[-1]
    assert isinstance(reserved, OrderReserved)
    assert (reserved.transaction_id, reserved.stock_id) == ("tx-1", reply.decision.stock_id)
    assert reserved.sealed_code == reply.decision.sealed_code
    assert store.state.decisions["tx-1"].state is DecisionState.RESERVED


async def test_an_order_out_of_stock_is_backordered(store: FakeStore) -> None:
    await create_product(store)
    [reply] = await run(store, place("tx-1"))
    assert (reply.decision.outcome, reply.decision.stock_id, reply.decision.sealed_code) == (
        "BACKORDERED",
        None,
        None,
    )
    backordered = events(store)[-1]
    assert isinstance(backordered, OrderBackordered)
    assert backordered.placed_at == place("tx-1").placed_at


async def test_new_orders_wait_behind_backorders_even_when_stock_arrives(
    store: FakeStore,
) -> None:
    await create_product(store)
    await run(store, place("early"))
    await stock(store, "ONLY-ONE")

    [late] = await run(store, place("late"))
    assert late.decision.outcome == "BACKORDERED"  # the early one is served first

    await run(store, allocate("early"))
    allocated = events(store)[-1]
    assert isinstance(allocated, BackorderAllocated)
    assert opened(allocated) == "ONLY-ONE"

    await run(store, allocate("late"))
    assert isinstance(events(store)[-1], BackorderStillWaiting)
    await stock(store, "NEXT")
    await run(store, allocate("late"))
    assert isinstance(events(store)[-1], BackorderAllocated)
    [fresh] = await run(store, place("fresh"))
    assert fresh.decision.outcome == "BACKORDERED"  # no stock left, and nobody waits: fair


async def test_a_redelivered_order_gets_its_stored_outcome_and_claims_nothing(
    store: FakeStore,
) -> None:
    await create_product(store)
    await stock(store, "A", "B")
    [first] = await run(store, place("tx-1"))
    published = len(events(store))

    [again] = await run(store, place("tx-1"))

    assert again.decision == first.decision
    # Announced again, identically (a lost event is repaired), and nothing more is claimed.
    announced = events(store)[published:]
    assert [type(e).__name__ for e in announced] == ["OrderReserved"]
    original = events(store)[published - 1]
    assert announced[0].model_dump(exclude={"event_id", "occurred_at"}) == original.model_dump(
        exclude={"event_id", "occurred_at"}
    )
    assert (await catalog.product_with_stock(SKU, store.uow()))[1].available == 1


async def test_a_redelivered_backorder_keeps_its_answer_after_allocation(
    store: FakeStore,
) -> None:
    await create_product(store)
    await run(store, place("tx-1"))
    await stock(store, "A")
    await run(store, allocate("tx-1"))
    [again] = await run(store, place("tx-1"))
    assert again.decision.outcome == "BACKORDERED"
    assert store.state.decisions["tx-1"].state is DecisionState.ALLOCATED


async def test_a_batch_is_decided_in_order_in_one_commit(store: FakeStore) -> None:
    await create_product(store)
    await create_product(store, "OTHER")
    await stock(store, "O-1", sku="OTHER")
    commits = store.commits

    replies = await run(
        store,
        place("a"),  # no stock: waits
        cancel("a"),  # no longer waits ...
        place("b"),  # ... so b is not queued behind a, but there is no code either
        place("c", sku="OTHER"),
        place("c", sku="OTHER"),  # the same order twice in the batch
        place("d", reply_to=None),
    )

    assert store.commits == commits + 1
    assert [(r.decision.transaction_id, r.decision.outcome) for r in replies] == [
        ("a", "BACKORDERED"),
        ("b", "BACKORDERED"),
        ("c", "RESERVED"),
        ("c", "RESERVED"),
    ]
    assert replies[2].decision == replies[3].decision
    assert store.state.decisions["a"].state is DecisionState.CANCELLED
    assert [type(e).__name__ for e in events(store) if not isinstance(e, StockArrived)] == [
        "OrderBackordered",
        "BackorderCancelled",
        "OrderBackordered",
        "OrderReserved",
        "OrderBackordered",
    ]


async def test_a_cancelled_backorder_frees_the_queue(store: FakeStore) -> None:
    await create_product(store)
    await run(store, place("waiting"))
    await stock(store, "A")
    await run(store, cancel("waiting"))
    [reply] = await run(store, place("next"))
    assert reply.decision.outcome == "RESERVED"


async def test_cancel_after_allocation_changes_nothing_and_announces_the_allocation(
    store: FakeStore,
) -> None:
    await create_product(store)
    await run(store, place("tx-1"))
    await stock(store, "A")
    await run(store, allocate("tx-1"))
    [allocated] = [e for e in events(store) if isinstance(e, BackorderAllocated)]

    # A sender that never saw the allocation (its event dead-lettered) asks again: it is told.
    await run(store, cancel("tx-1"), allocate("tx-1"))

    again = [e for e in events(store) if isinstance(e, BackorderAllocated)]
    assert [(e.transaction_id, e.stock_id, e.sealed_code) for e in again] == [
        (allocated.transaction_id, allocated.stock_id, allocated.sealed_code)
    ] * 3
    assert not [e for e in events(store) if isinstance(e, BackorderCancelled)]
    assert store.state.decisions["tx-1"].state is DecisionState.ALLOCATED


async def test_cancel_twice_cancels_once(store: FakeStore) -> None:
    await create_product(store)
    await run(store, place("tx-1"))
    await run(store, cancel("tx-1"))
    await run(store, cancel("tx-1"), allocate("tx-1"))
    cancelled = [e for e in events(store) if isinstance(e, BackorderCancelled)]
    # cancelled once, and each repeated command is answered with the cancellation again
    assert [(e.transaction_id, e.reason) for e in cancelled] == [("tx-1", "DEADLINE_PASSED")] * 3
    assert not [e for e in events(store) if isinstance(e, BackorderAllocated)]
    assert store.state.decisions["tx-1"].state is DecisionState.CANCELLED


async def test_commands_for_unknown_orders_change_nothing(store: FakeStore) -> None:
    await create_product(store)
    await stock(store, "A")
    published = len(store.outbox)
    await run(store, allocate("nobody"), cancel("nobody"))
    assert len(store.outbox) == published
    assert await catalog.available_per_product(store.uow()) == {SKU: 1}


def cancel_undecided(tx: str, reason: CancelReason = "DEADLINE_PASSED") -> CancelBackorder:
    """The api's cancellation of an order inventory never decided: it says whose it is."""
    return CancelBackorder(
        transaction_id=tx, sku=SKU, reason=reason, account_id=ACCOUNT, placed_at=T0
    )


async def test_an_order_never_decided_is_cancelled_and_a_late_placeorder_sells_nothing(
    store: FakeStore,
) -> None:
    await create_product(store)
    await stock(store, "A")

    # Its PlaceOrder never got decided (dead-lettered on every delivery); the api cancels it.
    await run(store, cancel_undecided("lost", "CANCELLED_BY_OPERATOR"))
    # The PlaceOrder arrives after all (re-driven, or asked again): it is told the order ended.
    replies = await run(store, place("lost"), cancel_undecided("lost"))

    cancelled = [e for e in events(store) if isinstance(e, BackorderCancelled)]
    assert [(e.transaction_id, e.account_id, e.reason) for e in cancelled] == [
        ("lost", ACCOUNT, "CANCELLED_BY_OPERATOR")
    ] * 3
    assert not [e for e in events(store) if isinstance(e, OrderReserved | OrderBackordered)]
    assert [r.decision.outcome for r in replies] == ["BACKORDERED"]  # not a code
    decision = store.state.decisions["lost"]
    assert (decision.state, decision.cancel_reason) == (
        DecisionState.CANCELLED,
        "CANCELLED_BY_OPERATOR",
    )
    assert await catalog.available_per_product(store.uow()) == {SKU: 1}  # the code is unsold


async def test_a_decided_order_is_not_cancelled_by_the_api_it_is_announced(
    store: FakeStore,
) -> None:
    await create_product(store)
    await stock(store, "A")
    await run(store, place("sold"))
    await run(store, cancel_undecided("sold"))
    assert store.state.decisions["sold"].state is DecisionState.RESERVED
    reserved = [e for e in events(store) if isinstance(e, OrderReserved)]
    assert [e.transaction_id for e in reserved] == ["sold", "sold"]  # told again, not cancelled
    assert not [e for e in events(store) if isinstance(e, BackorderCancelled)]


async def test_a_failing_batch_leaves_nothing_behind(store: FakeStore) -> None:
    await create_product(store)
    await stock(store, "A")
    await run(store, place("tx-1"))
    published, state = len(store.outbox), store.state
    store.state.decisions.pop("tx-1")  # make the code claim clash with its order

    with pytest.raises(Exception, match="transaction_id"):
        await run(store, place("other", sku=SKU), place("tx-1"))

    assert len(store.outbox) == published
    assert store.state is state


# --- catalog and stock ---------------------------------------------------------------------


async def test_each_product_change_is_a_new_version_on_catalog_products(
    store: FakeStore,
) -> None:
    first = await create_product(store)
    second = await create_product(store)
    withdrawn = await catalog.withdraw_product(SKU, store.uow())
    again = await catalog.withdraw_product(SKU, store.uow())

    assert (first.version, second.version, withdrawn.version) == (1, 2, 3)
    assert (withdrawn.active, again) == (False, withdrawn)
    snapshots = store.events(CATALOG_PRODUCTS.name)
    assert [(s.version, s.active) for s in snapshots if isinstance(s, ProductSnapshot)] == [
        (1, True),
        (2, True),
        (3, False),
    ]
    assert [row.key for row in store.outbox] == [SKU] * 3
    with pytest.raises(catalog.ProductNotFound):
        await catalog.withdraw_product("NOPE", store.uow())


async def test_stock_skips_duplicates_and_announces_arrivals(store: FakeStore) -> None:
    await create_product(store)
    first = await stock(store, "A", "B", "A")
    second = await stock(store, "B", "C")
    third = await stock(store, "C")

    assert (first.added, first.skipped, first.available) == (2, 1, 2)
    assert (second.added, second.skipped, second.available) == (1, 1, 3)
    assert (third.added, third.skipped) == (0, 1)
    arrivals = [e for e in events(store) if isinstance(e, StockArrived)]
    assert [(e.added, e.available) for e in arrivals] == [(2, 2), (1, 3)]
    product, level = await catalog.product_with_stock(SKU, store.uow())
    assert (product.sku, level.available, level.sold) == (SKU, 3, 0)


async def test_stock_for_an_unknown_product_is_refused(store: FakeStore) -> None:
    with pytest.raises(catalog.ProductNotFound):
        await stock(store, "A", sku="UNKNOWN")
    with pytest.raises(ValueError, match="between 1 and"):
        await catalog.add_stock(SKU, [], store.uow(), VAULT)


async def test_no_plaintext_code_in_any_event(store: FakeStore) -> None:
    await create_product(store)
    await stock(store, "PLAIN-SECRET-1", "PLAIN-SECRET-2")
    await run(store, place("tx-1"), place("tx-2"), place("tx-3"))
    await stock(store, "PLAIN-SECRET-3")
    await run(store, allocate("tx-3"))
    payloads = b"".join(row.message.to_bytes() for row in store.outbox)
    assert b"PLAIN-SECRET" not in payloads


async def test_products_page_with_stock(store: FakeStore) -> None:
    for sku in ("B", "A", "C"):
        await create_product(store, sku)
    await stock(store, "X", sku="B")
    total, page = await catalog.products_with_stock(store.uow(), limit=2, offset=0)
    assert total == 3
    assert [(p.sku, s.available) for p, s in page] == [("A", 0), ("B", 1)]


# --- stock intake: duplicates in any form, codes sealed to their stock item ----------------


async def test_a_code_in_another_form_case_or_with_invisibles_is_a_duplicate(
    store: FakeStore,
) -> None:
    await create_product(store)
    await create_product(store, "OTHER")
    await stock(store, "GIFT-ABCD-1234")

    again = await stock(
        store,
        "gift-abcd-1234",
        fullwidth("GIFT-ABCD-1234"),
        "GIFT-ABCD-1234\u200b",
        "GIFT-ABCD-1235",
        sku="OTHER",
    )

    assert (again.added, again.skipped) == (1, 3)


async def test_a_stocked_code_opens_only_as_its_own_stock_item(store: FakeStore) -> None:
    await create_product(store)
    await stock(store, "FIRST", "SECOND")
    first, second = sorted(store.state.codes.values(), key=lambda row: row.id)

    assert VAULT.open(first.sealed, SKU, first.id).redeem_code == "FIRST"
    second.sealed = first.sealed  # a ciphertext copied onto another row of the SKU
    _, reply = await run(store, place("tx-1"), place("tx-2"))
    assert reply.decision.stock_id == second.id
    with pytest.raises(InvalidTag):
        opened(reply.decision)


def delivery(
    *redeem_codes: str, delivery_id: str = "d-1", pin_code: str | None = "7"
) -> DeliverStock:
    sealed = [VAULT.seal_to_sku(Code(c, pin_code), SKU).to_wire() for c in redeem_codes]
    return DeliverStock(delivery_id=delivery_id, sku=SKU, sealed_codes=sealed)


def refused(field: str) -> float:
    labels = {"field": field}
    return REGISTRY.get_sample_value("inventory_supplier_codes_refused_total", labels) or 0.0


async def test_codes_a_delivery_leaves_out_are_counted_and_logged_without_their_value(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    await create_product(store)
    before = {field: refused(field) for field in ("redeemCode", "pinCode")}
    bad_pin = "12\u200b34"

    with caplog.at_level(logging.WARNING):
        await handle_commands(
            [
                delivery("SECRET\u200b-REDEEM-1", "GOOD-1", delivery_id="d-bad-redeem"),
                delivery("SECRET-REDEEM-2", delivery_id="d-bad-pin", pin_code=bad_pin),
            ],
            store.uow(),
            VAULT,
        )

    assert refused("redeemCode") - before["redeemCode"] == 1
    assert refused("pinCode") - before["pinCode"] == 1
    assert "delivery d-bad-redeem: code 1 left out: redeemCode" in caplog.text
    assert "delivery d-bad-pin: code 1 left out: pinCode" in caplog.text
    assert "SECRET" not in caplog.text
    assert bad_pin not in caplog.text
    assert len(store.state.codes) == 1  # GOOD-1


async def test_a_delivery_to_an_integer_product_leaves_out_pins_an_integer_cannot_carry(
    store: FakeStore, caplog: pytest.LogCaptureFixture
) -> None:
    await catalog.put_product(
        ProductSnapshot(
            sku=SKU, name="Gift card", currency="USD", price=Decimal("10.00"), pin_kind="integer"
        ),
        store.uow(),
        VAULT,
    )
    before = refused("pinCode")

    with caplog.at_level(logging.WARNING):
        await handle_commands(
            [
                delivery("FITS-1", delivery_id="d-fits", pin_code="4711"),
                delivery("ODD-1", delivery_id="d-odd", pin_code="0042"),
                delivery("NONE-1", delivery_id="d-none", pin_code=None),
            ],
            store.uow(),
            VAULT,
        )

    assert refused("pinCode") - before == 1
    assert "delivery d-odd: code 1 left out: pinCode is not an integer PIN" in caplog.text
    assert "0042" not in caplog.text
    assert len(store.state.codes) == 2  # FITS-1 and NONE-1


async def test_making_a_product_integer_is_refused_while_a_code_for_sale_has_another_pin(
    store: FakeStore,
) -> None:
    await create_product(store)  # string: any PIN
    await stock(store, "ODD-1")  # PIN 0042
    integer = ProductSnapshot(
        sku=SKU, name="Gift card", currency="USD", price=Decimal("10.00"), pin_kind="integer"
    )

    with pytest.raises(catalog.PinsNotInteger) as refusal:
        await catalog.put_product(integer, store.uow(), VAULT)

    assert refusal.value.stock_ids == [c for c in store.state.codes]
    async with store.uow() as uow:
        kept = await uow.products.get(SKU)
    assert kept is not None
    assert kept.pin_kind == "string"


async def test_an_integer_product_with_backorders_waiting_stays_integer(
    store: FakeStore,
) -> None:
    integer = ProductSnapshot(
        sku=SKU, name="Gift card", currency="USD", price=Decimal("10.00"), pin_kind="integer"
    )
    await catalog.put_product(integer, store.uow(), VAULT)
    await handle_commands([place("tx-waits")], store.uow(), VAULT)  # no stock: backordered

    with pytest.raises(catalog.BackordersWaiting):
        await catalog.put_product(
            integer.model_copy(update={"pin_kind": "string"}), store.uow(), VAULT
        )
    async with store.uow() as uow:
        kept = await uow.products.get(SKU)
    assert kept is not None
    assert kept.pin_kind == "integer"

    await handle_commands([cancel("tx-waits")], store.uow(), VAULT)
    made = await catalog.put_product(
        integer.model_copy(update={"pin_kind": "string"}), store.uow(), VAULT
    )
    assert made.pin_kind == "string"


async def test_a_delivery_is_stocked_sealed_to_its_stock_items_without_duplicates(
    store: FakeStore,
) -> None:
    await create_product(store)
    await stock(store, "KNOWN-1")

    await handle_commands(
        [delivery("known-1", "NEW-1", "new-1", "BAD\u200b-1", "BAD\x85-2", "NEW-2")],
        store.uow(),
        VAULT,
    )

    rows = sorted(store.state.codes.values(), key=lambda row: row.id)
    assert [VAULT.open(r.sealed, SKU, r.id).redeem_code for r in rows] == [
        "KNOWN-1",
        "NEW-1",
        "NEW-2",
    ]
    assert {r.sealed.binding for r in rows} == {Binding.STOCK_ITEM}
    arrived = events(store)[-1]
    assert isinstance(arrived, StockArrived)
    assert (arrived.added, arrived.available) == (2, 3)


async def test_while_old_fingerprints_are_left_orders_backorder_and_deliveries_wait(
    store: FakeStore,
) -> None:
    # Review findings 1 and 2: the batch is decided (never rolled back for the delivery), the
    # old code is not sold, the delivery waits; re-fingerprinting announces the old code
    # (so the backorder is served) and stocks the delivery.
    await create_product(store)
    [old] = await FakeStockRoom(store).stock_the_old_way(SKU, [OldCode("OLD-1")])

    with pytest.raises(catalog.RefingerprintPending):
        await stock(store, "old-1")
    replies = await handle_commands(
        [place("tx-1"), delivery("old-1", "Old-1", "NEW-1")], store.uow(), VAULT
    )
    assert [r.decision.outcome for r in replies] == ["BACKORDERED"]
    assert store.state.decisions["tx-1"].state is DecisionState.BACKORDERED
    assert list(store.state.pending_deliveries) == ["d-1"]
    assert sorted(store.state.codes) == [old]

    done = await catalog.refingerprint_stock(store.uow, VAULT)

    assert (done.refingerprinted, done.deliveries) == (1, 1)
    assert store.state.pending_deliveries == {}
    arrived = [e for e in events(store) if isinstance(e, StockArrived)]
    assert [(e.added, e.available) for e in arrived] == [(1, 1), (1, 2)]
    # NEW-1 is stocked: an id is taken for each code delivered, duplicates too.
    assert sorted(store.state.codes) == [old, old + 3]
    assert (await stock(store, "OLD-1", "NEW-1")).added == 0
    await run(store, allocate("tx-1"))
    assert store.state.decisions["tx-1"].state is DecisionState.ALLOCATED


async def test_a_re_fingerprinting_batch_that_clashes_is_tried_again_quietly(
    store: FakeStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Review finding 7: a unique fingerprint taken meanwhile (another process) is retried;
    # nothing at error level, no fingerprint in the log.
    await create_product(store)
    [old] = await FakeStockRoom(store).stock_the_old_way(SKU, [OldCode("OLD-1")])
    clashes = [UniqueViolation("Key (fingerprint)=(\\xdeadbeef) already exists")]
    refingerprint = FakeCodes.refingerprint

    async def clash_once(self: FakeCodes, codes: Sequence[Refingerprinted]) -> None:
        if clashes:
            raise clashes.pop()
        await refingerprint(self, codes)

    monkeypatch.setattr(FakeCodes, "refingerprint", clash_once)
    with caplog.at_level(logging.INFO):
        done = await catalog.refingerprint_stock(store.uow, VAULT)

    assert done.refingerprinted == 1
    assert store.state.codes[old].fingerprint_version == 2
    assert "clashed (UniqueViolation)" in caplog.text
    assert "deadbeef" not in caplog.text
    assert all(r.levelno < logging.ERROR for r in caplog.records)
