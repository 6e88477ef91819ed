from pathlib import Path

from shared.asyncapi import render

COMMITTED = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


def test_the_committed_asyncapi_document_is_the_generated_one():
    assert COMMITTED.read_text() == render(), (
        "docs/asyncapi.yaml is out of date: run `.venv/bin/python -m shared.asyncapi > "
        "docs/asyncapi.yaml`"
    )


def test_the_public_event_schema_has_no_code_material():
    document = render()
    assert "orders.events" in document
    for secret_field in ("redeemCode", "pinCode", "sealedCode"):
        assert secret_field not in document
