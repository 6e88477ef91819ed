"""The fakes keep the repositories' contract (the same tests run on PostgreSQL)."""

import pytest

from tests.api_contract import NewUow, RepositoryContract
from tests.api_fakes import FakeStore


class TestFakeRepositories(RepositoryContract):
    @pytest.fixture
    def new_uow(self) -> NewUow:
        return FakeStore().uow
