"""Inventory's admin HTTP API: products (the catalog), stock (codes), and what was decided
about an order. Operators only."""

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal, Self

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from services.inventory.domain import model
from services.inventory.domain.model import StockLevel
from services.inventory.service_layer import catalog, decisions
from services.inventory.service_layer.unit_of_work import UnitOfWork
from shared.contracts import PinKind, ProductSnapshot
from shared.crypto import MAX_PIN_CODE, MAX_REDEEM_CODE, Code, CodeVault, code_problem
from shared.web import ApiError, admin_only, ok, paged

MAX_BODY_BYTES = 4 * 1024 * 1024  # 5,000 codes of the longest allowed size fit


@dataclass(frozen=True)
class AdminContext:
    new_uow: Callable[[], UnitOfWork]
    vault: CodeVault


def _context(request: Request) -> AdminContext:
    context: AdminContext = request.app.state.admin
    return context


Context = Annotated[AdminContext, Depends(_context)]


router = APIRouter(prefix="/admin", dependencies=[Depends(admin_only)], tags=["admin"])

Sku = Annotated[str, Path(min_length=1, max_length=64, description="The product's SKU.")]
Text = Annotated[str, Field(max_length=200)]
Paragraphs = Annotated[list[Annotated[str, Field(max_length=5_000)]], Field(max_length=50)]


