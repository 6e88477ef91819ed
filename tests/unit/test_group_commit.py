"""GroupCommit: requests that arrive together share one flush (one transaction)."""

import asyncio
from collections.abc import Sequence

import pytest

from shared.batching import GroupCommit, QueueWaitExceeded
from tests.helpers import wait_until

DEADLINE_S = 5.0


class Flush:
    """A fake flush: records each batch it is given, answers `item * 10` per item, and can be
    held open (the first flush only, or every one) until `release` is set."""

    def __init__(self, *, hold_first: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.completed = 0
        self.release = asyncio.Event()
        self._hold_first = hold_first

    async def __call__(self, items: Sequence[int]) -> Sequence[int | BaseException]:
        self.batches.append(list(items))
        if self._hold_first and len(self.batches) == 1:
            await asyncio.wait_for(self.release.wait(), DEADLINE_S)
        self.completed += 1
        return [item * 10 for item in items]


async def submit_all(commit: GroupCommit[int, int], items: Sequence[int]) -> list[int]:
    return await asyncio.wait_for(asyncio.gather(*(commit.submit(i) for i in items)), DEADLINE_S)


async def first_flush_held(
    commit: GroupCommit[int, int], flush: Flush, item: int = 1
) -> "asyncio.Task[int]":
    """Submits `item` and returns once its flush has started (and is held open)."""
    caller = asyncio.create_task(commit.submit(item))
    await wait_until(lambda: flush.batches, timeout=DEADLINE_S, interval=0.001)
    return caller


async def queued(commit: GroupCommit[int, int], items: Sequence[int]) -> list["asyncio.Task[int]"]:
    """Submits `items` behind a held flush; returns once all of them wait in the queue."""
    before = commit.queued
    callers = [asyncio.create_task(commit.submit(i)) for i in items]
    await wait_until(
        lambda: commit.queued == before + len(items), timeout=DEADLINE_S, interval=0.001
    )
    return callers


async def test_a_lone_request_is_flushed_at_once_in_a_batch_of_one() -> None:
    flush = Flush()
    commit = GroupCommit("test", flush)

    assert await asyncio.wait_for(commit.submit(7), DEADLINE_S) == 70
    assert flush.batches == [[7]]


async def test_requests_arriving_during_a_flush_share_the_next_flush_in_submit_order() -> None:
    flush = Flush(hold_first=True)
    commit = GroupCommit("test", flush)
    first = await first_flush_held(commit, flush)
    later = await queued(commit, [2, 3, 4, 5])
    assert flush.batches == [[1]]

    flush.release.set()

    assert await asyncio.wait_for(first, DEADLINE_S) == 10
    assert await asyncio.wait_for(asyncio.gather(*later), DEADLINE_S) == [20, 30, 40, 50]
    assert flush.batches == [[1], [2, 3, 4, 5]]


async def test_an_item_refused_by_the_flush_fails_only_its_own_caller() -> None:
    batches: list[list[int]] = []

    async def refuse_odd(items: Sequence[int]) -> list[int | BaseException]:
        batches.append(list(items))
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]

    commit = GroupCommit("test", refuse_odd)
    results = await asyncio.wait_for(
        asyncio.gather(*(commit.submit(i) for i in [2, 3, 4]), return_exceptions=True),
        DEADLINE_S,
    )

    assert batches == [[2, 3, 4]], "the three items were meant to share one flush"
    assert results[0] == 20
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "odd 3"
    assert results[2] == 40


