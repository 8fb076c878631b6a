"""The client's configuration and lifecycle."""

from __future__ import annotations

import gc

import aiohttp
import pytest
from aioresponses import aioresponses

from aiotlink import ClientClosedError, TransactionLinkClient
from aiotlink._client import TOKEN_ENV_VAR, USER_AGENT

from .conftest import EXECUTION_ID, TOKEN, execution_body
from .servers import ScriptedServer, reply

FIND_URL = f"https://api.transactionlink.io/workflows/{EXECUTION_ID}"


def test_token_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without token=, TRANSACTIONLINK_TOKEN is used."""
    monkeypatch.setenv(TOKEN_ENV_VAR, TOKEN)
    client = TransactionLinkClient()
    assert client._requester._get_headers["Authorization"] == TOKEN


def test_no_token_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """No token anywhere: ValueError at construction naming TRANSACTIONLINK_TOKEN."""
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    with pytest.raises(ValueError, match=TOKEN_ENV_VAR):
        TransactionLinkClient()


@pytest.mark.parametrize("token", ["", "   ", "tot_abc\r\nX-Injected: 1", " tot_abc", 42])
def test_malformed_tokens_are_refused_without_echoing_them(token: object) -> None:
    """Empty, padded or multi-line tokens raise ValueError that does not repeat the token."""
    with pytest.raises(ValueError, match="token") as caught:
        TransactionLinkClient(token)
    if isinstance(token, str) and token.strip():
        assert token.strip() not in str(caught.value)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"base_url": "ftp://x"}, "base_url"),
        ({"base_url": "not a url"}, "base_url"),
        ({"base_url": "https://api.example?x=1"}, "base_url"),
        ({"timeout": 0}, "timeout"),
        ({"timeout": -1.0}, "timeout"),
        ({"timeout": True}, "timeout"),
        ({"max_retries": -1}, "max_retries"),
        ({"max_retries": 1.5}, "max_retries"),
        ({"connection_limit": 0}, "connection_limit"),
        ({"connection_limit": "10"}, "connection_limit"),
        ({"default_headers": {"Authorization": "x"}}, "default_headers"),
        ({"default_headers": {"authorization": "x"}}, "default_headers must not set Authorization"),
        ({"default_headers": {"AUTHORIZATION": "x"}}, "default_headers must not set Authorization"),
        ({"default_headers": {"Accept": 3}}, "default_headers"),
    ],
)
def test_bad_options_name_the_argument(kwargs: dict[str, object], named: str) -> None:
    """Every malformed option raises ValueError naming it, at construction."""
    with pytest.raises(ValueError, match=named):
        TransactionLinkClient(TOKEN, **kwargs)


def test_base_url_trailing_slash_and_repr() -> None:
    """A trailing slash is dropped; repr shows the base URL and never the token."""
    client = TransactionLinkClient(TOKEN, base_url="https://api.example.com/")
    assert client.base_url == "https://api.example.com"
    assert repr(client) == "<TransactionLinkClient base_url='https://api.example.com'>"
    assert TOKEN not in repr(client)
    assert (client.timeout, client.max_retries) == (30.0, 3)


async def test_own_session_is_opened_lazily_and_closed_idempotently(mocked: aioresponses) -> None:
    """The client opens its session on first use and close() may be called twice."""
    mocked.get(FIND_URL, payload=execution_body())
    client = TransactionLinkClient(TOKEN)
    assert client._sessions._own_sessions == []
    await client.workflows.find(EXECUTION_ID)
    (session,) = client._sessions._own_sessions
    await client.close()
    await client.close()
    assert session.closed
    with pytest.raises(ClientClosedError, match="closed"):
        await client.workflows.find(EXECUTION_ID)


async def test_caller_session_is_used_and_not_closed(server: ScriptedServer) -> None:
    """A caller's session carries the calls and stays open after the client closes."""
    server.script("GET", f"/workflows/{EXECUTION_ID}", reply(200, execution_body()))
    async with aiohttp.ClientSession() as session:
        async with TransactionLinkClient(TOKEN, base_url=server.url, session=session) as client:
            await client.workflows.find(EXECUTION_ID)
        assert not session.closed
        assert client._sessions._own_sessions == []
    assert server.seen[0].headers["User-Agent"] == USER_AGENT


async def test_unclosed_client_warns_without_a_stray_task(mocked: aioresponses) -> None:
    """A client dropped without close() emits ResourceWarning; no task is left behind."""
    import asyncio

    mocked.get(FIND_URL, payload=execution_body())
    held = [TransactionLinkClient(TOKEN)]
    await held[0].workflows.find(EXECUTION_ID)
    (session,) = held[0]._sessions._own_sessions
    tasks_before = asyncio.all_tasks()

    def drop() -> None:
        held.clear()  # no reference cycle: freed here, or by the collection below
        gc.collect()

    with pytest.warns(ResourceWarning, match="not closed"):
        drop()
    assert asyncio.all_tasks() == tasks_before
    await session.close()


def test_unused_client_needs_no_close() -> None:
    """A client that never made a request has nothing to close and does not warn."""
    import warnings

    client = TransactionLinkClient(TOKEN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del client
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


async def test_with_options_shares_the_session_and_does_not_close_it(
    mocked: aioresponses,
) -> None:
    """A view from with_options uses the parent's session; closing the view keeps it open."""
    mocked.get(FIND_URL, payload=execution_body(), repeat=True)
    async with TransactionLinkClient(TOKEN) as client:
        view = client.with_options(timeout=5.0, max_retries=0, retry_backoff=False)
        assert (view.timeout, view.max_retries) == (5.0, 0)
        assert (client.timeout, client.max_retries) == (30.0, 3)
        await view.workflows.find(EXECUTION_ID)
        await view.close()
        await client.workflows.find(EXECUTION_ID)
        assert view._sessions is client._sessions
        assert view.with_options().max_retries == 0
    with pytest.raises(ValueError, match="max_retries"):
        client.with_options(max_retries=-2)
