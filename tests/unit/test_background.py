"""Supervised background tasks: one that dies is logged, shown down (metric and readiness)
and restarted after a delay; one that returns is done; stop cancels them all."""

import asyncio
import contextlib
import itertools
import logging

import pytest

from shared import metrics
from shared.runtime import Background, every, when_due
from shared.web import NotReady
from tests.helpers import wait_until


def up(task: str) -> float | None:
    return metrics.REGISTRY.get_sample_value(
        "background_task_up", {"service": "unit", "task": task}
    )


def restarts(task: str) -> float:
    value = metrics.REGISTRY.get_sample_value(
        "background_task_restarts_total", {"service": "unit", "task": task}
    )
    return value or 0.0


async def test_a_task_that_dies_is_shown_down_then_restarted() -> None:
    background = Background("unit")
    background.RESTART_DELAYS_S = (0.3,)
    runs = 0
    go_on = asyncio.Event()

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs == 1:
            raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte")
        await go_on.wait()

    check = background.check()
    before = restarts("flaky")
    background.start("flaky", flaky)
    try:
        await wait_until(lambda: "flaky" in background.down, timeout=5)
        assert up("flaky") == 0
        with pytest.raises(NotReady, match="flaky"):
            await check()
        assert restarts("flaky") == before + 1

        await wait_until(lambda: runs == 2, timeout=5, message="restarted")
        assert background.down == {}
        assert up("flaky") == 1
        await check()  # ready again
    finally:
        await background.stop()


async def test_a_task_that_returns_is_not_restarted_and_stop_cancels_the_rest() -> None:
    background = Background("unit")
    finished = asyncio.Event()
    cancelled = asyncio.Event()

    async def once() -> None:
        finished.set()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    background.start("once", once)
    background.start("forever", forever)
    await asyncio.wait_for(finished.wait(), 5)
    await background.stop()
    assert cancelled.is_set()
    assert background.down == {}
    assert restarts("once") == 0


class MustAct(Exception):
    pass


async def test_every_goes_on_after_an_error_but_escalates_one_an_operator_must_act_on() -> None:
    calls: list[str] = []

    async def step() -> None:
        calls.append("step")
        if len(calls) < 3:
            raise ValueError("transient")
        raise MustAct("key ids k9 missing")

    # transient errors are retried in the loop; the escalated one ends it, for the
    # supervisor to log in full and show the task down
    with pytest.raises(MustAct, match="k9"):
        await asyncio.wait_for(every(0.01, "unit step", step, escalate=(MustAct,)), 5)
    assert len(calls) == 3


async def test_a_task_whose_step_escalates_is_shown_down() -> None:
    background = Background("unit")
    background.RESTART_DELAYS_S = (30.0,)

    async def step() -> None:
        raise MustAct("act")

    background.start("escalating", lambda: every(0.01, "unit", step, escalate=(MustAct,)))
    try:
        await wait_until(lambda: up("escalating") == 0, timeout=5)
        with pytest.raises(NotReady):
            await background.check()()
    finally:
        await background.stop()


async def test_when_due_runs_at_the_due_time_it_was_given_and_when_woken() -> None:
    """The step runs again at the time it returned, and at once when woken; never on the
    look-again period here (30 s, longer than any of these waits)."""
    wake = asyncio.Event()
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def step() -> float | None:
        calls.append(loop.time())
        if len(calls) == 1:
            return 0.2
        if len(calls) == 3:
            wake.set()  # work committed while the round ran: the next round comes at once
        return None

    task = asyncio.create_task(when_due("unit due", step, wake, look_every_s=30, at_most_every_s=0))
    try:
        await wait_until(lambda: len(calls) == 2, timeout=5)
        assert calls[1] - calls[0] >= 0.2
        wake.set()
        await wait_until(lambda: len(calls) == 4, timeout=5)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_when_due_looks_again_on_its_own_and_retries_a_failed_round(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "shared.runtime")
    wake = asyncio.Event()
    outcomes: list[BaseException | float | None] = [ValueError("db down"), ValueError("again")]

    async def step() -> float | None:
        outcome = outcomes.pop(0) if outcomes else None
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    task = asyncio.create_task(
        when_due("unit due", step, wake, look_every_s=0.05, at_most_every_s=0.01)
    )
    try:
        # two failures, then rounds with nothing scheduled: it looks again every 0.05 s
        await wait_until(lambda: "unit due works again" in caplog.text, timeout=5)
        failed = [r for r in caplog.records if "unit due failed" in r.getMessage()]
        assert len(failed) == 1
        assert "ValueError" in failed[0].getMessage()
        assert "db down" not in caplog.text
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_when_due_rounds_are_at_least_the_minimum_apart() -> None:
    wake = asyncio.Event()
    calls: list[float] = []
    loop = asyncio.get_running_loop()

    async def step() -> float:
        calls.append(loop.time())
        wake.set()
        return 0.0  # always more due, and always woken

    task = asyncio.create_task(
        when_due("unit due", step, wake, look_every_s=30, at_most_every_s=0.1)
    )
    try:
        await wait_until(lambda: len(calls) >= 4, timeout=5)
        assert all(b - a >= 0.1 for a, b in itertools.pairwise(calls[:4]))
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
