"""Initialise: validation of the request body and what the execution echoes back."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from aiotlink.testing import FakeTransactionLink, ManualClock
from aiotlink.testing._validation import (
    EXPIRY_GRACE,
    canonical_uuid,
    parse_expires_at,
    parse_initialise_body,
)
from aiotlink.testing._wire import ApiProblem, format_instant

from .helpers import auth, error_codes, error_of, initialise

NOW = datetime(2027, 1, 15, 12, 0, tzinfo=UTC)


async def post_raw(
    fake: FakeTransactionLink,
    session: aiohttp.ClientSession,
    body: bytes | io.BytesIO,
    content_type: str = "application/json;charset=UTF-8",
) -> tuple[int, dict[str, Any]]:
    """Post raw bytes to initialise; return the status and the decoded body."""
    headers = {**auth(fake.token), "Content-Type": content_type}
    async with session.post(f"{fake.url}/workflows", data=body, headers=headers) as response:
        if response.status == 200:
            return response.status, await response.json()
        return response.status, await error_of(response)


def good_body(**changes: Any) -> dict[str, Any]:
    """A valid initialise body for definition ``kyc``, with ``changes`` applied."""
    body: dict[str, Any] = {"workflowDefinitionId": "kyc", "locale": "en", "parameters": {}}
    body.update(changes)
    return {key: value for key, value in body.items() if value is not ...}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (good_body(workflowDefinitionId=...), "workflowDefinitionId"),
        (good_body(workflowDefinitionId=None), "workflowDefinitionId"),
        (good_body(workflowDefinitionId=7), "workflowDefinitionId"),
        (good_body(workflowDefinitionId=" "), "workflowDefinitionId"),
        (good_body(locale=...), "locale"),
        (good_body(locale=None), "locale"),
        (good_body(locale=""), "locale"),
        (good_body(parameters=...), "parameters"),
        (good_body(parameters=None), "parameters"),
        (good_body(parameters=[1, 2]), "parameters"),
        (good_body(parameters="a=b"), "parameters"),
        (good_body(expiresAt="tomorrow"), "expiresAt"),
        (good_body(expiresAt=1_900_000_000), "expiresAt"),
        (good_body(expiresAt="2027-01-16T12:00:00"), "expiresAt"),
        (good_body(recordId="12345"), "recordId"),
        (good_body(recordId="0b5e0c4e8b8e4e2f9c0e1c2d3e4f5a6b"), "recordId"),
        (good_body(recordId=12345), "recordId"),
    ],
)
async def test_bad_fields_answer_400_naming_the_field(
    fake: FakeTransactionLink,
    session: aiohttp.ClientSession,
    body: dict[str, Any],
    field: str,
) -> None:
    """A missing, null or mistyped field answers 400 VALIDATION_ERROR naming that field."""
    fake.add_definition("kyc")
    status, error = await post_raw(fake, session, json.dumps(body).encode())
    assert status == 400
    assert [item["code"] for item in error["errors"]] == ["VALIDATION_ERROR"]
    assert error["errors"][0]["message"].startswith(f"{field}: ")


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe{}", b"[]", b'"text"', b"null", b"42"])
async def test_a_body_that_is_not_a_json_object_answers_400(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, raw: bytes
) -> None:
    """A body that is not JSON, or JSON but not an object, answers 400 INVALID_REQUEST_BODY."""
    status, error = await post_raw(fake, session, raw)
    assert status == 400
    assert [item["code"] for item in error["errors"]] == ["INVALID_REQUEST_BODY"]


async def test_every_fault_of_a_body_is_listed(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A body with several faults lists each of them in one 400."""
    status, error = await post_raw(fake, session, b'{"recordId": "x", "expiresAt": "no"}')
    assert status == 400
    fields = sorted(item["message"].split(":")[0] for item in error["errors"])
    assert fields == ["expiresAt", "locale", "parameters", "recordId", "workflowDefinitionId"]


