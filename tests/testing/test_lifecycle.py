"""Starting and stopping the fake, its URLs, and the paths it does not serve."""

from __future__ import annotations

import asyncio
import json
import re
import socket

import aiohttp
import pytest

from aiotlink.testing import FakeTransactionLink, GeneratedResult, ManualClock
from aiotlink.testing._results import CHUNK_BYTES

from .helpers import auth, error_codes, exact, initialise


async def test_explicit_start_and_close(session: aiohttp.ClientSession) -> None:
    """start() listens on 127.0.0.1 at a URL without a trailing slash; close() stops it."""
    fake = FakeTransactionLink()
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.url
    with pytest.raises(RuntimeError, match="not started"):
        _ = fake.storage_url
    await fake.start()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fake.url)
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", fake.storage_url)
        with pytest.raises(RuntimeError, match="already started"):
            await fake.start()
        async with session.get(f"{fake.url}/workflows/x", headers=auth(fake.token)) as response:
            assert response.status == 404
    finally:
        await fake.close()
    await fake.close()
    with pytest.raises(aiohttp.ClientConnectionError):
        async with session.get(f"{fake.url}/workflows/x"):
            pass


def free_port() -> int:
    """A port that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


async def test_a_given_port_is_used(session: aiohttp.ClientSession) -> None:
    """port= makes the API listen there."""
    port = free_port()
    async with FakeTransactionLink(port=port) as fake:
        assert fake.url == f"http://127.0.0.1:{port}"


async def test_a_taken_port_raises_oserror(fake: FakeTransactionLink) -> None:
    """Starting on a port in use raises OSError and leaves nothing listening."""
    port = int(fake.url.rsplit(":", 1)[1])
    other = FakeTransactionLink(storage_port=port)
    with pytest.raises(OSError, match="address already in use"):
        await other.start()
    with pytest.raises(RuntimeError):
        _ = other.url


def test_constructor_arguments_are_checked() -> None:
    """A token not starting with tot_, a negative threshold or a zero TTL raise ValueError."""
    with pytest.raises(ValueError, match="tot_"):
        FakeTransactionLink(token="Bearer x")
    with pytest.raises(ValueError, match="redirect_threshold"):
        FakeTransactionLink(redirect_threshold=-1)
    with pytest.raises(ValueError, match="url_ttl"):
        FakeTransactionLink(url_ttl=0)


async def test_a_given_token_is_accepted(session: aiohttp.ClientSession) -> None:
    """token= fixes the all-permission tot_ token."""
    async with FakeTransactionLink(token="tot_demo") as fake:
        assert fake.token == "tot_demo"
        fake.add_definition("kyc")
        await initialise(session, fake, "kyc", credential="tot_demo")


def test_the_repr_holds_no_credentials() -> None:
    """The fake's repr shows neither its token nor its JWT."""
    fake = FakeTransactionLink()
    text = repr(fake)
    assert fake.token not in text
    assert fake.jwt not in text
    assert text.startswith("<FakeTransactionLink url=None")


async def test_unknown_paths_and_methods_answer_404(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Paths and methods outside the API answer 404 NOT_FOUND with an ErrorResponse."""
    for method, path in [
        ("GET", "/"),
        ("GET", "/workflows"),
        ("DELETE", "/workflows/x"),
        ("GET", "/workflows/x/cancel"),
        ("PUT", "/workflows/x/result"),
        ("GET", "/workflows/"),
    ]:
        async with session.request(
            method, f"{fake.url}{path}", headers=auth(fake.token)
        ) as response:
            assert response.status == 404, (method, path)
            assert await error_codes(response) == ["NOT_FOUND"]


async def test_head_on_the_api_has_no_body(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """HEAD is not an API method: it answers 404 without a body."""
    async with session.head(f"{fake.url}/workflows/x", headers=auth(fake.token)) as response:
        assert response.status == 404
        assert await response.read() == b""


async def test_the_interactive_link_opens_a_page(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """An interactive execution's link serves a small HTML page showing its status."""
    fake.add_definition("kyc", interactive=True, name="KYC <check>")
    execution = await initialise(session, fake, "kyc")
    async with session.get(execution["link"]) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "text/html;charset=UTF-8"
        page = await response.text()
    assert "KYC &lt;check&gt;" in page
    assert f"{execution['id']}: INITIALISED" in page
    async with session.get(f"{fake.url}/hosted/unknown") as response:
        assert response.status == 404


async def test_close_cuts_a_download_short(session: aiohttp.ClientSession) -> None:
    """Closing the fake during a long download ends it promptly instead of waiting for it."""
    fake = FakeTransactionLink(redirect_threshold=0)
    await fake.start()
    try:
        fake.add_definition(
            "big", statuses=["COMPLETED"], result=GeneratedResult(256 * CHUNK_BYTES)
        )
        execution = await initialise(session, fake, "big")
        async with session.get(
            f"{fake.url}/workflows/{execution['id']}/result", headers=auth(fake.token)
        ) as response:
            url = json.loads(await response.read())["$redirect"]
        async with session.get(exact(url)) as download:
            await download.content.readexactly(CHUNK_BYTES)
            await asyncio.wait_for(fake.close(), timeout=10)
            with pytest.raises(aiohttp.ClientPayloadError):
                await download.read()
    finally:
        await fake.close()


def test_a_manual_clock_moves_only_forward() -> None:
    """A ManualClock returns its time, advances by seconds, and refuses to go back."""
    clock = ManualClock(start=100.0)
    assert clock() == 100.0
    clock.advance(2.5)
    assert clock() == 102.5
    with pytest.raises(ValueError, match="forward"):
        clock.advance(-1)
    assert repr(clock) == "ManualClock(now=102.5)"
    assert ManualClock().now > 1_700_000_000
