"""Every collection of the garbage collector is timed, by generation, without a lock, and the
start's objects are moved out of its reach."""

import gc
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from shared import gc_pauses
from shared.gc_pauses import flush_gc_pauses, freeze_startup_objects, watch_gc_pauses


def watched_service() -> str:
    """The service whose name the pauses of this process carry (the first one watched)."""
    watch_gc_pauses("test")
    return str(gc_pauses._observers[0]._labelvalues[0])


def reading(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, {"service": watched_service(), **labels}) or 0.0


@pytest.fixture
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()


def test_each_collection_is_timed_in_its_generation_once_flushed() -> None:
    watch_gc_pauses("test")
    watch_gc_pauses("test")  # a second call adds no second callback
    count = "python_gc_pause_seconds_count"
    gc.disable()  # no automatic collection in between
    try:
        flush_gc_pauses()
        before = [reading(count, generation=str(g)) for g in range(3)]
        gc.collect(0)
        gc.collect(2)
        noted = [reading(count, generation=str(g)) for g in range(3)]
        flush_gc_pauses()
        after = [reading(count, generation=str(g)) for g in range(3)]
    finally:
        gc.enable()
    assert noted == before  # noted by the callback, not yet in the histogram
    assert [a - b for a, b in zip(after, before, strict=True)] == [1, 0, 1]
    assert reading("python_gc_pause_seconds_sum", generation="2") > 0


def test_pauses_land_in_their_buckets_and_at_most_max_pending_wait() -> None:
    watch_gc_pauses("test")
    flush_gc_pauses()

    def bucket(le: str) -> float:
        return reading("python_gc_pause_seconds_bucket", generation="1", le=le)

    before = {le: bucket(le) for le in ("0.001", "0.002", "0.05", "0.1", "+Inf")}
    pending = gc_pauses._pending[1]
    pending.extend([0.001, 0.0015, 0.07])  # as the callback notes them
    flush_gc_pauses()
    added = {le: bucket(le) - was for le, was in before.items()}
    assert added == {"0.001": 1, "0.002": 2, "0.05": 2, "0.1": 3, "+Inf": 3}
    assert not pending

    pending.extend([0.0] * gc_pauses.MAX_PENDING)
    try:
        gc_pauses._on_collection("start", {"generation": 1})
        gc_pauses._on_collection("stop", {"generation": 1})
        assert len(pending) == gc_pauses.MAX_PENDING  # full: the newest is not kept
    finally:
        pending.clear()


# A collection started by an allocation inside prometheus_client's one lock of every metric
# (several worker processes: multiprocess mode), as `write_value` may allocate; then what
# the collection noted, flushed and read back as the merged metrics are.
INSIDE_THE_LOCK = """
import gc, os, sys, tempfile
os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp()
from prometheus_client import CollectorRegistry, Counter, mmap_dict
from prometheus_client.multiprocess import MultiProcessCollector
from shared.gc_pauses import flush_gc_pauses, watch_gc_pauses

counter = Counter("gc_test_locked", "test")
write_value = mmap_dict.MmapedDict.write_value

def collecting_write_value(self, *args, **kwargs):
    mmap_dict.MmapedDict.write_value = write_value
    gc.collect()
    return write_value(self, *args, **kwargs)

watch_gc_pauses("test")
mmap_dict.MmapedDict.write_value = collecting_write_value
counter.inc()
flush_gc_pauses()
merged = CollectorRegistry()
MultiProcessCollector(merged)
full = {"service": "test", "generation": "2"}
print("not stuck", merged.get_sample_value("python_gc_pause_seconds_count", full))
"""


def test_a_collection_inside_the_metrics_lock_does_not_hang_the_process() -> None:
    """Noting a pause must not need a lock the interrupted code may hold."""
    done = subprocess.run(
        [sys.executable, "-c", INSIDE_THE_LOCK],
        cwd=Path(__file__).parents[2],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.stdout.strip() == "not stuck 1.0", done.stderr


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
