"""Use cases of accounts: provisioning, credentials, money in, and authentication."""

import hmac
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from services.api.domain.model import AccountInfo, AccountNotFound
from services.api.service_layer.unit_of_work import UnitOfWork
from shared.contracts import utcnow
from shared.crypto import hash_secret, new_secret


@dataclass(frozen=True)
class Caller:
    account_id: uuid.UUID
    rate_limit_per_s: float | None  # None: the service's default


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
) -> tuple[IssuedCredentials, list[tuple[str, Decimal]]]:
    """The new account, its credentials (shown once) and its opening balances."""
    api_key, token = new_secret("ak"), new_secret("tk")
    async with uow, uow.transaction():
        account_id = await uow.accounts.add(name, rate_limit_per_s)
        await uow.credentials.add(account_id, "API_KEY", hash_secret(api_key), None)
        await uow.credentials.add(account_id, "TOKEN", hash_secret(token), None)
        for currency, amount in opening:
            await uow.wallets.credit(account_id, currency, amount, slots)
        balances = await uow.wallets.balances(account_id)
        await uow.commit()
    return IssuedCredentials(account_id, api_key, token), balances


async def account(uow: UnitOfWork, account_id: uuid.UUID) -> AccountView:
    async with uow:
        found = await uow.accounts.get(account_id)
        if found is None:
            raise AccountNotFound()
        return AccountView(found, await uow.wallets.balances(account_id))


async def credit_account(
    uow: UnitOfWork, account_id: uuid.UUID, currency: str, amount: Decimal, slots: int
) -> list[tuple[str, Decimal]]:
    async with uow, uow.transaction():
        if not await uow.accounts.exists(account_id):
            raise AccountNotFound()
        await uow.wallets.credit(account_id, currency, amount, slots)
        balances = await uow.wallets.balances(account_id)
        await uow.commit()
    return balances


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


class Authenticator:
    """Checks the x-api-key + Bearer token pair. Both must be live and of the same account.

    Successful checks are cached for a few seconds (bounded), keyed by the hashes of both
    secrets, so the hot path does not query credentials on every order; an expired
    credential stops working within that TTL.
    """

    def __init__(
        self, new_uow: Callable[[], UnitOfWork], ttl_s: float, max_entries: int = 10_000
    ) -> None:
        self._new_uow = new_uow
        self._ttl = ttl_s
        self._max = max_entries
        self._cache: OrderedDict[bytes, tuple[Caller, float]] = OrderedDict()

    async def caller(self, api_key: str, token: str) -> Caller | None:
        key_hash, token_hash = hash_secret(api_key), hash_secret(token)
        cache_key = key_hash + token_hash
        hit = self._cache.get(cache_key)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        async with self._new_uow() as uow:
            live = await uow.credentials.live(key_hash, token_hash)
        key_owner = token_owner = limit = None
        for found in live:
            if found.kind == "API_KEY" and hmac.compare_digest(found.secret_hash, key_hash):
                key_owner, limit = found.account_id, found.rate_limit_per_s
            elif found.kind == "TOKEN" and hmac.compare_digest(found.secret_hash, token_hash):
                token_owner = found.account_id
        if key_owner is None or key_owner != token_owner:
            return None
        caller = Caller(key_owner, float(limit) if limit is not None else None)
        self._cache[cache_key] = (caller, now + self._ttl)
        self._cache.move_to_end(cache_key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return caller