async def test_a_failed_flush_fails_every_caller_of_its_batch_and_the_next_batch_works() -> None:
    calls = 0

    async def fails_once(items: Sequence[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("database down")
        return [i * 10 for i in items]

    commit = GroupCommit("test", fails_once)
    results = await asyncio.wait_for(
        asyncio.gather(*(commit.submit(i) for i in [1, 2, 3]), return_exceptions=True),
        DEADLINE_S,
    )

    assert calls == 1
    assert all(isinstance(r, ConnectionError) for r in results), results
    assert await asyncio.wait_for(commit.submit(4), DEADLINE_S) == 40


async def test_max_batch_splits_a_long_queue_into_several_flushes() -> None:
    flush = Flush(hold_first=True)
    commit = GroupCommit("test", flush, max_batch=2)
    first = await first_flush_held(commit, flush)
    later = await queued(commit, [2, 3, 4, 5, 6])

    flush.release.set()

    assert await asyncio.wait_for(first, DEADLINE_S) == 10
    assert await asyncio.wait_for(asyncio.gather(*later), DEADLINE_S) == [20, 30, 40, 50, 60]
    assert flush.batches == [[1], [2, 3], [4, 5], [6]]


async def test_an_item_that_waited_past_max_wait_is_refused_without_being_flushed() -> None:
    max_wait_s = 0.1
    loop = asyncio.get_running_loop()
    flush = Flush(hold_first=True)
    commit = GroupCommit("test", flush, max_wait_s=max_wait_s)
    first = await first_flush_held(commit, flush)
    [stale] = await queued(commit, [2])
    queued_at = loop.time()
    # What is under test is elapsed time: let the queued item's wait exceed max_wait_s.
    await asyncio.sleep(max_wait_s * 1.5)
    assert loop.time() - queued_at > max_wait_s
    [fresh] = await queued(commit, [3])

    flush.release.set()

    assert await asyncio.wait_for(first, DEADLINE_S) == 10
    with pytest.raises(QueueWaitExceeded):
        await asyncio.wait_for(stale, DEADLINE_S)
    assert await asyncio.wait_for(fresh, DEADLINE_S) == 30
    assert flush.batches == [[1], [3]], "the stale item must never reach the flush"
    assert await asyncio.wait_for(commit.submit(4), DEADLINE_S) == 40


async def test_a_caller_that_gives_up_does_not_cancel_the_flush_of_its_batch() -> None:
    flush = Flush(hold_first=True)
    commit = GroupCommit("test", flush)
    # Both callers are in the held flush; the one cancelled is the one that started it.
    gives_up = asyncio.create_task(commit.submit(1))
    waits = asyncio.create_task(commit.submit(2))
    await wait_until(lambda: flush.batches, timeout=DEADLINE_S, interval=0.001)
    assert flush.batches == [[1, 2]], "the two items were meant to share one flush"

    gives_up.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gives_up
    flush.release.set()

    assert await asyncio.wait_for(waits, DEADLINE_S) == 20
    assert flush.completed == 1
    assert await asyncio.wait_for(commit.submit(3), DEADLINE_S) == 30


async def yield_to_the_drainer() -> None:
    for _ in range(3):
        await asyncio.sleep(0)  # a turn of the event loop each, not a wait for time


async def test_with_a_linger_a_lone_request_waits_for_the_ones_arriving_meanwhile() -> None:
    flush = Flush()
    commit = GroupCommit("test", flush, linger_s=DEADLINE_S / 10)

    first = asyncio.create_task(commit.submit(1))
    await yield_to_the_drainer()
    assert (flush.batches, commit.queued) == ([], 1)  # lingering, not flushed yet
    second = asyncio.create_task(commit.submit(2))

    assert await asyncio.wait_for(asyncio.gather(first, second), DEADLINE_S) == [10, 20]
    assert flush.batches == [[1, 2]]


async def test_a_full_batch_does_not_linger() -> None:
    flush = Flush()
    commit = GroupCommit("test", flush, max_batch=2, linger_s=DEADLINE_S * 2)

    assert await submit_all(commit, [1, 2]) == [10, 20]  # within DEADLINE_S: no linger
    assert flush.batches == [[1, 2]]


async def test_an_enqueued_item_is_flushed_whether_or_not_its_caller_waits_for_it() -> None:
    """`enqueue` hands out the item's future: a caller whose bounded wait runs out leaves the
    item in its flush, and learns the result when it ends."""
    flush = Flush(hold_first=True)
    commit = GroupCommit("test", flush)
    future = commit.enqueue(3)

    done, _ = await asyncio.wait({future}, timeout=0.01)

    assert not done
    assert commit.queued == 0, "the flush took it"
    flush.release.set()
    assert await asyncio.wait_for(future, DEADLINE_S) == 30
    assert flush.batches == [[3]]
