"""Group commit: requests that arrive together share one database transaction.

A caller `submit`s one item and awaits its own result. While a flush is running, new items
queue; the next flush takes all of them (up to `max_batch`) at once. So a lone request is
flushed at once, with no added wait, and under load one transaction (one commit, one fsync,
a few multi-row statements) serves many requests: the cost per request falls as load rises.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

from shared import metrics

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]


class QueueWaitExceeded(Exception):
    """The item waited longer than `max_wait_s` for its flush: it was never flushed."""


class GroupCommit(Generic[T, R]):
    def __init__(
        self,
        name: str,
        flush: Flush[T, R],
        *,
        max_batch: int = 256,
        max_wait_s: float | None = None,
        linger_s: float = 0.0,
    ) -> None:
        """`flush(items)` returns one result (or the exception for that item) per item, in
        order; if it raises, every item of the batch gets that exception. An item still
        queued after `max_wait_s` fails with QueueWaitExceeded without being flushed.
        `linger_s` > 0: a flush that would take fewer than `max_batch` items waits that long
        first, so that items arriving meanwhile share it (latency for fewer flushes)."""
        self._seconds = metrics.GROUP_COMMIT_SECONDS.labels(name)
        self._sizes = metrics.GROUP_COMMIT_SIZE.labels(name)
        self._flush = flush
        self._max_batch = max_batch
        self._max_wait_s = max_wait_s
        self._linger_s = linger_s
        self._queue: list[tuple[T, asyncio.Future[R], float]] = []
        self._drainer: asyncio.Task[None] | None = None

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def submit(self, item: T) -> R:
        # A caller that gives up (cancelled) does not cancel the flush its item is part of.
        return await asyncio.shield(self.enqueue(item))

    def enqueue(self, item: T) -> "asyncio.Future[R]":
        """Queues `item` and returns the future of its result, for a caller that waits on it
        its own way (a bounded wait, a callback when it ends). Cancelling the future is not
        the way to give up: it would fail the item in its flush; wait on it, or shield it."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future, time.monotonic()))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain(), name="group-commit")
        return future

    async def _drain(self) -> None:
        while self._queue:
            if self._linger_s > 0 and len(self._queue) < self._max_batch:
                await asyncio.sleep(self._linger_s)
            batch, self._queue = self._queue[: self._max_batch], self._queue[self._max_batch :]
            if self._max_wait_s is not None:
                now = time.monotonic()
                for item in batch:
                    if now - item[2] > self._max_wait_s:
                        _settle(item[1], QueueWaitExceeded())
                batch = [item for item in batch if not item[1].done()]
                if not batch:
                    continue
            began = time.perf_counter()
            try:
                results = await self._flush([item for item, _, _ in batch])
                if len(results) != len(batch):
                    raise RuntimeError(f"a flush of {len(batch)} gave {len(results)} results")
            except Exception as exc:
                results = [exc] * len(batch)
            except BaseException:  # cancelled (shutdown): no caller may wait forever
                for _, future, _ in [*batch, *self._queue]:
                    if not future.done():
                        future.cancel()
                raise
            self._seconds.observe(time.perf_counter() - began)
            self._sizes.observe(len(batch))
            for (_, future, _), result in zip(batch, results, strict=True):
                _settle(future, result)


def _settle(future: "asyncio.Future[R]", result: "R | BaseException") -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)
