"""The Authenticator over the fake repositories: what an operator ends stops authenticating
once the cache's entries expire, what it brings back works again; under a flood of wrong
credentials, refusals are remembered, failures throttled and lookups bounded."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from services.api.domain.model import AccountNotFound, Credential
from services.api.service_layer import accounts, throttling
from services.api.service_layer.unit_of_work import UnitOfWork
from shared.crypto import hash_secret
from tests.api_fakes import FakeCredentials, FakeStore
from tests.helpers import wait_until

SLOTS = 4


async def issued(store: FakeStore) -> accounts.IssuedCredentials:
    credentials, _ = await accounts.create_account(
        store.uow(), "Acme", [("USD", Decimal("3.00"))], SLOTS
    )
    return credentials


async def test_revoked_tokens_stop_authenticating_and_the_key_takes_a_new_token() -> None:
    store = FakeStore()
    pair = await issued(store)
    auth = accounts.Authenticator(store.uow, ttl_s=0)
    assert await auth.caller(pair.api_key, pair.access_token) is not None

    assert await accounts.revoke_tokens(store.uow(), pair.account_id) == 1

    assert await auth.caller(pair.api_key, pair.access_token) is None
    token, _ = await accounts.rotate_token(store.uow(), pair.account_id, timedelta(0))
    assert await auth.caller(pair.api_key, token) is not None
    assert await auth.caller(pair.api_key, pair.access_token) is None


async def test_a_disabled_account_authenticates_with_nothing_until_enabled() -> None:
    store = FakeStore()
    pair = await issued(store)
    auth = accounts.Authenticator(store.uow, ttl_s=0)

    disabled_at = await accounts.disable_account(store.uow(), pair.account_id)

    assert await auth.caller(pair.api_key, pair.access_token) is None
    token, _ = await accounts.rotate_token(store.uow(), pair.account_id, timedelta(0))
    assert await auth.caller(pair.api_key, token) is None
    assert await accounts.disable_account(store.uow(), pair.account_id) == disabled_at
    assert (await accounts.account(store.uow(), pair.account_id)).account.disabled_at == disabled_at

    await accounts.enable_account(store.uow(), pair.account_id)

    assert await auth.caller(pair.api_key, token) is not None
    assert (await accounts.account(store.uow(), pair.account_id)).account.disabled_at is None


@pytest.mark.parametrize(
    "action", [accounts.revoke_tokens, accounts.disable_account, accounts.enable_account]
)
async def test_an_unknown_account_is_not_found(
    action: Callable[[UnitOfWork, uuid.UUID], Awaitable[object]],
) -> None:
    with pytest.raises(AccountNotFound):
        await action(FakeStore().uow(), uuid.uuid4())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Lookups:
    """The store's credential lookups, counted: how many, and how many at once; `gate`,
    when set, holds every lookup until it is opened."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.count = self.running = self.most_at_once = 0
        self.gate: asyncio.Event | None = None
        self.ungated: set[bytes] = set()  # API keys (hashed) the gate lets through

    def uow(self) -> UnitOfWork:
        lookups, uow = self, self.store.uow()
        live = FakeCredentials.live

        class Counted(FakeCredentials):
            async def live(self, api_key_hash: bytes, token_hash: bytes) -> list[Credential]:
                lookups.count += 1
                lookups.running += 1
                lookups.most_at_once = max(lookups.most_at_once, lookups.running)
                try:
                    if lookups.gate is not None and api_key_hash not in lookups.ungated:
                        await lookups.gate.wait()
                    return await live(self, api_key_hash, token_hash)
                finally:
                    lookups.running -= 1

        opened = uow._open

        async def _open() -> None:
            await opened()
            uow.credentials = Counted(uow._current)

        uow._open = _open  # type: ignore[method-assign]
        return uow


HERE, THERE = ("192.0.2.1", 1111), ("198.51.100.7", 2222)


