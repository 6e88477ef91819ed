"""The audit of admin actions (shared.audit.AdminAudit) on a small admin app: every request
under /admin that is not a read is recorded, refused ones too, with the declared operator,
the client's address, the route template and the path's ids, and nothing of the body."""

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI
from prometheus_client import REGISTRY
from pydantic import BaseModel, SecretStr

from shared.audit import AdminAction, AdminAudit
from shared.web import AdminGuard, admin_only, install_common, ok
from tests.helpers import unique

TOKEN = "audit-test-admin-token-0123456789"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
ACCOUNT = "2f1c4b8e-0000-4000-8000-00000000abcd"

router = APIRouter(prefix="/admin", dependencies=[Depends(admin_only)])


class Credit(BaseModel):
    amount: str


@router.post("/accounts/{account_id}/credit")
async def credit(account_id: str, body: Credit) -> dict[str, Any]:
    return ok({"accountId": account_id, "apiKey": "ak_shown_once_never_recorded"})


@router.get("/accounts/{account_id}")
async def show(account_id: str) -> dict[str, Any]:
    return ok({"accountId": account_id})


class Audit:
    def __init__(self) -> None:
        self.recorded: list[AdminAction] = []
        self.failing = False

    async def record(self, action: AdminAction) -> None:
        if self.failing:
            raise ConnectionError("database down")
        self.recorded.append(action)


@pytest.fixture
def audit() -> Audit:
    return Audit()


@pytest.fixture
def service() -> str:
    return unique("audited")


@pytest.fixture
async def http(audit: Audit, service: str) -> AsyncIterator[httpx.AsyncClient]:
    app = FastAPI()
    app.state.admin_guard = AdminGuard(service, SecretStr(TOKEN))
    install_common(app, service, {}, max_body_bytes=1024)
    app.include_router(router)
    app.add_middleware(AdminAudit, service=service, record=audit.record)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=("198.51.100.4", 40000)),
        base_url="http://api-admin",
    ) as client:
        yield client


async def test_an_admin_action_is_recorded_before_its_answer_reaches_the_client(
    http: httpx.AsyncClient, audit: Audit
) -> None:
    response = await http.post(
        f"/admin/accounts/{ACCOUNT}/credit",
        json={"amount": "10.00", "note": "a body is never recorded"},
        headers={**ADMIN, "X-Operator": "alice"},
    )
    assert response.status_code == 200
    (action,) = audit.recorded
    assert action.operator == "alice"
    assert action.client == "198.51.100.4"
    assert (action.method, action.route) == ("POST", "/admin/accounts/{account_id}/credit")
    assert action.ids == {"account_id": ACCOUNT}
    assert action.status == 200
    assert action.request_id == response.headers["x-request-id"]
    assert "never recorded" not in repr(action)
    assert "ak_shown_once" not in repr(action)


async def test_refused_requests_are_recorded_and_reads_are_not(
    http: httpx.AsyncClient, audit: Audit
) -> None:
    await http.get(f"/admin/accounts/{ACCOUNT}", headers=ADMIN)
    wrong = await http.post(
        f"/admin/accounts/{ACCOUNT}/credit",
        json={"amount": "1"},
        headers={"Authorization": "Bearer wrong-token-never-recorded"},
    )
    invalid = await http.post(f"/admin/accounts/{ACCOUNT}/credit", json={}, headers=ADMIN)
    unknown = await http.delete("/admin/nothing-here/42", headers=ADMIN)
    too_big = await http.post(
        f"/admin/accounts/{ACCOUNT}/credit", json={"amount": "1" * 2000}, headers=ADMIN
    )
    await http.post("/healthz")  # not an admin path
    assert [a.status for a in audit.recorded] == [401, 400, 404, 413]
    assert (wrong.status_code, invalid.status_code, unknown.status_code) == (401, 400, 404)
    assert too_big.status_code == 413
    assert all(a.operator == "unknown" for a in audit.recorded)  # no X-Operator sent
    assert audit.recorded[0].ids == {"account_id": ACCOUNT}
    assert (audit.recorded[2].route, audit.recorded[2].ids) == ("unmatched", {})
    assert "wrong-token" not in repr(audit.recorded)


@pytest.mark.parametrize(
    "sent", [b"", b"rm -rf /", b"a" * 65, "ali\u00e7e".encode(), b"bob\tsmith"]
)
async def test_an_operator_name_that_no_user_has_is_recorded_as_unknown(
    http: httpx.AsyncClient, audit: Audit, sent: bytes
) -> None:
    await http.post(
        f"/admin/accounts/{ACCOUNT}/credit",
        json={"amount": "1"},
        headers={**ADMIN, "X-Operator": sent},
    )
    assert audit.recorded[-1].operator == "unknown"


async def test_a_record_that_cannot_be_written_is_logged_whole_and_the_answer_goes_out(
    http: httpx.AsyncClient, audit: Audit, service: str, caplog: pytest.LogCaptureFixture
) -> None:
    audit.failing = True
    with caplog.at_level(logging.ERROR, logger="shared.audit"):
        response = await http.post(
            f"/admin/accounts/{ACCOUNT}/credit",
            json={"amount": "1"},
            headers={**ADMIN, "X-Operator": "carol"},
        )
    assert response.status_code == 200
    assert REGISTRY.get_sample_value("admin_audit_lost_total", {"service": service}) == 1
    (line,) = [r.getMessage() for r in caplog.records]
    assert "admin action not recorded in the audit (ConnectionError)" in line
    assert f"POST /admin/accounts/{{account_id}}/credit (account_id={ACCOUNT}) by carol" in line
    assert "from 198.51.100.4" in line
