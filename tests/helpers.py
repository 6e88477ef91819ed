"""Helpers for tests: waiting on conditions, unique names, driving the local stack."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import random
import sys
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar, overload

from shared.contracts import PlaceOrder

REPO_ROOT = Path(__file__).resolve().parents[1]
STACK_PY = REPO_ROOT / "deploy" / "local" / "stack.py"

T = TypeVar("T")


def unique(prefix: str) -> str:
    """A name no other test (nor an earlier run) uses: tests share one broker and one server."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def place_order(transaction_id: str, sku: str, price: str = "1.00") -> PlaceOrder:
    """A PlaceOrder from a fresh account, placed now, with no reply address."""
    return PlaceOrder(
        transaction_id=transaction_id,
        account_id=uuid.uuid4(),
        sku=sku,
        unit_price=Decimal(price),
        currency="USD",
        placed_at=datetime.now(UTC),
    )


def loopback_address_of_its_own() -> str:
    """A loopback address no other test uses (all of 127.0.0.0/8 is loopback on Linux), to
    connect from: admin failures are counted per client address, so a test making them from
    there cannot throttle the other tests' operator client, which connects from 127.0.0.1."""
    return f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(1, 254)}"


def fullwidth(text: str) -> str:
    """The text in fullwidth forms (U+FF01..U+FF5E), which NFKC maps back to ASCII."""
    return "".join(chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in text)


@overload
async def wait_until(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
) -> T: ...


@overload
async def wait_until(
    predicate: Callable[[], T],
    timeout: float = ...,  # noqa: ASYNC109
    interval: float = ...,
    message: str = ...,
) -> T: ...


async def wait_until(
    predicate: Callable[[], Any],
    timeout: float = 10.0,  # noqa: ASYNC109 - a deadline for polling, not for one await
    interval: float = 0.05,
    message: str = "",
) -> Any:
    """Poll `predicate` (sync or async) until it returns something truthy; return that.

    Tests synchronise on conditions with a deadline, never on sleeps. A predicate may also
    raise AssertionError to mean "not yet"; the last one is reported at the deadline.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return result
            last = result
        except AssertionError as exc:
            last = exc
        if loop.time() >= deadline:
            what = message or getattr(predicate, "__name__", repr(predicate))
            raise AssertionError(f"not true within {timeout:g}s: {what} (last: {last!r})")
        await asyncio.sleep(interval)


async def stackctl(
    command: str,
    *services: str,
    timeout: float = 180.0,  # noqa: ASYNC109 - also kills the command
) -> str:
    """`python3 deploy/local/stack.py COMMAND SERVICE...`, e.g. `await stackctl("kill", "api")`.

    Commands: start, stop, restart, kill (SIGKILL), status. Services: api, inventory,
    fulfilment, kafka, postgres. The caller's environment is passed on, so variables with the
    prefixes API_, INVENTORY_, FULFILMENT_, ORDERS_, SUPPLIER_ tune a (re)started service.
    Returns the command's output; fails the test with that output when it fails.
    """
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(STACK_PY),
        command,
        *services,
        cwd=REPO_ROOT,
        env=os.environ.copy(),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise AssertionError(
            f"stack.py {command} {' '.join(services)} took more than {timeout:g}s"
        ) from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise AssertionError(
            f"stack.py {command} {' '.join(services)} failed ({proc.returncode}):\n{text}"
        )
    return text


def load_stack_module() -> ModuleType:
    """The code behind deploy/local/stack.py, the package deploy/local/devstack (a script's
    package, not part of the project's): its Config, SERVICE_ENV_NAMES, prometheus_config_text."""
    return importlib.import_module("deploy.local.devstack")
