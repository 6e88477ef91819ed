"""Runs last: every /v2 answer the e2e suite received (tests/contract_recording.py) decodes in
a strictly typed EZ v2 client (tests/ez_v2_models.py), its status is declared for its
operation in our /openapi.json, and its body validates against the declared schema. A tour
first calls every operation, so neither check passes on nothing."""

import re
from collections import Counter
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import BaseModel

from tests import ez_v2_models
from tests.contract_recording import CHANGING, EXCHANGES, Exchange
from tests.e2e.conftest import NewClient, NewProduct

pytestmark = pytest.mark.e2e
MIN_SUCCESSES_PER_OPERATION = 1


def decodes(model: type[BaseModel], body: Any) -> bool:
    try:
        model.model_validate(body, strict=True)
    except ValueError:
        return False
    return True


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): op
        for path, item in doc["paths"].items()
        if path.startswith("/v2/")
        for method, op in item.items()
    }


def route_of(ops: dict[tuple[str, str], dict[str, Any]], ex: Exchange) -> tuple[str, str] | None:
    """The operation's route template; a literal segment beats a parameter."""
    matches = [
        (path.count("{"), (method, path))
        for method, path in ops
        if method == ex.method
        and re.fullmatch(re.sub(r"\{[^/]+\}", "[^/]+", path), ex.path) is not None
    ]
    return min(matches)[1] if matches else None


async def test_tour_calls_every_operation(new_client: NewClient, new_product: NewProduct) -> None:
    sku = await new_product(stock=2)
    client = await new_client()
    order = (await client.order(sku)).json()["data"]
    assert (await client.get_order(order["transactionId"]))["transactionId"]
    assert await client.codes(order["transactionId"])
    bulk = await client.http.post("/v2/orders", json={"products": [{"sku": sku, "quantity": 1}]})
    assert bulk.status_code == 200, bulk.text
    for path in ("/v2/orders", "/v2/products", "/v2/balances", "/v2/exchange-rates"):
        assert (await client.http.get(path)).status_code == 200


async def test_every_answer_is_declared_and_every_success_decodes_strictly(
    urls: Any,
) -> None:
    async with httpx.AsyncClient(base_url=str(urls.api_url)) as http:
        doc = (await http.get("/openapi.json")).json()
    ops = operations(doc)
    successes: Counter[tuple[str, str]] = Counter()
    problems: list[str] = []
    for ex in list(EXCHANGES):
        route = route_of(ops, ex)
        if route is None:
            continue  # a path or method no operation has (tests of 404/405 for routes)
        declared = ops[route]["responses"]
        where = f"{ex.method} {ex.path} -> {ex.status}"
        if str(ex.status) not in declared:
            problems.append(f"{where}: status not declared for {route} in /openapi.json")
            continue
        schema = declared[str(ex.status)].get("content", {}).get("application/json", {})
        if "schema" in schema and ex.body is not None:
            try:
                jsonschema.validate(
                    ex.body, {**schema["schema"], "components": doc.get("components", {})}
                )
            except jsonschema.ValidationError as exc:
                problems.append(f"{where}: not the declared schema: {exc.message[:200]}")
        if 200 <= ex.status < 300:
            successes[route] += 1
            model = ez_v2_models.SUCCESS.get(route)
            codes = route == ("GET", "/v2/orders/{transactionId}/codes")
            if codes and ex.pin_format == "string":
                model = ez_v2_models.STRING_PIN_CODES
            if model is None:
                problems.append(f"{route}: no strict model in tests/ez_v2_models.py")
                continue
            try:
                model.model_validate(ex.body, strict=True)
            except ValueError as exc:
                # answered just after the account's pin format changed: either format
                changing = codes and ex.pin_format == CHANGING
                if changing and decodes(ez_v2_models.STRING_PIN_CODES, ex.body):
                    continue
                problems.append(f"{where}: a strict EZ v2 client rejects it: {str(exc)[:300]}")
    for route in ops:
        if successes[route] < MIN_SUCCESSES_PER_OPERATION:
            problems.append(f"{route}: only {successes[route]} success(es) recorded")
    assert not problems, "\n".join(sorted(set(problems))[:40])