async def test_a_body_that_is_not_declared_json_answers_415(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A body sent without an application/json content type answers 415."""
    fake.add_definition("kyc")
    status, error = await post_raw(fake, session, json.dumps(good_body()).encode(), "text/plain")
    assert status == 415
    assert error["errors"][0]["code"] == "UNSUPPORTED_MEDIA_TYPE"


async def test_an_unknown_definition_answers_404(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """An initialise of a definition the fake does not know answers 404."""
    status, error = await post_raw(fake, session, json.dumps(good_body()).encode())
    assert status == 404
    assert error["errors"][0]["code"] == "WORKFLOW_DEFINITION_NOT_FOUND"


async def test_a_too_large_body_answers_413(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A body over aiohttp's 1 MiB limit answers 413 with an ErrorResponse."""
    body = json.dumps(good_body(parameters={"blob": "x" * (2 << 20)})).encode()
    status, error = await post_raw(fake, session, io.BytesIO(body))
    assert status == 413
    assert error["errors"][0]["code"] == "PAYLOAD_TOO_LARGE"
    assert fake.requests[-1].body == b""


async def test_the_execution_echoes_the_request(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Parameters, locale and an upper-case recordId come back, the UUID in lower case."""
    fake.add_definition("kyc", name="KYC check", revision="7", ui_options={"theme": "dark"})
    record_id = "0B5E0C4E-8B8E-4E2F-9C0E-1C2D3E4F5A6B"
    body = await initialise(
        session,
        fake,
        "kyc",
        locale="de",
        parameters={"a": [1, {"b": None}]},
        recordId=record_id,
        unknownField=True,
    )
    assert body["parameters"] == {"a": [1, {"b": None}]}
    assert body["locale"] == "de"
    assert body["recordId"] == record_id.lower()
    assert (body["name"], body["revision"], body["uiOptions"]) == (
        "KYC check",
        "7",
        {"theme": "dark"},
    )
    assert body["status"] == "INITIALISED"


async def test_expires_at_accepts_exactly_thirty_minutes(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """A client that sends now + 30 min, computed a moment before, is accepted."""
    fake.add_definition("kyc")
    sent = datetime.fromtimestamp(clock.now, UTC) + timedelta(minutes=30)
    clock.advance(2)  # the request takes a while to arrive
    body = await initialise(session, fake, "kyc", expiresAt=sent.isoformat())
    assert body["expiresAt"] == format_instant(sent)


@pytest.mark.parametrize(
    ("offset", "accepted"),
    [
        (timedelta(minutes=30) - EXPIRY_GRACE, True),
        (timedelta(minutes=30) - EXPIRY_GRACE - timedelta(seconds=1), False),
        (timedelta(days=30), True),
        (timedelta(days=30, seconds=1), False),
        (timedelta(minutes=-5), False),
    ],
)
def test_expires_at_bounds(offset: timedelta, accepted: bool) -> None:
    """expiresAt lies between now + 30 min (less the grace) and now + 30 days, inclusive."""
    moment, error = parse_expires_at((NOW + offset).isoformat(), NOW)
    assert (moment is not None) is accepted
    assert (error is None) is accepted


def test_expires_at_keeps_its_instant_across_offsets() -> None:
    """An expiresAt with another offset is the same instant, answered in UTC with Z."""
    moment, _ = parse_expires_at("2027-01-16T14:00:00.250+02:00", NOW)
    assert moment is not None
    assert format_instant(moment) == "2027-01-16T12:00:00.250Z"
    with_z, _ = parse_expires_at("2027-01-16T12:00:00Z", NOW)
    assert with_z is not None
    assert format_instant(with_z) == "2027-01-16T12:00:00Z"


def test_parse_initialise_body_raises_a_400_problem() -> None:
    """The pure parser raises ApiProblem 400 and returns a request for a good body."""
    with pytest.raises(ApiProblem) as caught:
        parse_initialise_body(b"{}", NOW)
    assert caught.value.status == 400
    parsed = parse_initialise_body(json.dumps(good_body()).encode(), NOW)
    assert (parsed.workflow_definition_id, parsed.expires_at, parsed.record_id) == (
        "kyc",
        None,
        None,
    )


def test_canonical_uuid_needs_the_hyphenated_form() -> None:
    """Only the 8-4-4-4-12 form counts as a UUID; it comes back in lower case."""
    assert canonical_uuid("0B5E0C4E-8B8E-4E2F-9C0E-1C2D3E4F5A6B") == (
        "0b5e0c4e-8b8e-4e2f-9c0e-1c2d3e4f5a6b"
    )
    assert canonical_uuid("{0b5e0c4e-8b8e-4e2f-9c0e-1c2d3e4f5a6b}") is None
    assert canonical_uuid("urn:uuid:0b5e0c4e-8b8e-4e2f-9c0e-1c2d3e4f5a6b") is None


async def test_each_execution_gets_a_new_id(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Two initialises of one definition make two executions."""
    fake.add_definition("kyc")
    first = await initialise(session, fake, "kyc")
    second = await initialise(session, fake, "kyc")
    assert first["id"] != second["id"]


async def test_an_error_code_list_helper_reads_codes(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A request for an unknown execution gives the WORKFLOW_NOT_FOUND code."""
    async with session.get(f"{fake.url}/workflows/x", headers=auth(fake.token)) as response:
        assert await error_codes(response) == ["WORKFLOW_NOT_FOUND"]
