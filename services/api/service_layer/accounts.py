"""Use cases of accounts: provisioning, credentials, money in, and authentication."""

import asyncio
import functools
import hmac
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, TypeVar

from services.api import metrics
from services.api.domain.model import (
    AccountInfo,
    AccountNotFound,
    IdempotencyKeyReused,
    OperatorCredit,
    PinFormat,
)
from services.api.service_layer.throttling import FailureThrottle, client_network, key_prefix
from services.api.service_layer.unit_of_work import UnitOfWork
from shared.contracts import utcnow
from shared.crypto import hash_secret, new_secret

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class Caller:
    account_id: uuid.UUID
    rate_limit_per_s: float | None  # None: the service's default
    pin_format: PinFormat = "integer"


@dataclass(frozen=True)
class IssuedCredentials:
    account_id: uuid.UUID
    api_key: str
    access_token: str


@dataclass(frozen=True)
class AccountView:
    account: AccountInfo
    balances: list[tuple[str, Decimal]]


async def create_account(
    uow: UnitOfWork,
    name: str,
    opening: list[tuple[str, Decimal]],
    slots: int,
    rate_limit_per_s: Decimal | None = None,
    pin_format: PinFormat = "integer",
) -> tuple[IssuedCredentials, list[tuple[str, Decimal]]]:
    """The new account, its credentials (shown once) and its opening balances."""
    api_key, token = new_secret("ak"), new_secret("tk")
    async with uow, uow.transaction():
        account_id = await uow.accounts.add(name, rate_limit_per_s, pin_format)
        await uow.credentials.add(account_id, "API_KEY", hash_secret(api_key), None)
        await uow.credentials.add(account_id, "TOKEN", hash_secret(token), None)
        for currency, amount in opening:
            await uow.wallets.credit(account_id, currency, amount, slots)
        balances = await uow.wallets.balances(account_id)
        await uow.commit()
    return IssuedCredentials(account_id, api_key, token), balances


async def set_pin_format(uow: UnitOfWork, account_id: uuid.UUID, pin_format: PinFormat) -> None:
    """Takes effect for the account's next credential check (within the api's credential
    cache TTL on every instance)."""
    async with uow, uow.transaction():
        if not await uow.accounts.set_pin_format(account_id, pin_format):
            raise AccountNotFound()
        await uow.commit()


async def account(uow: UnitOfWork, account_id: uuid.UUID) -> AccountView:
    async with uow:
        found = await uow.accounts.get(account_id)
        if found is None:
            raise AccountNotFound()
        return AccountView(found, await uow.wallets.balances(account_id))


@dataclass(frozen=True)
class Credited:
    balances: list[tuple[str, Decimal]]
    # True: this credit was applied before, under its key; nothing was added now.
    replayed: bool


async def credit_account(uow: UnitOfWork, credit: OperatorCredit, slots: int) -> Credited:
    """Adds the operator's credit once per idempotency key: a retry of it (same account,
    currency and amount) adds nothing and says so; another credit under the key is refused
    (IdempotencyKeyReused)."""
    async with uow, uow.transaction():
        if not await uow.accounts.exists(credit.account_id):
            raise AccountNotFound()
        earlier = await uow.credits.claim(credit)
        if earlier is not None:
            if not earlier.retried_by(credit):
                raise IdempotencyKeyReused(earlier)
            return Credited(await uow.wallets.balances(credit.account_id), replayed=True)
        await uow.wallets.credit(credit.account_id, credit.currency, credit.amount, slots)
        balances = await uow.wallets.balances(credit.account_id)
        await uow.commit()
    return Credited(balances, replayed=False)


async def rotate_token(
    uow: UnitOfWork, account_id: uuid.UUID, grace: timedelta
) -> tuple[str, datetime]:
    """A new token at once; the old ones keep working for `grace`, so clients can switch."""
    token = new_secret("tk")
    old_expire_at = utcnow() + grace
    async with uow, uow.transaction():
        if not await uow.accounts.exists(account_id):
            raise AccountNotFound()
        await uow.credentials.expire_tokens(account_id, old_expire_at)
        await uow.credentials.add(account_id, "TOKEN", hash_secret(token), None)
        await uow.commit()
    return token, old_expire_at


async def revoke_tokens(uow: UnitOfWork, account_id: uuid.UUID) -> int:
    """Ends every access token of the account now (returns how many were live); its API keys
    keep working, so the client can be issued a new token (rotate_token)."""
    async with uow, uow.transaction():
        if not await uow.accounts.exists(account_id):
            raise AccountNotFound()
        revoked = await uow.credentials.revoke_tokens(account_id)
        await uow.commit()
    return revoked


