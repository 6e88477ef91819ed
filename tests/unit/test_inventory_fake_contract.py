"""The fakes keep the repositories' contract (the same tests run on PostgreSQL)."""

import pytest

from tests.inventory_contract import NewUow, RepositoryContract, StockRoom
from tests.inventory_fakes import FakeStockRoom, FakeStore


class TestFakeRepositories(RepositoryContract):
    @pytest.fixture
    def store(self) -> FakeStore:
        return FakeStore()

    @pytest.fixture
    def new_uow(self, store: FakeStore) -> NewUow:
        return store.uow

    @pytest.fixture
    def stock_room(self, store: FakeStore) -> StockRoom:
        return FakeStockRoom(store)