def authenticator(lookups: Lookups, clock: Clock, **options: Any) -> accounts.Authenticator:
    return accounts.Authenticator(lookups.uow, ttl_s=5, clock=clock, **options)


async def test_a_refused_key_costs_no_lookup_until_the_ttl_has_passed() -> None:
    store, clock = FakeStore(), Clock()
    lookups = Lookups(store)
    auth = authenticator(lookups, clock)
    pair = await issued(store)

    assert await auth.caller("ak_unknown", "tk_one", HERE) is None
    assert await auth.caller("ak_unknown", "tk_two", HERE) is None  # any token
    assert await auth.caller(pair.api_key, "tk_wrong", HERE) is None
    assert await auth.caller(pair.api_key, "tk_wrong", HERE) is None
    assert lookups.count == 2
    # The live key with its own token is not refused for the wrong one's sake.
    assert await auth.caller(pair.api_key, pair.access_token, HERE) is not None
    assert lookups.count == 3

    await accounts.disable_account(store.uow(), pair.account_id)
    clock.now += 5
    assert await auth.caller(pair.api_key, pair.access_token, HERE) is None
    await accounts.enable_account(store.uow(), pair.account_id)
    assert await auth.caller(pair.api_key, pair.access_token, HERE) is None  # remembered
    clock.now += 4.9
    assert await auth.caller(pair.api_key, pair.access_token, HERE) is None
    clock.now += 0.1
    assert await auth.caller(pair.api_key, pair.access_token, HERE) is not None


async def test_failures_are_throttled_per_client_network_and_per_key_prefix() -> None:
    store, clock = FakeStore(), Clock()
    auth = authenticator(Lookups(store), clock, failures_burst=3, failures_per_s=0.5)
    pair = await issued(store)
    assert await auth.caller(pair.api_key, pair.access_token, HERE) is not None  # cached

    for n in range(3):
        assert await auth.caller(f"ak_{n}guessed", "tk_x", HERE) is None
    with pytest.raises(accounts.LoginsThrottled) as throttled:
        await auth.caller("ak_9guessed", "tk_x", HERE)

    assert (throttled.value.by, throttled.value.retry_after_s) == ("address", 2.0)
    assert await auth.caller(pair.api_key, pair.access_token, HERE) is not None  # a hit
    assert await auth.caller("ak_9guessed", "tk_x", THERE) is None  # another client
    clock.now += 2
    assert await auth.caller("ak_9guessed", "tk_x", HERE) is None  # one more, refilled

    # One API key's prefix, from many networks: the key is throttled wherever it comes from.
    for n in range(3):
        forged = pair.api_key[:11] + f"forged{n}"
        assert await auth.caller(forged, "tk_x", (f"10.0.0.{n}", 1)) is None
    with pytest.raises(accounts.LoginsThrottled) as throttled:
        await auth.caller(pair.api_key[:11] + "forged9", "tk_x", ("10.0.0.9", 1))
    assert throttled.value.by == "key_prefix"


async def test_a_client_repeating_a_refused_pair_is_answered_401_not_throttled() -> None:
    store, clock = FakeStore(), Clock()
    lookups = Lookups(store)
    auth = authenticator(lookups, clock, failures_burst=2)
    pair = await issued(store)
    await accounts.revoke_tokens(store.uow(), pair.account_id)

    for _ in range(3):  # 3 TTLs of retries: one lookup, one failure counted, each
        for _ in range(20):
            assert await auth.caller(pair.api_key, pair.access_token, HERE) is None
        clock.now += 5

    assert lookups.count == 3
    # New guesses, though, are counted each.
    assert await auth.caller(pair.api_key, "tk_guess1", HERE) is None
    assert await auth.caller(pair.api_key, "tk_guess2", HERE) is None
    with pytest.raises(accounts.LoginsThrottled):
        await auth.caller(pair.api_key, "tk_guess3", HERE)


