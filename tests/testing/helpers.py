"""Small helpers shared by the tests of the fake: raw HTTP calls and checks."""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from aiotlink.testing import FakeTransactionLink

SPEC = json.loads((Path(__file__).parent / "workflows.openapi.json").read_text())
SCHEMAS: dict[str, Any] = SPEC["components"]["schemas"]


def auth(credential: str) -> dict[str, str]:
    """Headers that authenticate with a tot_ token, sent as is."""
    return {"Authorization": credential}


def exact(url: str) -> URL:
    """A URL that aiohttp sends byte for byte, without re-quoting."""
    return URL(url, encoded=True)


async def initialise(
    session: aiohttp.ClientSession,
    fake: FakeTransactionLink,
    definition_id: str,
    *,
    credential: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """Initialise an execution and return its body; fails unless the answer is 200."""
    body = {"workflowDefinitionId": definition_id, "locale": "en", "parameters": {}, **fields}
    async with session.post(
        f"{fake.url}/workflows", json=body, headers=auth(credential or fake.token)
    ) as response:
        assert response.status == 200, await response.text()
        document: dict[str, Any] = await response.json()
        return document


async def find(
    session: aiohttp.ClientSession, fake: FakeTransactionLink, execution_id: str
) -> dict[str, Any]:
    """Find an execution and return its body; fails unless the answer is 200."""
    async with session.get(
        f"{fake.url}/workflows/{execution_id}", headers=auth(fake.token)
    ) as response:
        assert response.status == 200, await response.text()
        document: dict[str, Any] = await response.json()
        return document


async def error_of(response: aiohttp.ClientResponse) -> dict[str, Any]:
    """Check that an answer carries an ErrorResponse and return it."""
    assert response.headers["Content-Type"] == "application/json"
    document: dict[str, Any] = await response.json()
    assert set(document) == {"fingerprint", "errors"}
    assert isinstance(document["fingerprint"], str)
    uuid.UUID(document["fingerprint"])
    assert document["errors"]
    for error in document["errors"]:
        assert set(error) == {"code", "message"}
        assert isinstance(error["code"], str)
        assert isinstance(error["message"], str)
    return document


async def error_codes(response: aiohttp.ClientResponse) -> list[str]:
    """Return the error codes of an ErrorResponse answer."""
    return [error["code"] for error in (await error_of(response))["errors"]]
