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
    count, page = repository._order_listing(("client_order_number",), "PROCESSING")
    assert count.params == ("account_id", "client_order_number")
    assert page.params == ("account_id", "client_order_number", "limit", "offset")
    assert "orders.client_order_number = $2" in page.sql
    # The status is a literal, so that a generic plan can use the partial index of it.
    assert "orders.status = 'PROCESSING'" in page.sql
    assert "orders.status = 'COMPLETED'" in repository._order_listing((), "COMPLETED")[0].sql
    with pytest.raises(ValueError, match="not an order status"):
        repository._order_listing((), "DONE'; --")
    assert "UNION ALL" in page.sql
    assert "bulk_orders" in page.sql
    assert "ORDER BY entries.transaction_id DESC" in page.sql
    assert repository._order_listing(())[1].params == ("account_id", "limit", "offset")