def test_a_client_network_is_an_ipv4_address_or_an_ipv6_64() -> None:
    assert throttling.client_network("192.0.2.1") == "192.0.2.1"
    assert throttling.client_network("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert throttling.client_network("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert throttling.client_network("::ffff:192.0.2.1") == "192.0.2.1"
    assert throttling.client_network(None) == "unknown"


def test_a_throttled_key_is_told_once_per_bout_and_forgotten_past_the_bound() -> None:
    clock = Clock()
    throttle = throttling.FailureThrottle(burst=2, per_s=1.0, max_keys=2, clock=clock)
    assert [throttle.failed("a") for _ in range(4)] == [False, True, False, False]
    clock.now += 1.5  # one failure allowed again: the same bout
    assert throttle.wait_s("a") == 0
    assert throttle.failed("a") is False
    clock.now += 10  # refilled whole: a new bout
    assert [throttle.failed("a") for _ in range(2)] == [False, True]
    throttle.failed("b")
    throttle.failed("c")  # "a" failed least recently: forgotten
    assert throttle.wait_s("a") == 0


async def test_one_lookup_per_pair_however_many_ask_at_once() -> None:
    store, clock = FakeStore(), Clock()
    lookups = Lookups(store)
    auth = authenticator(lookups, clock)
    pair = await issued(store)
    lookups.gate = asyncio.Event()

    asked = [
        asyncio.create_task(auth.caller(pair.api_key, pair.access_token, HERE)) for _ in range(50)
    ]
    await wait_until(lambda: lookups.running == 1)
    asked[0].cancel()  # one client leaves: the others still get their answer
    lookups.gate.set()
    answers = await asyncio.gather(*asked[1:])

    assert lookups.count == 1
    assert {a.account_id for a in answers if a is not None} == {pair.account_id}
    assert all(answers)


async def test_lookups_run_at_most_max_lookups_at_once_and_a_check_waits_a_bound() -> None:
    store, clock = FakeStore(), Clock()
    lookups = Lookups(store)
    # 4: 2 for credentials never seen to work, 2 kept for renewals
    auth = authenticator(lookups, clock, max_lookups=4, lookup_wait_s=0.05)
    lookups.gate = asyncio.Event()

    flood = [
        asyncio.create_task(auth.caller(f"ak_flood{n:04}", "tk_x", (f"10.1.0.{n}", 1)))
        for n in range(6)
    ]
    await wait_until(lambda: lookups.running == 2)
    with pytest.raises(accounts.AuthenticationBusy):
        await auth.caller("ak_late", "tk_x", THERE)
    lookups.gate.set()
    answers = await asyncio.gather(*flood, return_exceptions=True)

    assert lookups.most_at_once == 2
    assert None in answers
    assert all(a is None or isinstance(a, accounts.AuthenticationBusy) for a in answers)


async def test_a_client_whose_check_expired_is_checked_again_ahead_of_a_flood() -> None:
    store, clock = FakeStore(), Clock()
    lookups = Lookups(store)
    auth = authenticator(lookups, clock, max_lookups=2, lookup_wait_s=0.05, failures_burst=1)
    pair = await issued(store)
    assert await auth.caller(pair.api_key, pair.access_token, HERE) is not None
    assert await auth.caller("ak_1guessed", "tk_x", HERE) is None  # HERE is throttled now
    lookups.gate = asyncio.Event()
    lookups.ungated.add(hash_secret(pair.api_key))
    flood = [
        asyncio.create_task(auth.caller(f"ak_{n}flooding", "tk_x", (f"10.2.0.{n}", 1)))
        for n in range(4)
    ]
    await wait_until(lambda: lookups.running == 1)  # the one slot for new credentials
    clock.now += 5  # the client's check expires

    renewed = await auth.caller(pair.api_key, pair.access_token, HERE)

    assert renewed is not None
    assert renewed.account_id == pair.account_id
    lookups.gate.set()
    await asyncio.gather(*flood, return_exceptions=True)
