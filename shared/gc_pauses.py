"""The garbage collector of a service process: its pauses, measured, and the objects of its
start moved out of its reach.

A service holds 90,000-140,000 objects once started (modules, classes, FastAPI's and
pydantic's schemas, SQLAlchemy's metadata); CPython's oldest generation walks all of them on
every full collection, which stopped the api's event loop for about 100 ms twice in 30 s at
300 orders/s, and inventory's once (docs/benchmarks.md, "The garbage collector").
`freeze_startup_objects` moves them to the permanent generation, which no collection walks;
objects made later are collected as before."""

import gc
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

_watched: list[str] = []


def watch_gc_pauses(service: str) -> None:
    """Time every collection into GC_PAUSE_SECONDS (once per process; two calls to a
    perf_counter and one observation per collection, a few a second under load)."""
    if _watched:
        return
    _watched.append(service)
    by_generation = [GC_PAUSE_SECONDS.labels(service, str(g)) for g in range(3)]
    started = 0.0

    def on_collection(phase: str, info: dict[str, Any]) -> None:
        nonlocal started
        if phase == "start":
            started = time.perf_counter()
        else:
            by_generation[info["generation"]].observe(time.perf_counter() - started)

    gc.callbacks.append(on_collection)


def freeze_startup_objects(service: str) -> int:
    """Collect what the start left behind, then move every surviving object to the permanent
    generation. Returns how many objects were frozen. Call once, when the service is ready:
    a frozen object dropped later is still freed by its reference count, but a frozen cycle
    dropped later never is, so only what lives as long as the process should be frozen."""
    gc.collect()
    gc.freeze()
    frozen = gc.get_freeze_count()
    GC_FROZEN_OBJECTS.labels(service).set(frozen)
    return frozen
