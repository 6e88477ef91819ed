"""Use cases of accounts: provisioning, credentials, money in, and authentication."""

import hmac
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

import asyncpg

from services.api.adapters import repository as repo
from services.api.domain.model import AccountNotFound
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


async def create_account(
    pool: asyncpg.Pool,
    name: str,
    opening: list[tuple[str, Decimal]],
    slots: int,
    rate_limit_per_s: Decimal | None = None,
) -> IssuedCredentials:
    api_key, token = new_secret("ak"), new_secret("tk")
    async with pool.acquire() as conn, conn.transaction():
        account_id = await repo.create_account(conn, name, rate_limit_per_s)
        await repo.add_credential(conn, account_id, "API_KEY", hash_secret(api_key), None)
        await repo.add_credential(conn, account_id, "TOKEN", hash_secret(token), None)
        for currency, amount in opening:
            await repo.credit(conn, account_id, currency, amount, slots)
    return IssuedCredentials(account_id, api_key, token)


async def credit_account(
    pool: asyncpg.Pool, account_id: uuid.UUID, currency: str, amount: Decimal, slots: int
) -> list[tuple[str, Decimal]]:
    async with pool.acquire() as conn, conn.transaction():
        if not await repo.account_exists(conn, account_id):
            raise AccountNotFound()
        await repo.credit(conn, account_id, currency, amount, slots)
        return await repo.balances(conn, account_id)


async def rotate_token(
    pool: asyncpg.Pool, account_id: uuid.UUID, grace: timedelta
) -> tuple[str, datetime]:
    """A new token at once; the old ones keep working for `grace`, so clients can switch."""
    token = new_secret("tk")
    old_expire_at = utcnow() + grace
    async with pool.acquire() as conn, conn.transaction():
        if not await repo.account_exists(conn, account_id):
            raise AccountNotFound()
        await repo.expire_tokens(conn, account_id, old_expire_at)
        await repo.add_credential(conn, account_id, "TOKEN", hash_secret(token), None)
    return token, old_expire_at


class Authenticator:
    """Checks the x-api-key + Bearer token pair. Both must be live and of the same account.

    Successful checks are cached for a few seconds (bounded), keyed by the hashes of both
    secrets, so the hot path does not query credentials on every order; an expired
    credential stops working within that TTL.
    """

    def __init__(self, pool: asyncpg.Pool, ttl_s: float, max_entries: int = 10_000) -> None:
        self._pool = pool
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
        async with self._pool.acquire() as conn:
            rows = await repo.find_live_credentials(conn, key_hash, token_hash)
        key_owner = token_owner = limit = None
        for row in rows:
            if row["kind"] == "API_KEY" and hmac.compare_digest(row["secret_hash"], key_hash):
                key_owner, limit = row["account_id"], row["rate_limit_per_s"]
            elif row["kind"] == "TOKEN" and hmac.compare_digest(row["secret_hash"], token_hash):
                token_owner = row["account_id"]
        if key_owner is None or key_owner != token_owner:
            return None
        caller = Caller(key_owner, float(limit) if limit is not None else None)
        self._cache[cache_key] = (caller, now + self._ttl)
        self._cache.move_to_end(cache_key)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return caller
