"""Each service's migrations produce exactly the tables it declares as SQLModel classes (the
`alembic check` comparison), and the comparison does see a table and its migrations apart."""

import os
import subprocess
import sys

import asyncpg
import pytest
from sqlalchemy import Column, Index, MetaData, Text

from shared.db import schema_drift
from shared.tables import service_metadata
from tests.conftest import Stack
from tests.helpers import unique

pytestmark = pytest.mark.integration

SERVICES = ("api", "inventory", "fulfilment")


@pytest.mark.parametrize("service", SERVICES)
async def test_the_migrated_database_has_exactly_the_declared_tables(
    stack: Stack, service: str
) -> None:
    assert await schema_drift(stack.db_url(service), service_metadata(service)) == []


def copy_of(metadata: MetaData) -> MetaData:
    copy = MetaData()
    for table in metadata.tables.values():
        table.to_metadata(copy)
    return copy


async def test_a_table_changed_without_its_migration_is_reported(stack: Stack) -> None:
    declared = copy_of(service_metadata("api"))
    orders = declared.tables["orders"]
    orders.append_column(Column("gift_message", Text, nullable=True))
    orders.c.quantity.type = Text()  # integer in the database
    ledger = declared.tables["ledger"]
    ledger.indexes.discard(next(i for i in ledger.indexes if i.name == "ledger_once_per_order"))
    Index("orders_by_sku", orders.c.sku)
    declared.remove(declared.tables["wallet_slots"])

    drift = await schema_drift(stack.api_db_url, declared)

    assert "add_column orders gift_message" in drift
    assert any(d.startswith("modify_type") and "quantity" in d for d in drift), drift
    assert "remove_index ledger_once_per_order" in drift
    assert "add_index orders_by_sku" in drift
    assert "remove_table wallet_slots" in drift


async def test_a_migration_without_its_table_change_is_reported(stack: Stack) -> None:
    # As a migration would that nobody declared in adapters/tables.py.
    table = unique("schema_probe").replace("-", "_").lower()
    conn = await asyncpg.connect(stack.fulfilment_db_url)
    try:
        await conn.execute(f"CREATE TABLE {table} (id integer PRIMARY KEY)")
        drift = await schema_drift(stack.fulfilment_db_url, service_metadata("fulfilment"))
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
        await conn.close()
    assert drift == [f"remove_table {table}"]


def test_db_check_command_passes_on_the_migrated_databases(stack: Stack) -> None:
    env = {
        **os.environ,
        "API_DATABASE_URL": stack.api_db_url,
        "INVENTORY_DATABASE_URL": stack.inventory_db_url,
        "FULFILMENT_DATABASE_URL": stack.fulfilment_db_url,
    }
    result = subprocess.run(
        [sys.executable, "-m", "shared.cli.main", "db", "check"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert '"differences": 0' in result.stdout
