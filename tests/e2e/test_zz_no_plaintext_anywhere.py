"""Codes never appear in plaintext in logs, tables or topics (invariant 4).

This module's name sorts last so that it runs after the other end-to-end tests: it decrypts
every code stocked during this test session, canary codes it sells itself among them, and
searches for each in every table of the three databases, all that this session wrote to the
service logs and to every topic, the public one included. (A code first stocked during the
session can only be in what was written after it: the topics are read from the session's
start, and of each table only the rows inserted or updated since, by their xmin, not all of
them, which on a machine that ran the benchmarks are millions of records.)
"""

import os
import re
from datetime import datetime
from pathlib import Path

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from shared.crypto import Binding, CodeVault, SealedCode
from tests.conftest import Stack
from tests.e2e.conftest import NewClient, NewProduct, log_dir
from tests.helpers import unique

pytestmark = pytest.mark.e2e

TOKEN = re.compile(r"[A-Za-z0-9_-]{8,}")  # the characters of the codes tests stock
MIN_SEARCHABLE = 8  # shorter values would match timestamps and ids by chance


def searchable(value: str | None) -> bool:
    """Digit-only values (most PINs) are skipped: they occur in numbers and timestamps by
    chance. A leaked code is still caught by its redeem code."""
    return bool(value) and len(value or "") >= MIN_SEARCHABLE and not (value or "").isdigit()


async def _codes_stocked_since(stack: Stack, since: datetime) -> set[str]:
    vault = CodeVault(os.environ["CODE_ENCRYPTION_KEYS"])
    conn = await asyncpg.connect(stack.inventory_db_url)
    try:
        rows = await conn.fetch(
            "SELECT id, sku, key_id, sealed, binding FROM codes WHERE created_at >= $1", since
        )
    finally:
        await conn.close()
    found: set[str] = set()
    for row in rows:
        sealed = SealedCode(row["key_id"], bytes(row["sealed"]), Binding(row["binding"]))
        code = vault.open(sealed, row["sku"], row["id"])
        found |= {v for v in (code.redeem_code, code.pin_code) if v and searchable(v)}
    return found


# Rows whose version is younger than the session's first transaction: `age` counts back
# from now, modulo the 32-bit xid, so the comparison holds across a wraparound.
WRITTEN_SINCE = (
    'SELECT t::text AS row FROM "{}" t WHERE age(t.xmin) < age(($1 % 4294967296)::text::xid)'
)


async def _table_dumps(url: str, since_xid: int) -> str:
    """Every row of every table of the database at `url` written since `since_xid`."""
    conn = await asyncpg.connect(url)
    try:
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        chunks = []
        for t in tables:
            rows = await conn.fetch(WRITTEN_SINCE.format(t["tablename"]), since_xid)
            chunks.extend(r["row"] for r in rows)
        return "\n".join(chunks)
    finally:
        await conn.close()


async def _topic_contents(bootstrap: str, start: dict[TopicPartition, int]) -> bytes:
    """What this session wrote to every topic."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
    )
    await consumer.start()
    try:
        partitions = list(start)
        consumer.assign(partitions)
        for tp in partitions:
            consumer.seek(tp, start[tp])
        end = await consumer.end_offsets(partitions)
        data = bytearray()
        while any([await consumer.position(tp) < end[tp] for tp in partitions]):
            batches = await consumer.getmany(timeout_ms=1000, max_records=10_000)
            for records in batches.values():
                for record in records:
                    data += (record.key or b"") + b"\n" + (record.value or b"") + b"\n"
                    for _, value in record.headers:
                        data += value + b"\n"
        return bytes(data)
    finally:
        await consumer.stop()


async def test_no_code_in_plaintext_in_tables_logs_or_topics(
    stack: Stack,
    new_client: NewClient,
    new_product: NewProduct,
    offsets_at_start: dict[TopicPartition, int],
    session_started_at: datetime,
    log_sizes_at_start: dict[Path, int],
    transactions_at_start: dict[str, int],
) -> None:
    canaries = [{"redeemCode": unique("CANARY"), "pinCode": unique("PIN")} for _ in range(3)]
    sku = await new_product(price="1.00", codes=canaries, pinKind="string")
    client = await new_client(pinFormat="string")
    sold = []
    for _ in canaries:
        order = (await client.order(sku)).json()["data"]
        assert order["status"] == "COMPLETED"
        assert (await client.codes(order["transactionId"]))[0]["redeemCode"]
        sold.append(order["transactionId"])

    codes = await _codes_stocked_since(stack, session_started_at)
    assert {c["redeemCode"] for c in canaries} <= codes

    places: dict[str, str] = {
        f"{name} database": await _table_dumps(stack.db_url(name), transactions_at_start[name])
        for name in ("api", "inventory", "fulfilment")
    }
    # The rows written during the session are in the dumps: the canaries' orders are, and
    # their product's rows.
    assert all(transaction_id in places["api database"] for transaction_id in sold)
    assert sku in places["inventory database"]
    logs: dict[str, str] = {}
    for log in sorted(log_dir().glob("*.log")):
        with log.open("rb") as f:
            f.seek(log_sizes_at_start.get(log, 0))
            logs[f"log {log.name}"] = f.read().decode(errors="replace")
    topic_text = (await _topic_contents(stack.kafka_bootstrap, offsets_at_start)).decode(
        errors="replace"
    )

    def leaks_in(tables: dict[str, str], streams: dict[str, str]) -> list[str]:
        # Tables are searched for each code as text and as hex (bytea); logs and topics, which
        # are large, by their tokens (a code is one token wherever it is quoted or spaced).
        found = [
            f"a code in the {place}"
            for place, text in tables.items()
            for code in codes
            if code in text or code.encode().hex() in text
        ]
        for place, text in streams.items():
            if codes & set(TOKEN.findall(text)):
                found.append(f"a code in {place}")
        return found

    # The search must be able to fail: a planted code is found, in text, hex, a log, a topic.
    planted = canaries[0]["redeemCode"]
    assert leaks_in({"planted": f"x {planted} y"}, {})
    assert leaks_in({"planted": planted.encode().hex()}, {})
    assert leaks_in({}, {"a log": f'{{"msg": "sold {planted}"}}'})
    assert leaks_in({}, {"a topic": f'{{"code":"{planted}"}}'})

    leaks = leaks_in(places, {**logs, "the topics": topic_text})
    assert not leaks, f"{len(leaks)} plaintext code(s) found: {sorted(set(leaks))}"
    assert len(logs) >= 3, "no service log was scanned"
