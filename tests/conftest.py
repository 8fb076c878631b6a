"""Fixtures shared by the client's tests."""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import ClientResponse
from aioresponses import aioresponses
from aioresponses import core as aioresponses_core

from aiotlink import TransactionLinkClient
from aiotlink.testing import FakeTransactionLink

from .servers import ScriptedServer

TOKEN = "tot_test_0123456789abcdefghij"
THRESHOLD = 100_000  # results above this come as a $redirect from the fake fixture
EXECUTION_ID = "7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10"


def execution_body(**changes: Any) -> dict[str, Any]:
    """A FindWorkflowResponse body as the spec describes it, with ``changes`` applied."""
    body: dict[str, Any] = {
        "id": EXECUTION_ID,
        "workspaceId": "0b7e4c52-1d3a-4f6b-8e9c-2a5d7f1b3c40",
        "workflowDefinitionId": "5e8a2b1c-7f3d-4a9e-b6c0-1d2e3f4a5b60",
        "parameters": {"customerId": "c-42"},
        "name": "KYC onboarding",
        "revision": "7",
        "status": "RUNNING",
        "locale": "en",
        "expiresAt": "2026-12-01T10:00:00.000Z",
        "uiOptions": {"theme": "dark"},
        "executionType": "BACKGROUND",
        "executionVersion": 3,
        "token": None,
        "link": None,
        "recordId": "9f1e2d3c-4b5a-4678-9abc-def012345678",
        "origin": {"type": "API", "apiKeyId": "k-1"},
    }
    body.update(changes)
    return body


@pytest.fixture
async def fake() -> AsyncIterator[FakeTransactionLink]:
    """The fake with a small redirect threshold, so that result tests stay quick."""
    async with FakeTransactionLink(redirect_threshold=THRESHOLD) as started:
        yield started


@pytest.fixture
async def server() -> AsyncIterator[ScriptedServer]:
    """A scripted HTTP server on 127.0.0.1."""
    async with ScriptedServer() as running:
        yield running


@pytest.fixture
async def storage() -> AsyncIterator[ScriptedServer]:
    """A second scripted server, standing in for pre-signed storage."""
    async with ScriptedServer() as running:
        yield running


@pytest.fixture
async def client(server: ScriptedServer) -> AsyncIterator[TransactionLinkClient]:
    """A client of the scripted server that retries without sleeping."""
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        yield client


class _ResponseWithoutWriter(ClientResponse):
    """A ClientResponse that aioresponses 0.7.9 can build on aiohttp 3.14.

    aiohttp 3.14 added a required ``stream_writer`` argument that aioresponses does not
    pass yet (pnuckowski/aioresponses#289); a mocked response has no upload to track.
    """

    class _FinishedUpload:
        output_size = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", self._FinishedUpload())
        super().__init__(*args, **kwargs)


@pytest.fixture
def mocked(monkeypatch: pytest.MonkeyPatch) -> Iterator[aioresponses]:
    """aioresponses, patched to build responses on every supported aiohttp."""
    if "stream_writer" in inspect.signature(ClientResponse.__init__).parameters:
        monkeypatch.setattr(aioresponses_core, "ClientResponse", _ResponseWithoutWriter)
    with aioresponses() as mock:
        yield mock
