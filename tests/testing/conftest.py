"""Fixtures for the tests of the fake server."""

from collections.abc import AsyncIterator

import aiohttp
import pytest

from aiotlink.testing import FakeTransactionLink, ManualClock

# fake_transactionlink and transactionlink_client come from the plugin, loaded by its
# pytest11 entry point since aiotlink is installed.


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session, closed after the test."""
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says so."""
    return ManualClock(start=1_800_000_000.0)


@pytest.fixture
async def fake(clock: ManualClock) -> AsyncIterator[FakeTransactionLink]:
    """A started fake on a manual clock, with a small redirect threshold."""
    async with FakeTransactionLink(clock=clock, redirect_threshold=10_000) as started:
        yield started
