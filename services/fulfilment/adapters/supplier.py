"""Adapters of the supplier port (service_layer.backorders.Supplier): none, and the simulated
supplier that is the default.

A request is recorded in the database (so it survives a restart, and at most one is open per
SKU); the simulated supplier "delivers" it after a delay: generated codes, sealed with the
code key to their SKU (inventory seals each again to its stock item), sent to inventory as a
DeliverStock command through the outbox.
"""

from collections.abc import Callable

from services.fulfilment import metrics
from services.fulfilment.service_layer.unit_of_work import UnitOfWork
from shared import topics
from shared.contracts import DeliverStock
from shared.crypto import CodeVault, random_code

# A DeliverStock message stays far below Kafka's 1 MiB message size (~115 bytes a code).
CODES_PER_DELIVERY = 500


class NoSupplier:
    """Supplier requests switched off: stock comes from operators only."""

    async def request(self, uow: UnitOfWork, sku: str, quantity: int) -> None:
        return None


class SimulatedSupplier:
    def __init__(self, vault: CodeVault, delay_s: float) -> None:
        self._vault = vault
        self._delay_s = delay_s

    async def request(self, uow: UnitOfWork, sku: str, quantity: int) -> None:
        if await uow.supplier_requests.open(sku, quantity, self._delay_s):
            metrics.SUPPLIER_REQUESTS.inc()

    async def deliver_round(
        self, new_uow: Callable[[], UnitOfWork], limit: int = 20
    ) -> float | None:
        """A round of deliveries (`runtime.when_due`): delivers what is due, and returns the
        seconds until the next open request is (0 after a full batch)."""
        if await self.deliver_due(new_uow(), limit) >= limit:
            return 0.0
        async with new_uow() as uow:
            return await uow.supplier_requests.seconds_to_next_due()

    async def deliver_due(self, uow: UnitOfWork, limit: int = 20) -> int:
        """Deliver every request whose delay has passed; returns how many were delivered."""
        async with uow:
            due = await uow.supplier_requests.take_due(limit)
            for request in due:
                sku, quantity = request.sku, request.quantity
                for part, start in enumerate(range(0, quantity, CODES_PER_DELIVERY)):
                    sealed = [
                        self._vault.seal_to_sku(
                            random_code("SIM", group_length=5, pin_digits=8), sku
                        ).to_wire()
                        for _ in range(min(CODES_PER_DELIVERY, quantity - start))
                    ]
                    delivery = DeliverStock(
                        delivery_id=f"sim-{request.id}-{part}", sku=sku, sealed_codes=sealed
                    )
                    uow.publish(topics.INVENTORY_COMMANDS.name, sku, delivery)
                await uow.supplier_requests.mark_delivered(request.id)
                metrics.SUPPLIER_DELIVERIES.inc(request.quantity)
            await uow.commit()
        return len(due)