class _Body(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")


class ProductIn(_Body):
    """A product's whole public record; inventory assigns its version."""

    sku: str | None = Field(None, description="Optional; must equal the SKU in the path.")
    name: str = Field(min_length=1, max_length=200)
    brand: Text = ""
    brand_category: Text = ""
    brand_sub_category: Text = ""
    types: list[Annotated[str, Field(max_length=64)]] = Field(default_factory=list, max_length=20)
    format: Literal["D", "P"] = "D"
    country: str = Field("", max_length=64)
    currency: str = Field(pattern=r"^[A-Z]{3}$")
    image_url: str = Field("", max_length=2_048)
    price: Decimal = Field(gt=0, max_digits=18, decimal_places=2)
    face_value: Decimal | None = Field(None, ge=0, max_digits=18, decimal_places=2)
    percentage_off_face_value: Decimal | None = Field(None, max_digits=7, decimal_places=4)
    is_instant_delivery_supported: bool = True
    descriptions: Paragraphs = Field(default_factory=list)
    instructions: Paragraphs = Field(default_factory=list)
    term_conditions: Paragraphs = Field(default_factory=list)
    active: bool = True
    backorder_deadline_seconds: int | None = Field(
        None, ge=1, le=30 * 24 * 3600, description="(ours) How long a backorder may wait."
    )
    pin_kind: PinKind = Field(
        "integer",
        description="(ours) `integer`: every PIN stocked is an int32 exactly (checked), so "
        "accounts receiving integer PINs may buy it; `string`: any PIN (docs/api.md).",
    )


class CodeIn(_Body):
    redeem_code: str = Field(min_length=1, max_length=MAX_REDEEM_CODE)
    pin_code: str | None = Field(None, min_length=1, max_length=MAX_PIN_CODE)

    @model_validator(mode="after")
    def _valid_code(self) -> Self:
        if problem := code_problem(self.redeem_code, self.pin_code):
            raise ValueError(problem)
        return self


class StockIn(_Body):
    """Either the codes to stock, or how many random demo codes to generate."""

    codes: list[CodeIn] | None = Field(None, min_length=1, max_length=model.MAX_CODES_PER_DELIVERY)
    generate: int | None = Field(None, ge=1, le=model.MAX_CODES_PER_DELIVERY)

    @model_validator(mode="after")
    def _exactly_one(self) -> Self:
        if (self.codes is None) == (self.generate is None):
            raise ValueError("give either 'codes' (a list) or 'generate' (a count), not both")
        return self


def _product_out(product: ProductSnapshot, stock: StockLevel | None = None) -> dict[str, Any]:
    out = product.model_dump(mode="json", by_alias=True)
    if stock is not None:
        out["stock"] = {"available": stock.available, "sold": stock.sold}
    return out


def _not_found(exc: catalog.ProductNotFound) -> ApiError:
    return ApiError(
        404,
        "PRODUCT_NOT_FOUND",
        f"No product with SKU {exc.sku!r}: create it first with PUT /admin/products/{{sku}} "
        "(`instant-orders products upsert`).",
    )


@router.put("/products/{sku}")
async def put_product(sku: Sku, body: ProductIn, context: Context) -> dict[str, Any]:
    if body.sku is not None and body.sku != sku:
        raise ApiError(
            400,
            "SKU_MISMATCH",
            f"The body's sku {body.sku!r} differs from the path's {sku!r}: send one SKU.",
        )
    product = ProductSnapshot.model_validate({**body.model_dump(exclude={"sku"}), "sku": sku})
    try:
        stored = await catalog.put_product(product, context.new_uow(), context.vault)
    except catalog.PinsNotInteger as exc:
        shown = ", ".join(str(i) for i in exc.stock_ids[:_SHOWN])
        more = f" and {len(exc.stock_ids) - _SHOWN} more" if len(exc.stock_ids) > _SHOWN else ""
        raise ApiError(
            409,
            "PINS_NOT_INTEGER",
            f"{len(exc.stock_ids)} code(s) for sale in {sku!r} have a PIN an integer cannot "
            f"carry exactly, or do not open (stock ids {shown}{more}): the product keeps its "
            "pinKind. Keep pinKind string, or withdraw those codes' product and stock the "
            "integer-PIN codes in a new one.",
            extra={"stockIds": exc.stock_ids[:_SHOWN]},
        ) from None
    except catalog.BackordersWaiting:
        raise ApiError(
            409,
            "BACKORDERS_WAITING",
            f"Backorders of {sku!r} wait for stock, and they may be orders of accounts that "
            "receive integer PINs, which a string PIN would reach: the product keeps pinKind "
            "integer. Make it string once they are served or cancelled, or stock string-PIN "
            "codes under a new SKU.",
        ) from None
    return ok(_product_out(stored))


# Offending codes named in one error (the count is always whole).
_SHOWN = 20


@router.post("/products/{sku}/withdraw")
async def withdraw_product(sku: Sku, context: Context) -> dict[str, Any]:
    try:
        stored = await catalog.withdraw_product(sku, context.new_uow())
    except catalog.ProductNotFound as exc:
        raise _not_found(exc) from None
    return ok(_product_out(stored))


@router.get("/products/{sku}")
async def get_product(sku: Sku, context: Context) -> dict[str, Any]:
    try:
        product, stock = await catalog.product_with_stock(sku, context.new_uow())
    except catalog.ProductNotFound as exc:
        raise _not_found(exc) from None
    return ok(_product_out(product, stock))


@router.get("/products")
async def list_products(
    context: Context,
    limit: Annotated[int, Query(ge=1, le=1_000)] = 100,
    page: Annotated[int, Query(ge=1, le=1_000_000)] = 1,
) -> dict[str, Any]:
    total, items = await catalog.products_with_stock(context.new_uow(), limit, (page - 1) * limit)
    return ok(paged(total, page, limit, [_product_out(product, stock) for product, stock in items]))


@router.post("/products/{sku}/stock")
async def add_stock(sku: Sku, body: StockIn, context: Context) -> dict[str, Any]:
    if body.codes is not None:
        codes = [Code(redeem_code=c.redeem_code, pin_code=c.pin_code) for c in body.codes]
    else:
        codes = model.demo_codes(body.generate or 0)
    try:
        result = await catalog.add_stock(sku, codes, context.new_uow(), context.vault)
    except catalog.ProductNotFound as exc:
        raise _not_found(exc) from None
    except catalog.PinsNotInteger as exc:
        raise ApiError(
            400,
            "INVALID_REQUEST",
            f"{len(exc.problems)} code(s) have a PIN that {sku!r} cannot hold (its pinKind is "
            "integer): see details; nothing was stocked.",
            extra={
                "details": [
                    {"field": f"codes.{position - 1}", "issue": problem}
                    for position, problem in exc.problems[:_SHOWN]
                ]
            },
        ) from None
    except catalog.RefingerprintPending:
        raise ApiError(
            503,
            "STOCK_BEING_REFINGERPRINTED",
            "Inventory is still giving codes stocked earlier their new fingerprint (it does so "
            "on its own, whenever it finds such codes), and stocks nothing until then so that "
            "no duplicate goes unseen: send the stock again in a minute. If this lasts, the "
            "inventory log says what holds it up.",
            headers={"Retry-After": "30"},
        ) from None
    return ok(
        {
            "sku": result.sku,
            "added": result.added,
            "skipped": result.skipped,
            "available": result.available,
        }
    )


@router.get("/decisions/{transaction_id}")
async def get_decision(
    transaction_id: Annotated[str, Path(min_length=1, max_length=64)], context: Context
) -> dict[str, Any]:
    """Never the code: its stock id says which one was sold."""
    decision = await decisions.decision_of(transaction_id, context.new_uow())
    if decision is None:
        raise ApiError(
            404,
            "DECISION_NOT_FOUND",
            "Inventory has decided nothing about this order: its PlaceOrder never arrived or "
            "was dead-lettered.",
        )
    return ok(
        {
            "transactionId": decision.transaction_id,
            "accountId": str(decision.account_id),
            "sku": decision.sku,
            "state": decision.state.value,
            "placedAt": decision.placed_at.isoformat(),
            "stockId": decision.stock_id,
            "cancelReason": decision.cancel_reason,
        }
    )
