"""What the instant path checks orders against, remembered between acceptance batches: the
products (as the read model held them, with their version) and each account's wallet
currencies. A batch then makes one round trip (pay and record) instead of two.

Remembering cannot let an order through that the database would refuse:
- A product is used at the version it was read at, and the statement that pays for and
  records the orders checks that version against the read model (`ProductChanged` when it
  moved on: none of that statement's orders is paid or recorded, the product is forgotten
  here, and they are tried again with it read afresh). The general path checks the versions
  of remembered products before it decides anything, and all of them again as it records.
- Wallets are never removed, so a currency remembered is still there. One not remembered is
  looked up before an order is refused for it.
- Whatever is refused on remembered data (a product inactive, a currency missing, a price
  that cannot be converted, exchange rates needed and unreadable) is checked again on data
  read now before the refusal is answered.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from services.api.domain.model import Product
from services.api.service_layer.unit_of_work import UnitOfWork

# Above this many products or accounts remembered, the cache starts afresh (a bound on memory
# for a catalogue or a client base much larger than the orders' working set).
MAX_REMEMBERED = 100_000


@dataclass
class Found:
    """Products by SKU and wallet currencies by account, and which of them were read in
    this batch (`fresh_*`) rather than remembered."""

    products: dict[str, Product] = field(default_factory=dict)
    wallets: dict[UUID, set[str]] = field(default_factory=dict)
    fresh_skus: set[str] = field(default_factory=set)
    fresh_accounts: set[UUID] = field(default_factory=set)

    def remembered(self, sku: str, account_id: UUID) -> bool:
        """Whether what an order is checked against was not all read in this batch."""
        return sku not in self.fresh_skus or account_id not in self.fresh_accounts


@dataclass
class CatalogCache:
    _products: dict[str, Product] = field(default_factory=dict)
    _wallets: dict[UUID, frozenset[str]] = field(default_factory=dict)

    async def look_up(
        self,
        uow: UnitOfWork,
        skus: Sequence[str],
        account_ids: Sequence[UUID],
        *,
        found: Found | None = None,
        afresh: bool = False,
    ) -> Found:
        """The products and wallet currencies of a batch: those remembered (unless
        `afresh`), the rest read in one round trip and remembered. A product the read model
        does not have, or an account without wallets, is not remembered. Given `found`,
        adds to it."""
        found = found or Found()
        wanted_skus = [s for s in skus if afresh or s not in self._products]
        wanted_accounts = [a for a in account_ids if afresh or a not in self._wallets]
        if wanted_skus or wanted_accounts:
            products, wallets = await uow.products.for_orders(wanted_skus, wanted_accounts)
            if len(self._products) + len(products) > MAX_REMEMBERED:
                self._products.clear()
            if len(self._wallets) + len(wallets) > MAX_REMEMBERED:
                self._wallets.clear()
            for sku in wanted_skus:
                self._products.pop(sku, None)
                found.products.pop(sku, None)
            for account_id in wanted_accounts:
                found.wallets.pop(account_id, None)
            # A product of no known version (0) is not remembered: it could not be checked.
            self._products.update((sku, p) for sku, p in products.items() if p.version)
            self._wallets.update((a, frozenset(c)) for a, c in wallets.items())
            found.products.update(products)
            found.wallets.update((a, set(c)) for a, c in wallets.items())
            found.fresh_skus.update(wanted_skus)
            found.fresh_accounts.update(wanted_accounts)
        for sku in skus:
            if sku not in found.products and (product := self._products.get(sku)) is not None:
                found.products[sku] = product
        for account_id in account_ids:
            remembered = self._wallets.get(account_id)
            if account_id not in found.wallets and remembered is not None:
                found.wallets[account_id] = set(remembered)
        return found

    def forget(self, skus: Iterable[str]) -> None:
        """Products whose version moved on: read afresh next time."""
        for sku in skus:
            self._products.pop(sku, None)
