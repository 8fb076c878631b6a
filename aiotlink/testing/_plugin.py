"""pytest plugin of aiotlink: fixtures for the fake, a client of it, and app-made clients.

``fake_transactionlink``, ``transactionlink_client`` and ``transactionlink_defaults``.

pytest loads it (entry point ``pytest11``) in every project that has aiotlink
installed, so importing it stays cheap and never fails or warns: the fake and the
client are imported only when a fixture is used, and without pytest-asyncio the
fixtures still exist and fail, when used, with a message saying what to install.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from types import ModuleType
from typing import TYPE_CHECKING, Any, NoReturn

import pytest

if TYPE_CHECKING:
    from aiotlink import TransactionLinkClient
    from aiotlink.testing._fake import FakeTransactionLink


def _load_pytest_asyncio() -> ModuleType | None:
    try:
        return importlib.import_module("pytest_asyncio")
    except ImportError:
        return None


def _needs_pytest_asyncio(name: str) -> Callable[[], NoReturn]:
    def fixture_without_pytest_asyncio() -> NoReturn:
        pytest.fail(
            f"the {name} fixture of aiotlink needs pytest-asyncio:"
            ' pip install pytest-asyncio, and set asyncio_mode = "auto"',
            pytrace=False,
        )

    fixture_without_pytest_asyncio.__name__ = name
    return fixture_without_pytest_asyncio


def _async_fixture(function: Callable[..., Any], pytest_asyncio: ModuleType | None) -> Any:
    """Make ``function`` a function-scoped async fixture named without its underscore.

    Without pytest-asyncio the fixture is a stub that fails with a clear message.
    """
    name = function.__name__.lstrip("_")
    if pytest_asyncio is None:
        return pytest.fixture(name=name)(_needs_pytest_asyncio(name))
    return pytest_asyncio.fixture(function, name=name)


async def _fake_transactionlink() -> AsyncIterator[FakeTransactionLink]:
    """A started ``FakeTransactionLink`` on 127.0.0.1, closed after the test."""
    from aiotlink.testing._fake import FakeTransactionLink

    async with FakeTransactionLink() as fake:
        yield fake


async def _transactionlink_client(
    fake_transactionlink: FakeTransactionLink,
) -> AsyncIterator[TransactionLinkClient]:
    """An ``aiotlink.TransactionLinkClient`` for ``fake_transactionlink``, closed after the test.

    It retries without sleeping (``retry_backoff=False``), so that faults injected into
    the fake cost a test no backoff time; ``client.with_options(retry_backoff=True)``
    gives the real waits back.
    """
    # Imported when used, like the fake: loading the plugin stays cheap.
    from aiotlink import TransactionLinkClient

    client = TransactionLinkClient(
        fake_transactionlink.token, base_url=fake_transactionlink.url, retry_backoff=False
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def transactionlink_defaults(
    fake_transactionlink: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> FakeTransactionLink:
    """Every ``TransactionLinkClient`` made during the test talks to the fake, without sleeps.

    For an app that makes its own client (in its lifespan, from the environment): the
    defaults the client reads are the fake's for the test, so the app runs unchanged.
    ``TRANSACTIONLINK_TOKEN`` and ``TRANSACTIONLINK_BASE_URL`` are the fake's token
    and URL, and a client made without ``retry_backoff=`` retries without sleeping, so
    that faults injected into the fake (``fail_next("find", 503, times=3)``) cost no
    backoff time. A client given ``token=``, ``base_url=`` or ``retry_backoff=``
    keeps what it was given. Gives the fake; all is undone after the test.
    """
    # Imported when used: loading the plugin stays cheap.
    from aiotlink import _client
    from aiotlink._arguments import BASE_URL_ENV_VAR, TOKEN_ENV_VAR

    monkeypatch.setenv(TOKEN_ENV_VAR, fake_transactionlink.token)
    monkeypatch.setenv(BASE_URL_ENV_VAR, fake_transactionlink.url)
    monkeypatch.setattr(_client, "RETRY_BACKOFF_DEFAULT", False)
    return fake_transactionlink


_PYTEST_ASYNCIO = _load_pytest_asyncio()
fake_transactionlink = _async_fixture(_fake_transactionlink, _PYTEST_ASYNCIO)
transactionlink_client = _async_fixture(_transactionlink_client, _PYTEST_ASYNCIO)
