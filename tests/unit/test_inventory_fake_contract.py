"""The fakes keep the repositories' contract (the same tests run on PostgreSQL)."""

import pytest

from tests.inventory_contract import NewUow, RepositoryContract
from tests.inventory_fakes import FakeStore


class TestFakeRepositories(RepositoryContract):
    @pytest.fixture
    def new_uow(self) -> NewUow:
        return FakeStore().uow
