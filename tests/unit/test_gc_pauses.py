"""Every collection of the garbage collector is timed, by generation, and the start's objects
are moved out of its reach."""

import gc
from collections.abc import Iterator

import pytest
from prometheus_client import REGISTRY

from shared.gc_pauses import freeze_startup_objects, watch_gc_pauses


def pauses(generation: int) -> float:
    labels = {"service": "test", "generation": str(generation)}
    return REGISTRY.get_sample_value("python_gc_pause_seconds_count", labels) or 0.0


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_each_collection_is_timed_in_its_generation() -> None:
    watch_gc_pauses("test")
    watch_gc_pauses("test")  # a second call adds no second callback
    gc.disable()  # no automatic collection in between
    try:
        before = [pauses(g) for g in range(3)]
        gc.collect(0)
        gc.collect(2)
        assert [pauses(g) - before[g] for g in range(3)] == [1, 0, 1]
    finally:
        gc.enable()


def test_the_objects_of_the_start_are_frozen_and_later_cycles_still_collected(
    unfrozen: None,
) -> None:
    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    started = Node()
    frozen = freeze_startup_objects("test")
    assert frozen == gc.get_freeze_count() > 1_000
    assert REGISTRY.get_sample_value("python_gc_frozen_objects", {"service": "test"}) == frozen
    assert not any(o is started for o in gc.get_objects())  # no generation holds it now

    later, partner = Node(), Node()
    later.other, partner.other = partner, later
    del later, partner
    assert gc.collect() >= 2  # a cycle made after the freeze is freed as before