async def disable_account(uow: UnitOfWork, account_id: uuid.UUID) -> datetime:
    """No credential of the account authenticates any more, until enable_account. Returns
    when it was disabled (the first time, if it already was)."""
    async with uow:
        disabled_at = await uow.accounts.disable(account_id)
    if disabled_at is None:
        raise AccountNotFound()
    return disabled_at


async def enable_account(uow: UnitOfWork, account_id: uuid.UUID) -> None:
    """Undoes disable_account: the account's live credentials work again."""
    async with uow:
        if not await uow.accounts.enable(account_id):
            raise AccountNotFound()


class LoginsThrottled(Exception):
    """Too many authentications failed lately from this client network or with this API
    key's prefix: refused before any lookup, for `retry_after_s`."""

    def __init__(self, retry_after_s: float, by: str) -> None:
        super().__init__(f"failed authentications throttled by {by}")
        self.retry_after_s = retry_after_s
        self.by = by


class AuthenticationBusy(Exception):
    """Every lookup slot stayed busy past the wait: the credentials could not be checked."""


@dataclass(frozen=True)
class _Refused:
    """A key, or a pair, found not live. `key_owner`: the account of a live API key whose
    token was not (wrong, expired, revoked); None for a key that is not live itself."""

    key_owner: uuid.UUID | None
    until: float


@dataclass(frozen=True)
class _Check:
    """A check the cache of successes did not answer."""

    key_hash: bytes
    token_hash: bytes
    began: float  # what it learns is remembered until `began` + the TTL
    prefix: str  # of the API key, and the client's network: whose failure it is
    network: str
    renewal: bool  # of a pair that succeeded before

    @property
    def pair(self) -> bytes:
        return self.key_hash + self.token_hash


