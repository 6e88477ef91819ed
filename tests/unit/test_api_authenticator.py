"""The Authenticator over the fake repositories: what an operator ends stops authenticating
once the cache's entries expire; what it brings back works again."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from decimal import Decimal

import pytest

from services.api.domain.model import AccountNotFound
from services.api.service_layer import accounts
from services.api.service_layer.unit_of_work import UnitOfWork
from tests.api_fakes import FakeStore

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
