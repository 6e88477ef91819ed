"""The api keeps an idle HTTP connection open longer than clients' connection pools do (httpx
5 s, aiohttp 15 s): at uvicorn's default of 5 s, a request on a connection idle just that
long raced the server's close of it and failed with a reset."""

import asyncio
from urllib.parse import urlsplit

import pytest

from shared.runtime import KEEP_ALIVE_S
from tests.conftest import Stack

pytestmark = pytest.mark.e2e

IDLE_S = 6.0  # past uvicorn's default keep-alive of 5 s


async def _get(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> bytes:
    writer.write(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    await asyncio.wait_for(reader.readexactly(length), 5)
    return head.split(b"\r\n", 1)[0]


async def test_a_connection_idle_past_five_seconds_still_serves(urls: Stack) -> None:
    assert IDLE_S < KEEP_ALIVE_S
    url = urlsplit(str(urls.api_url))
    assert url.hostname is not None
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    try:
        assert await _get(reader, writer, url.netloc) == b"HTTP/1.1 200 OK"
        # The idle spell is what is tested (not a wait for something to happen).
        await asyncio.sleep(IDLE_S)
        assert not reader.at_eof(), "the server closed the idle connection"
        assert await _get(reader, writer, url.netloc) == b"HTTP/1.1 200 OK"
    finally:
        writer.close()