class Authenticator:
    """Checks the x-api-key + Bearer token pair. Both must be live and of the same account.

    Successful checks are cached for `ttl_s` (bounded), keyed by the hashes of both secrets,
    so the hot path does not query credentials on every order (`cached`: a dictionary read,
    nothing awaited); a credential that expires, is revoked or whose account is disabled
    stops working within that TTL. The rest is the path of a miss (`caller`), built for a
    client that is wrong or hostile:

    - refusals are cached too, for the same TTL (so a key created or enabled since works
      within it): an unknown key, whatever the token, or a live key with a token that is
      not, costs no query while it is remembered;
    - failures the database answered are counted per API-key prefix and per client
      network; past `FailureThrottle`'s allowance, a miss is refused (LoginsThrottled)
      before anything is looked up;
    - concurrent checks of one pair share one query, and at most `max_lookups` queries run
      at once (semaphores taken before the pool's connection): whatever the flood of
      unknown credentials, the rest of the pool stays for orders. Half of them are kept for
      pairs whose success has just expired (the clients that are ordering), which are
      neither throttled nor queued behind the flood. A check that cannot start within
      `lookup_wait_s` raises AuthenticationBusy.
    """

    def __init__(
        self,
        new_uow: Callable[[], UnitOfWork],
        ttl_s: float,
        max_entries: int = 10_000,
        *,
        max_lookups: int = 4,
        lookup_wait_s: float = 1.0,
        failures_burst: int = 20,
        failures_per_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._new_uow = new_uow
        self._ttl = ttl_s
        self._max = max_entries
        self._clock = clock
        self._cache: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()
        self._refused: OrderedDict[bytes, _Refused] = OrderedDict()
        self._pending: dict[bytes, asyncio.Task[Caller | _Refused]] = {}
        # Half the lookups (rounded down) are kept for renewals of pairs that succeeded before.
        renewals = max_lookups // 2
        self._lookups = asyncio.Semaphore(max_lookups - renewals)
        self._renewals = asyncio.Semaphore(renewals) if renewals else self._lookups
        self._lookup_wait_s = lookup_wait_s
        self._by_key = FailureThrottle(failures_burst, failures_per_s, clock=clock)
        self._by_network = FailureThrottle(failures_burst, failures_per_s, clock=clock)

    def cached(self, api_key: str, token: str) -> Caller | None:
        """The caller, if these credentials were checked successfully within the TTL: the
        hot path, with no I/O and nothing to await. None: ask `caller`."""
        hit = self._cache.get(hash_secret(api_key) + hash_secret(token))
        if hit is not None and hit[1] > self._clock():
            return hit[0]
        return None

    async def caller(
        self, api_key: str, token: str, client: Sequence[Any] | None = None
    ) -> Caller | None:
        """The caller, or None for credentials that are not a live pair. `client`: the
        client's (host, port), whose failures are counted (with those of the key's prefix)."""
        key_hash, token_hash = hash_secret(api_key), hash_secret(token)
        cache_key = key_hash + token_hash
        hit = self._cache.get(cache_key)
        now = self._clock()
        if hit is not None and hit[1] > now:
            return hit[0]
        # A pair whose success has expired (still remembered) is checked again ahead of the
        # rest: it is no guess, so neither throttled nor queued behind a flood of them.
        renewal = hit is not None
        prefix = key_prefix(api_key)
        network = client_network(str(client[0]) if client else None)
        if not renewal:
            wait, by = max(
                (self._by_key.wait_s(prefix), "key_prefix"),
                (self._by_network.wait_s(network), "address"),
            )
            if wait > 0:
                metrics.AUTH_THROTTLED_BY[by].inc()
                raise LoginsThrottled(wait, by)
        by_key, by_pair = self._refused.get(key_hash), self._refused.get(cache_key)
        if (by_key is not None and by_key.until > now) or (
            by_pair is not None and by_pair.until > now
        ):
            # Refused moments ago: answered from memory, and not counted again (a client
            # repeating a revoked pair learns nothing and costs nothing; guesses are new).
            metrics.AUTH_REFUSED_FROM_CACHE.inc()
            metrics.AUTH_INVALID.inc()
            return None
        check = _Check(key_hash, token_hash, now, prefix, network, renewal)
        verdict = await self._look_up_once(check)
        if isinstance(verdict, Caller):
            return verdict
        metrics.AUTH_INVALID.inc()
        return None

    def _count_failure(self, prefix: str, network: str, key_owner: uuid.UUID | None) -> None:
        if self._by_key.failed(prefix):
            log.warning(
                "failed authentications throttled for the API key of %s",
                f"account {key_owner} (its token is wrong, expired or revoked)"
                if key_owner
                else "no account (an unknown, expired or disabled key)",
            )
        if self._by_network.failed(network):
            log.warning("failed authentications throttled for client network %s", network)

    async def _look_up_once(self, check: _Check) -> Caller | _Refused:
        """One query per pair however many requests ask at once (a refusal counts as one
        failure, of the request that asked first); a request that gives up waiting (its
        client left) does not cancel it for the others."""
        pending = self._pending.get(check.pair)
        if pending is None:
            pending = asyncio.create_task(self._look_up(check))
            self._pending[check.pair] = pending
            pending.add_done_callback(functools.partial(self._looked_up, check.pair))
        return await asyncio.shield(pending)

    def _looked_up(self, cache_key: bytes, task: "asyncio.Task[Caller | _Refused]") -> None:
        self._pending.pop(cache_key, None)
        if not task.cancelled():
            task.exception()  # retrieved: every waiter may have left

    async def _look_up(self, check: _Check) -> Caller | _Refused:
        key_hash, token_hash = check.key_hash, check.token_hash
        slots = self._renewals if check.renewal else self._lookups
        try:
            async with asyncio.timeout(self._lookup_wait_s):
                await slots.acquire()
        except TimeoutError:
            metrics.AUTH_LOOKUPS_BUSY.inc()
            raise AuthenticationBusy() from None
        try:
            metrics.AUTH_LOOKED_UP.inc()
            async with self._new_uow() as uow:
                live = await uow.credentials.live(key_hash, token_hash)
        finally:
            slots.release()
        key_owner = token_owner = limit = None
        pin_format: PinFormat = "integer"
        for found in live:
            if found.kind == "API_KEY" and hmac.compare_digest(found.secret_hash, key_hash):
                key_owner, limit = found.account_id, found.rate_limit_per_s
                pin_format = found.pin_format
            elif found.kind == "TOKEN" and hmac.compare_digest(found.secret_hash, token_hash):
                token_owner = found.account_id
        # Entries expire `ttl` after the lookup began: nothing it saw is kept longer than that.
        until, cache_key = check.began + self._ttl, check.pair
        if key_owner is None or key_owner != token_owner:
            refused = _Refused(key_owner, until)
            # An unknown key is refused whatever the token: remembered by the key alone.
            where = key_hash if key_owner is None else cache_key
            _remember(self._refused, where, refused, self._max)
            self._cache.pop(cache_key, None)  # no longer a pair to renew
            self._count_failure(check.prefix, check.network, key_owner)
            return refused
        caller = Caller(key_owner, float(limit) if limit is not None else None, pin_format)
        _remember(self._cache, cache_key, (caller, until), self._max)
        return caller


def _remember(cache: "OrderedDict[bytes, T]", key: bytes, value: T, max_entries: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > max_entries:
        cache.popitem(last=False)
