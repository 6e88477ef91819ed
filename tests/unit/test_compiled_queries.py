"""Statements built from the tables compile once to asyncpg SQL with named parameters in
order, and refuse what would silently need a value nobody passes."""

import pytest
from sqlalchemy import bindparam, literal, select
from sqlmodel import col

from services.api.adapters import postgres as repository
from services.api.adapters.tables import Order
from shared.db import compiled


def test_parameters_are_numbered_in_order_and_passed_by_name() -> None:
    query = compiled(
        select(col(Order.sku)).where(
            col(Order.account_id) == bindparam("account"), col(Order.status) == bindparam("status")
        )
    )
    assert "$1" in query.sql
    assert "$2" in query.sql
    assert query.params == ("account", "status")
    assert query.args(status="COMPLETED", account="a") == ["a", "COMPLETED"]


def test_a_missing_value_is_refused_by_name() -> None:
    query = compiled(select(col(Order.sku)).where(col(Order.sku) == bindparam("sku")))
    with pytest.raises(TypeError, match=r"\['sku'\]"):
        query.args()


def test_a_value_baked_into_the_statement_is_refused_at_compile_time() -> None:
    with pytest.raises(ValueError, match="bindparam"):
        compiled(select(literal(1)))


def test_each_combination_of_order_filters_has_its_own_statement() -> None:
    count, page = repository._order_listing(("status",))
    assert count.params == ("account_id", "status")
    assert page.params == ("account_id", "status", "limit", "offset")
    assert "orders.status = $2" in page.sql
    assert "UNION ALL" in page.sql
    assert "bulk_orders" in page.sql
    assert "ORDER BY entries.transaction_id DESC" in page.sql
    assert repository._order_listing(())[1].params == ("account_id", "limit", "offset")
