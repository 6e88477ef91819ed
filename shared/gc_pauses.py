"""The garbage collector of a service process: its pauses, measured, and the objects of its
start moved out of its reach.

A service holds 90,000-140,000 objects once started (modules, classes, FastAPI's and
pydantic's schemas, SQLAlchemy's metadata); CPython's oldest generation walks all of them on
every full collection, which stopped the api's event loop for about 100 ms twice in 30 s at
300 orders/s, and inventory's once (docs/benchmarks.md, "The garbage collector").
`freeze_startup_objects` moves them to the permanent generation, which no collection walks;
objects made later are collected as before.

The pauses are timed by a callback of the collector itself, which may run inside any
allocation, in any thread, including one that holds a lock of prometheus_client (with
several worker processes, one lock for every metric): so the callback only appends to a
plain list, and `flush_gc_pauses`, called from ordinary code (after each HTTP request and
before each scrape: shared/web.py), moves what it noted into the histogram. A process's
pauses thus reach /metrics with its next request, and with several api processes every
process's are merged as the other metrics are."""

import gc
import logging
import time
from typing import Any

from prometheus_client import Gauge, Histogram

GC_PAUSE_SECONDS = Histogram(
    "python_gc_pause_seconds",
    "How long one collection of the garbage collector stopped the process, by generation.",
    ["service", "generation"],
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25),
)
GC_FROZEN_OBJECTS = Gauge(
    "python_gc_frozen_objects",
    "Objects of the process's start moved to the permanent generation, out of the garbage "
    "collector's reach (0 until the service is ready).",
    ["service"],
    # With several api processes: 0 while any live one has not frozen its start.
    multiprocess_mode="livemin",
)

log = logging.getLogger(__name__)

# At most this many pauses wait per generation for a flush (a process nothing flushes
# would otherwise keep them all); past it, the newest are not counted.
MAX_PENDING = 10_000

_pending: tuple[list[float], list[float], list[float]] = ([], [], [])
_started = [0.0]
_observers: list[Any] = []  # the histogram's children of this process's service, by generation


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    # No lock, no call into a library: see the module's docstring.
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    pending = _pending[info["generation"]]
    if len(pending) < MAX_PENDING:
        pending.append(time.perf_counter() - _started[0])


def watch_gc_pauses(service: str) -> None:
    """Time every collection of this process from now on, as `service`'s (the first
    service that asks, once per process)."""
    if _on_collection in gc.callbacks:
        return
    _observers.extend(GC_PAUSE_SECONDS.labels(service, str(g)) for g in range(len(_pending)))
    gc.callbacks.append(_on_collection)


def flush_gc_pauses() -> None:
    """Move the pauses noted since the last flush into the histogram. Never from a
    collector's callback."""
    if not _observers:
        return
    for pending, observer in zip(_pending, _observers, strict=True):
        if pending:
            taken = pending.copy()
            del pending[: len(taken)]  # a pause noted meanwhile stays for the next flush
            for seconds in taken:
                observer.observe(seconds)


def freeze_startup_objects(service: str) -> int:
    """Collect what the start left behind, then move every surviving object to the permanent
    generation. Returns how many objects were frozen. Call once, when the service is ready:
    a frozen object dropped later is still freed by its reference count, but a frozen cycle
    dropped later never is, so only what lives as long as the process should be frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    GC_FROZEN_OBJECTS.labels(service).set(frozen)
    log.info("started: %d objects moved out of the garbage collector's reach", frozen)
    return frozen
