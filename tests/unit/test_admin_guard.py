"""Failed admin authentications (shared.web.AdminGuard, behind every service's admin router):
logged without what was presented, counted, and throttled per client address before the
token is compared."""

import logging

import pytest
from prometheus_client import REGISTRY
from pydantic import SecretStr

from shared.web import AdminGuard, ApiError
from tests.helpers import unique

TOKEN = "the-admin-token-0123456789abcdef"
WRONG = "Bearer not-the-token-9f8e7d6c5b4a"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def service() -> str:
    return unique("guarded")  # its own counters


@pytest.fixture
def guard(clock: Clock, service: str) -> AdminGuard:
    return AdminGuard(service, SecretStr(TOKEN), max_failures=3, window_s=60, clock=clock)


def refused(guard: AdminGuard, authorization: str | None, client: str = "10.0.0.1") -> ApiError:
    with pytest.raises(ApiError) as raised:
        guard.check(client, "POST", "/admin/accounts", authorization)
    return raised.value


def failures(service: str, reason: str) -> float:
    labels = {"service": service, "reason": reason}
    return REGISTRY.get_sample_value("admin_auth_failures_total", labels) or 0.0


def test_the_admin_token_passes_and_anything_else_is_401(guard: AdminGuard, service: str) -> None:
    guard.check("10.0.0.1", "GET", "/admin/products", f"Bearer {TOKEN}")
    guard.check("10.0.0.1", "GET", "/admin/products", f"bearer  {TOKEN} ")
    for authorization in (None, "", "Bearer ", TOKEN, f"Basic {TOKEN}"):
        assert refused(guard, authorization, client=unique("c")).status == 401, authorization
    assert refused(guard, WRONG, client=unique("c")).error == "UNAUTHORIZED"
    assert failures(service, "missing") == 5
    assert failures(service, "invalid") == 1
    assert failures(service, "throttled") == 0  # there from the start, for rate() and alerts


def test_failures_are_logged_with_who_and_what_but_never_the_token(
    guard: AdminGuard, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="shared.web"):
        refused(guard, WRONG, client="192.0.2.9")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "admin authentication failed (invalid credential)" in line
    assert "POST /admin/accounts from 192.0.2.9" in line
    assert "not-the-token" not in caplog.text
    assert TOKEN not in caplog.text


def test_too_many_failures_from_an_address_are_429_before_the_token_is_compared(
    guard: AdminGuard, clock: Clock, service: str
) -> None:
    for _ in range(3):
        assert refused(guard, WRONG).status == 401
        clock.now += 10
    throttled = refused(guard, f"Bearer {TOKEN}")  # even the right token: it is not looked at
    assert (throttled.status, throttled.error) == (429, "RATE_LIMITED")
    assert throttled.headers["Retry-After"] == "30"  # the first failure leaves the window then
    assert "retry after" in throttled.message
    guard.check("10.0.0.2", "GET", "/admin/products", f"Bearer {TOKEN}")  # another address
    assert failures(service, "throttled") == 1
    clock.now += 30
    guard.check("10.0.0.1", "GET", "/admin/products", f"Bearer {TOKEN}")


def test_a_success_does_not_forgive_the_failures_of_its_address(
    guard: AdminGuard, clock: Clock
) -> None:
    refused(guard, WRONG)
    refused(guard, WRONG)
    guard.check("10.0.0.1", "GET", "/admin/products", f"Bearer {TOKEN}")
    refused(guard, WRONG)
    assert refused(guard, f"Bearer {TOKEN}").status == 429


def test_a_throttled_bout_is_logged_once(
    guard: AdminGuard, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    for _ in range(3):
        refused(guard, WRONG)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shared.web"):
        for _ in range(50):
            assert refused(guard, WRONG).status == 429
    (line,) = [r.getMessage() for r in caplog.records]
    assert "admin requests from 10.0.0.1 refused for 60s: 3 failed authentications" in line
    clock.now += 61
    for _ in range(3):
        refused(guard, WRONG)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="shared.web"):
        refused(guard, WRONG)
    assert len(caplog.records) == 1  # a new bout is told again


def test_the_addresses_remembered_are_bounded(
    guard: AdminGuard, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(AdminGuard, "MAX_ADDRESSES", 100)
    for _ in range(3):
        refused(guard, WRONG, client="10.9.9.9")
    for i in range(150):
        refused(guard, WRONG, client=f"10.1.0.{i}")
    assert len(guard._failures) == 100
    guard.check("10.9.9.9", "GET", "/admin/products", f"Bearer {TOKEN}")  # forgotten first
