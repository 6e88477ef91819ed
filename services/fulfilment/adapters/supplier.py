"""The supplier port, and the simulated supplier that is its default adapter.

A request is recorded in the database (so it survives a restart, and at most one is open per
SKU); the simulated supplier "delivers" it after a delay: generated codes, sealed with the
code key, sent to inventory as a DeliverStock command through the outbox.
"""

import secrets
import string
from typing import Protocol

import asyncpg

from services.fulfilment import metrics
from services.fulfilment.adapters import repository as repo
from shared import topics
from shared.contracts import DeliverStock
from shared.crypto import Code, CodeVault
from shared.db import Conn
from shared.outbox import add_to_outbox

_ALPHABET = string.ascii_uppercase + string.digits
# A DeliverStock message stays far below Kafka's 1 MiB message size (~115 bytes a code).
CODES_PER_DELIVERY = 500


class Supplier(Protocol):
    async def request(self, conn: Conn, sku: str, quantity: int) -> None:
        """Ask for `quantity` more codes of `sku`, in the caller's transaction."""


class NoSupplier:
    """Supplier requests switched off: stock comes from operators only."""

    async def request(self, conn: Conn, sku: str, quantity: int) -> None:
        return None


class SimulatedSupplier:
    def __init__(self, vault: CodeVault, delay_s: float) -> None:
        self._vault = vault
        self._delay_s = delay_s

    async def request(self, conn: Conn, sku: str, quantity: int) -> None:
        if await repo.open_supplier_request(conn, sku, quantity, self._delay_s):
            metrics.SUPPLIER_REQUESTS.inc()

    async def deliver_due(self, pool: asyncpg.Pool, limit: int = 20) -> int:
        """Deliver every request whose delay has passed; returns how many were delivered."""
        async with pool.acquire() as conn, conn.transaction():
            due = await repo.due_supplier_requests(conn, limit)
            for request in due:
                sku, quantity = request["sku"], request["quantity"]
                for part, start in enumerate(range(0, quantity, CODES_PER_DELIVERY)):
                    sealed = [
                        self._vault.seal(self._generate(), aad=sku).to_wire()
                        for _ in range(min(CODES_PER_DELIVERY, quantity - start))
                    ]
                    delivery = DeliverStock(
                        delivery_id=f"sim-{request['id']}-{part}", sku=sku, sealed_codes=sealed
                    )
                    await add_to_outbox(conn, topics.INVENTORY_COMMANDS.name, sku, delivery)
                await repo.mark_delivered(conn, request["id"])
                metrics.SUPPLIER_DELIVERIES.inc(request["quantity"])
        return len(due)

    @staticmethod
    def _generate() -> Code:
        groups = ("".join(secrets.choice(_ALPHABET) for _ in range(5)) for _ in range(4))
        return Code(
            redeem_code="SIM-" + "-".join(groups), pin_code=f"{secrets.randbelow(10**8):08d}"
        )
