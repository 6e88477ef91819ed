"""The api's repositories keep their contract on PostgreSQL (the stack's api database)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from services.api.adapters.postgres import PostgresUnitOfWork
from shared import db
from tests.api_contract import NewUow, RepositoryContract
from tests.conftest import Stack

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
async def pool(stack: Stack) -> AsyncIterator[asyncpg.Pool]:
    pool = await db.create_pool(stack.api_db_url, 10)
    try:
        yield pool
    finally:
        await pool.close()


class TestPostgresRepositories(RepositoryContract):
    @pytest.fixture
    def new_uow(self, pool: asyncpg.Pool) -> NewUow:
        return lambda: PostgresUnitOfWork(pool)
