"""Models and the converter: decoding execution bodies, encoding the initialise body."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from uuid import UUID

import attrs
import pytest

from aiotlink import Origin, WorkflowExecution, WorkflowStatus
from aiotlink._converter import (
    DecodeError,
    _converter,
    _make_fast_structure_fn,
    decode_execution,
    encode_initialise_request,
    format_datetime,
    to_camel_case,
)
from aiotlink._models import InitialiseRequest

from .conftest import EXECUTION_ID, execution_body

TERMINAL = {"COMPLETED", "FAILED", "TIMEOUT", "TERMINATED", "EXPIRED", "CANCELLED"}


def test_full_body_decodes_to_snake_case_fields() -> None:
    """Every spec field lands in its snake_case attribute with the right type."""
    execution = decode_execution(execution_body())
    assert isinstance(execution, WorkflowExecution)
    assert execution.id == EXECUTION_ID
    assert execution.workspace_id == "0b7e4c52-1d3a-4f6b-8e9c-2a5d7f1b3c40"
    assert execution.workflow_definition_id == "5e8a2b1c-7f3d-4a9e-b6c0-1d2e3f4a5b60"
    assert execution.parameters == {"customerId": "c-42"}
    assert (execution.name, execution.revision, execution.locale) == ("KYC onboarding", "7", "en")
    assert execution.status is WorkflowStatus.RUNNING
    assert execution.expires_at == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)
    assert execution.ui_options == {"theme": "dark"}
    assert (execution.execution_type, execution.execution_version) == ("BACKGROUND", 3)
    assert execution.record_id == UUID("9f1e2d3c-4b5a-4678-9abc-def012345678")
    assert execution.origin == Origin(type="API", details={"apiKeyId": "k-1"})
    assert not execution.is_terminal
    assert not execution.is_interactive


def test_optional_fields_may_be_null_or_absent() -> None:
    """expiresAt, token, link and recordId null or absent decode to None."""
    body = execution_body(expiresAt=None, recordId=None)
    del body["token"], body["link"]
    execution = decode_execution(body)
    assert execution.expires_at is None
    assert execution.record_id is None
    assert execution.token is None
    assert execution.link is None


def test_unknown_fields_are_ignored() -> None:
    """A field the client does not know (a newer API) does not break decoding."""
    execution = decode_execution(execution_body(riskScore=0.4, newSection={"a": 1}))
    assert execution.id == EXECUTION_ID


def test_unknown_status_decodes_non_terminal_with_its_text() -> None:
    """An unknown status decodes, is not terminal, and keeps its raw text."""
    execution = decode_execution(execution_body(status="ESCALATED"))
    assert execution.status.value == "ESCALATED"
    assert execution.status == "ESCALATED"
    assert not execution.status.is_known
    assert not execution.is_terminal


@pytest.mark.parametrize("status", list(WorkflowStatus))
def test_terminal_statuses(status: WorkflowStatus) -> None:
    """Exactly COMPLETED, FAILED, TIMEOUT, TERMINATED, EXPIRED and CANCELLED are terminal."""
    assert status.is_terminal == (status.value in TERMINAL)
    assert status.is_known


def test_unknown_origin_type_keeps_its_fields() -> None:
    """An origin type the spec does not list keeps its type and every other field."""
    body = execution_body(origin={"type": "SCHEDULE", "cron": "0 * * * *", "ownerId": 7})
    origin = decode_execution(body).origin
    assert origin.type == "SCHEDULE"
    assert origin.details == {"cron": "0 * * * *", "ownerId": 7}


def test_float_execution_version_and_offsets() -> None:
    """A fractional executionVersion and a non-UTC offset decode as sent."""
    execution = decode_execution(
        execution_body(executionVersion=1.5, expiresAt="2026-12-01T12:00:00+02:00")
    )
    assert execution.execution_version == 1.5
    assert execution.expires_at == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


def test_naive_timestamp_is_read_as_utc() -> None:
    """A timestamp without a zone is read as UTC, never as local time."""
    execution = decode_execution(execution_body(expiresAt="2026-12-01T10:00:00"))
    assert execution.expires_at == datetime(2026, 12, 1, 10, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "text",
    [
        "9f1e2d3c-4b5a-4678-9abc-def012345678",
        "9F1E2D3C-4B5A-4678-9ABC-DEF012345678",
        "9f1e2d3c4b5a46789abcdef012345678",
        "{9f1e2d3c-4b5a-4678-9abc-def012345678}",
        "urn:uuid:9f1e2d3c-4b5a-4678-9abc-def012345678",
    ],
)
def test_record_id_takes_the_canonical_compact_braced_and_urn_forms(text: str) -> None:
    """msgspec's fast canonical parse and the standard library's other forms agree."""
    record_id = decode_execution(execution_body(recordId=text)).record_id
    assert record_id == UUID("9f1e2d3c-4b5a-4678-9abc-def012345678")
    assert type(record_id) is UUID


@pytest.mark.parametrize(
    "changes",
    [{}, {"recordId": "{9f1e2d3c-4b5a-4678-9abc-def012345678}"}, {"recordId": None}],
)
def test_the_fast_path_decodes_a_valid_body_as_the_detailed_converter(
    changes: dict[str, object],
) -> None:
    """A valid body never needs the detailed fallback, and both give the same object."""
    body = execution_body(**changes)
    fast = _make_fast_structure_fn(WorkflowExecution, _converter)
    assert fast(body) == _converter.structure(body, WorkflowExecution)


def test_the_fast_path_refuses_a_model_it_cannot_build_by_position() -> None:
    """A keyword-only field is refused when the function is made, not slowed at every call."""

    @attrs.frozen
    class KeywordOnly:
        name: str
        size: int = attrs.field(kw_only=True)

    with pytest.raises(TypeError, match=r"KeywordOnly\.size"):
        _make_fast_structure_fn(KeywordOnly, _converter)


@pytest.mark.parametrize(
    ("changes", "removed", "expected"),
    [
        ({}, "status", "required field missing @ $.status"),
        ({}, "workspaceId", "required field missing @ $.workspaceId"),
        ({"status": 7}, None, "@ $.status"),
        ({"name": 123}, None, "expected str @ $.name"),
        ({"executionVersion": "3"}, None, "@ $.executionVersion"),
        ({"executionVersion": True}, None, "@ $.executionVersion"),
        ({"expiresAt": "next tuesday"}, None, "@ $.expiresAt"),
        ({"recordId": "not-a-uuid"}, None, "@ $.recordId"),
        ({"parameters": []}, None, "@ $.parameters"),
        ({"origin": {}}, None, "@ $.origin"),
        ({"origin": {"type": 1}}, None, "@ $.origin"),
        ({"status": ""}, None, "@ $.status"),
    ],
)
def test_bodies_that_do_not_fit_name_the_field(
    changes: dict[str, object], removed: str | None, expected: str
) -> None:
    """A body that does not fit raises DecodeError whose problems name the wire field."""
    body = execution_body(**changes)
    if removed:
        del body[removed]
    with pytest.raises(DecodeError) as caught:
        decode_execution(body)
    assert any(expected in problem for problem in caught.value.problems), caught.value.problems


def test_a_body_that_is_not_an_object() -> None:
    """A JSON array or string instead of an object is named as such."""
    with pytest.raises(DecodeError, match=r"expected a JSON object, got list @ \$"):
        decode_execution([])


def test_initialise_body_is_camel_case_without_unset_optionals() -> None:
    """The initialise body uses wire names and leaves unset optionals out."""
    request = InitialiseRequest(workflow_definition_id="d", locale="en", parameters={"a": 1})
    assert encode_initialise_request(request) == {
        "workflowDefinitionId": "d",
        "locale": "en",
        "parameters": {"a": 1},
    }


def test_initialise_body_formats_expiry_in_utc_and_the_record_id() -> None:
    """expiresAt goes out as ISO 8601 UTC with Z, recordId as the UUID text."""
    paris = timezone(timedelta(hours=1))
    record_id = UUID("9f1e2d3c-4b5a-4678-9abc-def012345678")
    request = InitialiseRequest(
        workflow_definition_id="d",
        locale="fr",
        parameters={},
        expires_at=datetime(2026, 12, 1, 11, 30, 0, 250000, tzinfo=paris),
        record_id=record_id,
    )
    body = encode_initialise_request(request)
    assert body["expiresAt"] == "2026-12-01T10:30:00.250Z"
    assert body["recordId"] == str(record_id)


def test_helpers() -> None:
    """camelCase renaming and the datetime format used on the wire."""
    assert to_camel_case("workflow_definition_id") == "workflowDefinitionId"
    assert to_camel_case("id") == "id"
    assert format_datetime(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02T03:04:05.000Z"


def test_models_are_frozen_and_hide_the_execution_token() -> None:
    """Models are immutable, and the execution's hosted-page token stays out of repr."""
    execution = decode_execution(execution_body(token="page-token-secret", link="https://x"))
    with pytest.raises(AttributeError):
        execution.status = WorkflowStatus.COMPLETED
    assert "page-token-secret" not in repr(execution)
    assert execution.is_interactive


def test_status_from_non_text_is_refused() -> None:
    """WorkflowStatus accepts text only: a number is a ValueError."""
    with pytest.raises(ValueError, match="not a valid WorkflowStatus"):
        WorkflowStatus(3)


@pytest.mark.parametrize("key", ["../../x", "", "not-a-uuid", EXECUTION_ID + "/result"])
def test_an_execution_id_that_is_no_uuid_does_not_decode(key: str) -> None:
    """The id goes into URL paths: anything but a UUID is a malformed answer."""
    with pytest.raises(DecodeError) as caught:
        decode_execution(execution_body(id=key))
    assert caught.value.problems == ["the execution id is not a UUID @ $.id"]
    assert decode_execution(execution_body(id=EXECUTION_ID.upper())).id == EXECUTION_ID.upper()
