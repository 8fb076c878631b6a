"""Request shapes of the four endpoints, and arguments refused before any request."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
from aioresponses import aioresponses
from yarl import URL

from aiotlink import TransactionLinkClient
from aiotlink._arguments import check_expires_at

from .conftest import EXECUTION_ID, TOKEN, execution_body

API = "https://api.transactionlink.io"


def sent(mocked: aioresponses, method: str, url: str) -> Any:
    """The calls aioresponses recorded for one request."""
    return mocked.requests[(method, URL(url))]


async def test_initialise_request_shape(mocked: aioresponses) -> None:
    """POST /workflows with camelCase JSON, the spec's content type, and parameters={}."""
    mocked.post(f"{API}/workflows", payload=execution_body(status="INITIALISED"))
    async with TransactionLinkClient(TOKEN) as client:
        execution = await client.workflows.initialise("kyc-basic")
    assert execution.status == "INITIALISED"
    (call,) = sent(mocked, "POST", f"{API}/workflows")
    assert json.loads(call.kwargs["data"]) == {
        "workflowDefinitionId": "kyc-basic",
        "locale": "en",
        "parameters": {},
    }
    headers = call.kwargs["headers"]
    assert headers["Content-Type"] == "application/json;charset=UTF-8"
    assert headers["Authorization"] == TOKEN


async def test_record_id_as_uuid_and_expiry_as_datetime(mocked: aioresponses) -> None:
    """record_id may be a UUID object; an aware datetime expiry is sent in UTC with Z."""
    mocked.post(f"{API}/workflows", payload=execution_body())
    expires = datetime.now(UTC) + timedelta(days=2)
    record_id = UUID("9f1e2d3c-4b5a-4678-9abc-def012345678")
    async with TransactionLinkClient(TOKEN) as client:
        await client.workflows.initialise("d", expires_at=expires, record_id=record_id)
    (call,) = sent(mocked, "POST", f"{API}/workflows")
    body = json.loads(call.kwargs["data"])
    assert body["recordId"] == str(record_id)
    assert body["expiresAt"] == expires.isoformat(timespec="milliseconds").replace("+00:00", "Z")


async def test_find_and_cancel_paths(mocked: aioresponses) -> None:
    """find GETs /workflows/{id}; cancel POSTs /workflows/{id}/cancel with no body."""
    mocked.get(f"{API}/workflows/{EXECUTION_ID}", payload=execution_body())
    mocked.post(f"{API}/workflows/{EXECUTION_ID}/cancel", body="")
    async with TransactionLinkClient(TOKEN) as client:
        found = await client.workflows.find(UUID(EXECUTION_ID))
        await client.workflows.cancel(EXECUTION_ID)
    assert found.id == EXECUTION_ID
    (call,) = sent(mocked, "POST", f"{API}/workflows/{EXECUTION_ID}/cancel")
    assert call.kwargs["data"] is None
    assert "Content-Type" not in call.kwargs["headers"]


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"workflow_definition_id": ""}, "workflow_definition_id"),
        ({"workflow_definition_id": None}, "workflow_definition_id"),
        ({"locale": ""}, "locale"),
        ({"parameters": ["a"]}, "parameters"),
        ({"parameters": {"when": datetime.now(UTC)}}, "parameters"),
        ({"parameters": {"x": float("nan")}}, "parameters"),
        ({"expires_at": timedelta(minutes=29)}, "expires_at"),
        ({"expires_at": timedelta(days=31)}, "expires_at"),
        ({"expires_at": datetime(2030, 1, 1)}, "expires_at"),
        ({"expires_at": "2030-01-01"}, "expires_at"),
        ({"expires_at": datetime.now(UTC) - timedelta(hours=1)}, "expires_at"),
        ({"record_id": "not-a-uuid"}, "record_id"),
        ({"record_id": 12}, "record_id"),
    ],
)
async def test_initialise_refuses_bad_arguments_before_any_request(
    mocked: aioresponses, kwargs: dict[str, Any], named: str
) -> None:
    """Each malformed initialise argument raises ValueError naming it; nothing is sent."""
    arguments: dict[str, Any] = {"workflow_definition_id": "kyc"} | kwargs
    async with TransactionLinkClient(TOKEN) as client:
        with pytest.raises(ValueError, match=named):
            await client.workflows.initialise(**arguments)
    assert mocked.requests == {}


@pytest.mark.parametrize(
    ("call", "execution_id"),
    [
        ("find", ""),
        ("find", "../admin"),
        ("find", "a/b"),
        ("find", "x?y=1"),
        ("find", ".."),
        ("find", 42),
        ("cancel", "has space"),
        ("get_result", "not-a-uuid"),
        ("get_result", "7d0c1a3e"),
        ("get_result", None),
    ],
)
async def test_bad_execution_ids_are_refused_before_any_request(
    mocked: aioresponses, call: str, execution_id: Any
) -> None:
    """Malformed execution ids raise ValueError naming execution_id; nothing is sent."""
    async with TransactionLinkClient(TOKEN) as client:
        with pytest.raises(ValueError, match="execution_id"):
            await getattr(client.workflows, call)(execution_id)
    assert mocked.requests == {}


@pytest.mark.parametrize("max_bytes", [0, -1, 1.5, True])
async def test_bad_max_bytes(mocked: aioresponses, max_bytes: Any) -> None:
    """max_bytes must be a positive whole number."""
    async with TransactionLinkClient(TOKEN) as client:
        with pytest.raises(ValueError, match="max_bytes"):
            await client.workflows.get_result(EXECUTION_ID, max_bytes=max_bytes)
    assert mocked.requests == {}


def test_expiry_bounds_are_inclusive() -> None:
    """Exactly 30 minutes and exactly 30 days ahead are accepted."""
    now = datetime(2026, 11, 28, tzinfo=UTC)
    assert check_expires_at(timedelta(minutes=30), now=now) == now + timedelta(minutes=30)
    assert check_expires_at(now + timedelta(days=30), now=now) == now + timedelta(days=30)
    assert check_expires_at(None, now=now) is None
