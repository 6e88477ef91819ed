"""The garbage collector of a service process: its pauses, measured, and the objects of its
start moved out of its reach.

A service holds 90,000-140,000 objects once started (modules, classes, FastAPI's and
pydantic's schemas, SQLAlchemy's metadata); CPython's oldest generation walks all of them on
every full collection, which stopped the api's event loop for about 100 ms twice in 30 s at
300 orders/s, and inventory's once (docs/benchmarks.md, "The garbage collector").
`freeze_startup_objects` moves them to the permanent generation, which no collection walks;
objects made later are collected as before.

The pauses are counted by a callback of the collector itself, which may run inside any
allocation, in any thread, including one that holds a lock of prometheus_client (with
several worker processes, one lock for every metric): so it only adds to a plain list, and
`GcPauses`, a collector read at each scrape, turns the list into series."""

import bisect
import gc
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client.metrics_core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

BOUNDS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25)
GENERATIONS = 3
# Per generation: a count for each bucket (the last one past every bound), then the sum.
_SLOTS = len(BOUNDS_S) + 2
_pauses: list[float] = [0] * (GENERATIONS * _SLOTS)
_started = [0.0]


def _on_collection(phase: str, info: dict[str, Any]) -> None:
    # No lock, no call into a library: see the module's docstring.
    if phase == "start":
        _started[0] = time.perf_counter()
        return
    took = time.perf_counter() - _started[0]
    base = info["generation"] * _SLOTS
    _pauses[base + bisect.bisect_left(BOUNDS_S, took)] += 1
    _pauses[base + _SLOTS - 1] += took


def watch_gc_pauses() -> None:
    """Time every collection of this process from now on (once per process: two calls to
    perf_counter and three list updates per collection, a few a second under load)."""
    if _on_collection not in gc.callbacks:
        gc.callbacks.append(_on_collection)


def freeze_startup_objects() -> int:
    """Collect what the start left behind, then move every surviving object to the permanent
    generation. Returns how many objects were frozen. Call once, when the service is ready:
    a frozen object dropped later is still freed by its reference count, but a frozen cycle
    dropped later never is, so only what lives as long as the process should be frozen."""
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class GcPauses(Collector):
    """`python_gc_pause_seconds` (a histogram by generation) and `python_gc_frozen_objects`
    of the process that is scraped."""

    def __init__(self, service: str) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        pauses = _pauses.copy()  # one C call: a collection cannot land in the middle
        histogram = HistogramMetricFamily(
            "python_gc_pause_seconds",
            "How long one collection of the garbage collector stopped the process, by "
            "generation (the process that answered the scrape).",
            labels=["service", "generation"],
        )
        for generation in range(GENERATIONS):
            base = generation * _SLOTS
            buckets, total = [], 0.0
            for i, bound in enumerate((*BOUNDS_S, float("inf"))):
                total += pauses[base + i]
                buckets.append(("+Inf" if bound == float("inf") else str(bound), total))
            histogram.add_metric(
                [self.service, str(generation)], buckets, sum_value=pauses[base + _SLOTS - 1]
            )
        yield histogram
        frozen = GaugeMetricFamily(
            "python_gc_frozen_objects",
            "Objects of the process's start moved to the permanent generation, out of the "
            "garbage collector's reach (0 until the service is ready).",
            labels=["service"],
        )
        frozen.add_metric([self.service], gc.get_freeze_count())
        yield frozen
