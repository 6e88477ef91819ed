"""Exchange rates: operators set them, orders paid in another currency than their product's
are charged at them (domain.model.price_in), clients list them (GET /v2/exchange-rates).

The order path reads rates through a `RateSource`, the port a rate feed can be plugged into
later; its one implementation today is the table operators set (`OperatorRates`). Orders read
it through `CachedRates`: one read serves every FX order for `RATES_CACHE_S`, so a rate an
operator sets is in force on every api process at most that long after it was set.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Protocol

from services.api.domain.model import ExchangeRate, check_rate
from services.api.service_layer.unit_of_work import UnitOfWork

RATES_CACHE_S = 2.0


class RateSource(Protocol):
    async def rates(self) -> dict[str, ExchangeRate]:
        """Every rate in force now, by pair ("USDEUR")."""
        ...


@dataclass
class OperatorRates:
    """The rates operators set (`instant-orders fx set`), from the api database."""

    new_uow: Callable[[], UnitOfWork]

    async def rates(self) -> dict[str, ExchangeRate]:
        async with self.new_uow() as uow:
            return {r.pair: r for r in await uow.fx_rates.all()}


@dataclass
class CachedRates:
    """A rate source read at most once per `ttl_s`."""

    source: RateSource
    ttl_s: float = RATES_CACHE_S
    clock: Callable[[], float] = time.monotonic
    _cached: dict[str, ExchangeRate] | None = None
    _read_at: float = field(default=float("-inf"))

    async def rates(self) -> dict[str, ExchangeRate]:
        if self._cached is None or self.clock() - self._read_at >= self.ttl_s:
            read_at = self.clock()
            self._cached, self._read_at = await self.source.rates(), read_at
        return self._cached


async def set_rate(uow: UnitOfWork, base: str, quote: str, rate: Decimal) -> ExchangeRate:
    """Sets (or replaces) the rate of BASEQUOTE; orders accepted before keep theirs."""
    check_rate(base, quote, rate)
    async with uow, uow.transaction():
        stored = await uow.fx_rates.put(base, quote, rate)
        await uow.commit()
    return stored


async def rates_and_product_currencies(
    uow: UnitOfWork,
) -> tuple[list[ExchangeRate], list[str]]:
    async with uow:
        rates = await uow.fx_rates.all()
        currencies = await uow.products.currencies()
    return sorted(rates, key=lambda r: r.pair), sorted(currencies)
