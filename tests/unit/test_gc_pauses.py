"""Every collection of the garbage collector is timed, by generation, without a lock, and the
start's objects are moved out of its reach."""

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from shared.gc_pauses import GcPauses, freeze_startup_objects, watch_gc_pauses


def reading(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, {"service": "test", **labels}) or 0.0


@pytest.fixture
def registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(GcPauses("test"))
    return registry


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_each_collection_is_timed_in_its_generation(registry: CollectorRegistry) -> None:
    watch_gc_pauses()
    watch_gc_pauses()  # a second call adds no second callback
    gc.disable()  # no automatic collection in between
    try:
        count = "python_gc_pause_seconds_count"
        before = [reading(registry, count, generation=str(g)) for g in range(3)]
        gc.collect(0)
        gc.collect(2)
        after = [reading(registry, count, generation=str(g)) for g in range(3)]
    finally:
        gc.enable()
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 0, 1]
    full = {"generation": "2"}
    assert reading(registry, "python_gc_pause_seconds_sum", **full) > 0
    assert reading(registry, "python_gc_pause_seconds_bucket", le="+Inf", **full) == after[2]


# A collection started by an allocation inside prometheus_client's one lock of every metric
# (several worker processes: multiprocess mode), as `write_value` may allocate.
INSIDE_THE_LOCK = """
import gc, os, sys, tempfile
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
from prometheus_client import Counter, mmap_dict
from shared.gc_pauses import watch_gc_pauses

counter = Counter("gc_test_locked", "test")
write_value = mmap_dict.MmapedDict.write_value

def collecting_write_value(self, *args, **kwargs):
    gc.collect()
    return write_value(self, *args, **kwargs)

mmap_dict.MmapedDict.write_value = collecting_write_value
watch_gc_pauses()
counter.inc()
print("not stuck")
"""


def test_a_collection_inside_the_metrics_lock_does_not_hang_the_process() -> None:
    """Timing a collection must not need a lock the interrupted code may hold."""
    done = subprocess.run(
        [sys.executable, "-c", INSIDE_THE_LOCK],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "not stuck", done.stderr


def test_the_objects_of_the_start_are_frozen_and_later_cycles_still_collected(
    registry: CollectorRegistry, unfrozen: None
) -> None:
    class Node:
        def __init__(self) -> None:
            self.other: Node | None = None

    started = Node()
    frozen = freeze_startup_objects()
    assert frozen == gc.get_freeze_count() > 1_000
    assert reading(registry, "python_gc_frozen_objects") == frozen
    assert not any(o is started for o in gc.get_objects())  # no generation holds it now

    later, partner = Node(), Node()
    later.other, partner.other = partner, later
    del later, partner
    assert gc.collect() >= 2  # a cycle made after the freeze is freed as before
