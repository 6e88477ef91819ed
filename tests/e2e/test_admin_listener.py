"""The api's operators' endpoints and /metrics live on a listener of their own (API_ADMIN_PORT,
loopback by default), served by the same processes: its public port answers 404 for them."""

import ipaddress
import os
import socket
import struct
from pathlib import Path

import httpx
import pytest

from tests.conftest import Stack

pytestmark = pytest.mark.e2e

SOMEONE = "00000000-0000-0000-0000-000000000000"


async def test_the_public_port_answers_404_for_admin_endpoints_and_metrics(urls: Stack) -> None:
    token = os.environ["ADMIN_TOKEN"]
    async with httpx.AsyncClient(
        base_url=str(urls.api_url), headers={"Authorization": f"Bearer {token}"}, timeout=10
    ) as public:
        for method, path in (
            ("POST", "/admin/accounts"),
            ("GET", f"/admin/accounts/{SOMEONE}"),
            ("POST", f"/admin/accounts/{SOMEONE}/credit"),
            ("GET", "/metrics"),
        ):
            response = await public.request(method, path, json={})
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"] == "NOT_FOUND"
        for probe in ("/healthz", "/readyz"):
            assert (await public.get(probe)).status_code == 200, probe


async def test_the_admin_port_has_the_admin_endpoints_metrics_and_health(
    api_admin: httpx.AsyncClient,
) -> None:
    missing = await api_admin.get(f"/admin/accounts/{SOMEONE}")
    assert missing.status_code == 404
    assert missing.json()["error"] == "ACCOUNT_NOT_FOUND"  # the endpoint answered
    scraped = await api_admin.get("/metrics")
    assert scraped.status_code == 200
    assert "orders_processing" in scraped.text
    for probe in ("/healthz", "/readyz"):
        assert (await api_admin.get(probe)).status_code == 200, probe
    assert (await api_admin.get("/v2/balances")).status_code == 404


def listening_addresses(port: int) -> list[str]:
    """The local addresses of every socket listening on `port` (from /proc/net/tcp*)."""
    found = []
    for table, family in (("/proc/net/tcp", socket.AF_INET), ("/proc/net/tcp6", socket.AF_INET6)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            address, hex_port = fields[1].rsplit(":", 1)
            if fields[3] != "0A" or int(hex_port, 16) != port:  # 0A: LISTEN
                continue
            raw = bytes.fromhex(address)
            # The kernel prints each 32-bit word in host order.
            words = struct.unpack(f"<{len(raw) // 4}I", raw)
            packed = struct.pack(f">{len(words)}I", *words)
            found.append(str(ipaddress.ip_address(socket.inet_ntop(family, packed))))
    return found


def test_the_admin_port_listens_on_loopback_only(urls: Stack) -> None:
    """The stack leaves API_ADMIN_BIND_HOST unset: every worker binds 127.0.0.1."""
    port = httpx.URL(str(urls.api_admin_url)).port
    assert port is not None
    addresses = listening_addresses(port)
    assert addresses, f"nothing listens on the admin port {port}"
    assert set(addresses) == {"127.0.0.1"}, addresses
