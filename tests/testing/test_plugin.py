"""The pytest plugin: fixtures fake_transactionlink and transactionlink_client."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from types import ModuleType
from typing import ClassVar, cast

import aiohttp
import pytest

import aiotlink.testing._plugin as plugin
from aiotlink.testing import FakeTransactionLink

from .helpers import auth


def load_plugin_copy(name: str) -> ModuleType:
    """Execute the plugin's source as a fresh module, as pytest's import would."""
    spec = importlib.util.spec_from_file_location(name, plugin.__file__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_fake_transactionlink_is_a_started_fake(
    fake_transactionlink: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """The fake_transactionlink fixture gives a started fake with a valid token."""
    fake_transactionlink.add_definition("kyc")
    body = {"workflowDefinitionId": "kyc", "locale": "en", "parameters": {}}
    async with session.post(
        f"{fake_transactionlink.url}/workflows", json=body, headers=auth(fake_transactionlink.token)
    ) as response:
        assert response.status == 200


async def test_the_fake_fixture_closes_the_fake(session: aiohttp.ClientSession) -> None:
    """After the test, the fake of the fixture no longer listens."""
    lifecycle = plugin._fake_transactionlink()
    fake = await anext(lifecycle)
    async with session.get(f"{fake.url}/workflows/x") as response:
        assert response.status == 401
    with pytest.raises(StopAsyncIteration):
        await anext(lifecycle)
    with pytest.raises(aiohttp.ClientConnectionError):
        await session.get(f"{fake.url}/workflows/x")


class StubClient:
    """Stands in for aiotlink.TransactionLinkClient: records how it was made and closed."""

    made: ClassVar[list[StubClient]] = []

    def __init__(self, token: str, *, base_url: str, retry_backoff: bool) -> None:
        self.token = token
        self.base_url = base_url
        self.retry_backoff = retry_backoff
        self.closed = False
        StubClient.made.append(self)

    async def close(self) -> None:
        self.closed = True


@pytest.fixture
def stub_client(monkeypatch: pytest.MonkeyPatch) -> type[StubClient]:
    """Replace aiotlink.TransactionLinkClient by a stub for one test."""
    StubClient.made = []
    monkeypatch.setattr(
        importlib.import_module("aiotlink"), "TransactionLinkClient", StubClient, raising=False
    )
    return StubClient


async def test_transactionlink_client_points_at_the_fake(
    stub_client: type[StubClient],
    fake_transactionlink: FakeTransactionLink,
    transactionlink_client: StubClient,
) -> None:
    """The client fixture is the fake's client, retrying without sleeps."""
    assert stub_client.made == [transactionlink_client]
    assert transactionlink_client.token == fake_transactionlink.token
    assert transactionlink_client.base_url == fake_transactionlink.url
    assert transactionlink_client.retry_backoff is False


async def test_transactionlink_client_is_the_real_client(
    fake_transactionlink: FakeTransactionLink, transactionlink_client: object
) -> None:
    """Without a stub, the client fixture is an aiotlink.TransactionLinkClient for the fake."""
    from aiotlink import TransactionLinkClient

    assert isinstance(transactionlink_client, TransactionLinkClient)
    assert fake_transactionlink.url in repr(transactionlink_client)


async def test_the_client_fixture_closes_the_client(
    stub_client: type[StubClient], fake_transactionlink: FakeTransactionLink
) -> None:
    """After the test, the client of the fixture is closed."""
    lifecycle = plugin._transactionlink_client(fake_transactionlink)
    client = cast(StubClient, await anext(lifecycle))
    assert not client.closed
    with pytest.raises(StopAsyncIteration):
        await anext(lifecycle)
    assert client.closed


def test_importing_the_plugin_warns_nothing() -> None:
    """Loading the plugin module raises no warning at all."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = load_plugin_copy("aiotlink_plugin_probe")
    assert caught == []
    assert module.fake_transactionlink.name == "fake_transactionlink"
    assert module.transactionlink_client.name == "transactionlink_client"


def test_without_pytest_asyncio_the_fixtures_fail_clearly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without pytest-asyncio the plugin still imports; its fixtures fail naming what to install."""
    monkeypatch.setitem(sys.modules, "pytest_asyncio", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = load_plugin_copy("aiotlink_plugin_without_asyncio")
    assert caught == []
    assert module._PYTEST_ASYNCIO is None
    assert module.fake_transactionlink.name == "fake_transactionlink"
    assert module.transactionlink_client.name == "transactionlink_client"
    with pytest.raises(pytest.fail.Exception, match="needs pytest-asyncio"):
        module._needs_pytest_asyncio("fake_transactionlink")()
