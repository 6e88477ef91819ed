"""Inventory's migrations 0005-0006 on rows stocked the old way, in a scratch schema of the
stack's inventory database: the rows keep opening and are marked as what they are, an
inventory older than the migrations can no longer stock, and the new inventory brings the
rows to fingerprint version 2 without the database ever holding a code in plaintext."""

import importlib.util
import os
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

import asyncpg
import pytest

from services.inventory.adapters.postgres import PostgresUnitOfWork
from services.inventory.service_layer import catalog
from shared import db
from shared.crypto import Binding, Code, SealedCode
from tests.conftest import Stack
from tests.helpers import unique
from tests.inventory_contract import VAULT, NewUow, product

pytestmark = pytest.mark.integration

VERSIONS = Path(__file__).resolve().parents[2] / "services/inventory/adapters/migrations/versions"

# How inventory stocked a code before 0005 (its last version of PostgresCodes.add).
OLD_INSERT = """
INSERT INTO codes (sku, key_id, sealed, fingerprint)
SELECT $1, key_id, sealed, fingerprint
FROM unnest($2::text[], $3::bytea[], $4::bytea[]) AS c (key_id, sealed, fingerprint)
ON CONFLICT (fingerprint) DO NOTHING
"""


def revision(number: str) -> ModuleType:
    [path] = VERSIONS.glob(f"{number}_*.py")
    spec = importlib.util.spec_from_file_location(f"inventory_migration_{number}", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scripts_of(number: str, step: str = "upgrade") -> list[tuple[bool, list[str]]]:
    """A revision's scripts, in order: (in the migration's transaction, statements)."""
    module = revision(number)
    scripts: list[tuple[bool, list[str]]] = []
    module.run_script = lambda s: scripts.append((True, db.split_sql(s)))  # type: ignore[attr-defined]
    module.run_script_outside_transaction = (  # type: ignore[attr-defined]
        lambda s: scripts.append((False, db.split_sql(s)))
    )
    getattr(module, step)()
    return scripts


async def run(conn: asyncpg.Connection, number: str, step: str = "upgrade") -> None:
    """Runs a revision on `conn` as alembic would (alembic's `op` replaced by the
    connection): run_script in a transaction, run_script_outside_transaction without."""
    for in_transaction, statements in scripts_of(number, step):
        if in_transaction:
            async with conn.transaction():
                for statement in statements:
                    await conn.execute(statement)
        else:
            for statement in statements:
                await conn.execute(statement)


@pytest.mark.parametrize("number", ["0005", "0006"])
def test_the_migrations_lock_the_codes_briefly(number: str) -> None:
    # Review finding 4: under a lock timeout, checks NOT VALID then validated outside the
    # migration's transaction, the index built concurrently.
    (first, inside), *outside = scripts_of(number)
    assert first
    assert inside[0].startswith("SET LOCAL lock_timeout")
    added = [s for s in inside if "ADD CONSTRAINT" in s]
    assert added
    assert all(s.rstrip(";").endswith("NOT VALID") for s in added)
    assert not any("CREATE INDEX" in s or "VALIDATE" in s for s in inside)
    assert all(not in_transaction for in_transaction, _ in outside)
    later = [s for _, statements in outside for s in statements]
    assert sum("VALIDATE CONSTRAINT" in s for s in later) == len(added)
    assert all("CONCURRENTLY" in s for s in later if "CREATE INDEX" in s)


@pytest.mark.parametrize("number", ["0005", "0006"])
def test_a_downgrade_locks_the_codes_before_it_checks_them(number: str) -> None:
    # Review finding 5.
    [(in_transaction, statements)] = scripts_of(number, "downgrade")
    assert in_transaction
    assert statements[0] == "LOCK TABLE codes IN ACCESS EXCLUSIVE MODE"


@pytest.fixture
async def scratch(stack: Stack) -> AsyncIterator[tuple[asyncpg.Connection, str]]:
    schema = unique("migration").replace("-", "_")
    conn = await asyncpg.connect(stack.inventory_db_url)
    await conn.execute(f"CREATE SCHEMA {schema}")
    await conn.execute(f"SET search_path = {schema}")
    try:
        for number in ("0001", "0002", "0003", "0004"):
            await run(conn, number)
        yield conn, schema
    finally:
        await conn.execute(f"DROP SCHEMA {schema} CASCADE")
        await conn.close()


async def test_rows_stocked_the_old_way_survive_the_migrations_and_are_refingerprinted(
    stack: Stack, scratch: tuple[asyncpg.Connection, str]
) -> None:
    conn, schema = scratch
    pool = await db.create_pool(f"{stack.inventory_db_url}?search_path={schema}", 2)
    try:
        await check_the_migrations(conn, lambda: PostgresUnitOfWork(pool))
    finally:
        await pool.close()


async def check_the_migrations(conn: asyncpg.Connection, new_uow: NewUow) -> None:
    sku = "GIFT-OLD"
    await catalog.put_product(product(sku), new_uow(), VAULT)
    old = [Code("OLD-CODE-1", "0042"), Code("OLD-CODE-2", None)]
    sealed = [VAULT.seal_to_sku(code, sku) for code in old]
    await conn.execute(
        OLD_INSERT,
        sku,
        [s.key_id for s in sealed],
        [s.blob for s in sealed],
        [os.urandom(32) for _ in sealed],  # version 1 fingerprints: opaque, only unique
    )

    await run(conn, "0005")
    await run(conn, "0006")

    rows = await conn.fetch(
        "SELECT id, key_id, sealed, binding, fingerprint_version FROM codes ORDER BY id"
    )
    assert [(r["binding"], r["fingerprint_version"]) for r in rows] == [(1, 1), (1, 1)]
    assert [
        VAULT.open(SealedCode(r["key_id"], bytes(r["sealed"]), Binding(r["binding"])), sku, None)
        for r in rows
    ] == old
    assert (
        await conn.fetch(
            "SELECT conname FROM pg_constraint "
            "WHERE conrelid = 'codes'::regclass AND NOT convalidated"
        )
        == []
    )
    assert await conn.fetchval(
        "SELECT indisvalid FROM pg_index WHERE indexrelid = 'codes_old_fingerprints'::regclass"
    )
    # Review finding 3: an inventory older than the migrations, still running, keeps
    # stocking; its rows say what they are, and are re-fingerprinted like the others.
    late = Code("OLD-CODE-3", None)
    late_sealed = VAULT.seal_to_sku(late, sku)
    await conn.execute(OLD_INSERT, sku, [late_sealed.key_id], [late_sealed.blob], [os.urandom(32)])
    assert (
        await conn.fetchval(
            "SELECT (binding, fingerprint_version)::text FROM codes ORDER BY id DESC LIMIT 1"
        )
        == "(1,1)"
    )
    await conn.execute("DELETE FROM codes WHERE id = (SELECT max(id) FROM codes)")
    # Nothing is version 2 yet: the migrations may still be undone, and done again.
    await run(conn, "0006", "downgrade")
    await run(conn, "0005", "downgrade")
    await run(conn, "0005")
    await run(conn, "0006")

    done = await catalog.refingerprint_stock(new_uow, VAULT)
    assert done.refingerprinted == 2
    added = await catalog.add_stock(sku, [Code("old-code-1", None)], new_uow(), VAULT)
    assert (added.added, added.skipped) == (0, 1)
    with pytest.raises(asyncpg.RaiseError, match="downgrade stops here"):
        async with conn.transaction():
            await run(conn, "0006", "downgrade")
    with pytest.raises(asyncpg.RaiseError, match="downgrade stops here"):
        async with conn.transaction():
            await run(conn, "0005", "downgrade")
    stored = "\n".join(r["row"] for r in await conn.fetch("SELECT c::text AS row FROM codes c"))
    assert "OLD-CODE" not in stored
    assert b"OLD-CODE".hex() not in stored
