"""What the fake's API answers look like on the wire: JSON bodies and error bodies."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import attrs

from aiotlink.testing._answers import Answer
from aiotlink.testing._executions import Execution

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"
"""Content type of successful API answers, as the reference gives it."""

ERROR_CONTENT_TYPE = "application/json"
"""Content type of ``ErrorResponse`` answers, as the reference gives it."""


def dump_json(value: object) -> bytes:
    """Serialise ``value`` to compact UTF-8 JSON.

    Raises ``TypeError`` or ``ValueError`` for what JSON cannot hold (NaN included).
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def format_instant(moment: datetime) -> str:
    """Format an aware datetime as ISO 8601 UTC with ``Z``, as Java's ``Instant`` prints it.

    Fractions of a second appear only when present: none, milliseconds, or microseconds.
    """
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond % 1000:
        text += f".{moment.microsecond:06d}"
    elif moment.microsecond:
        text += f".{moment.microsecond // 1000:03d}"
    return text + "Z"


@attrs.frozen
class ErrorDetail:
    """One item of an ``ErrorResponse``'s ``errors`` list."""

    code: str
    message: str


class ApiProblem(Exception):
    """An error answer a handler decided on: HTTP status and error details."""

    def __init__(self, status: int, *errors: ErrorDetail) -> None:
        """Keep ``status`` (an HTTP status code) and at least one error detail."""
        super().__init__(status, errors)
        self.status = status
        self.errors = errors

    @classmethod
    def of(cls, status: int, code: str, message: str) -> ApiProblem:
        """Build a problem with one error detail."""
        return cls(status, ErrorDetail(code, message))


def json_answer(value: object, status: int = 200) -> Answer:
    """Answer with ``value`` as the JSON body."""
    return Answer.of_bytes(status, {"Content-Type": JSON_CONTENT_TYPE}, dump_json(value))


def error_answer(
    status: int, errors: tuple[ErrorDetail, ...], headers: Mapping[str, str] | None = None
) -> Answer:
    """Answer with an ``ErrorResponse`` body carrying a fresh fingerprint."""
    body = {
        "fingerprint": str(uuid.uuid4()),
        "errors": [{"code": error.code, "message": error.message} for error in errors],
    }
    return Answer.of_bytes(
        status, {**(headers or {}), "Content-Type": ERROR_CONTENT_TYPE}, dump_json(body)
    )


def problem_answer(problem: ApiProblem) -> Answer:
    """Answer with the ``ErrorResponse`` of a handler's problem."""
    return error_answer(problem.status, problem.errors)


def status_code_name(status: int) -> str:
    """Name an HTTP status as an error code, e.g. 503 -> ``SERVICE_UNAVAILABLE``."""
    return HTTPStatus(status).name


def execution_body(execution: Execution, *, status: str, workspace_id: str) -> dict[str, Any]:
    """Return the wire form of an execution showing ``status``: every field of the reference.

    ``token`` and ``link`` are null for a background execution; ``createdAt`` is an
    extra field, as servers add fields that clients must ignore.
    """
    definition = execution.definition
    expires_at = execution.expires_at
    return {
        "id": execution.id,
        "workspaceId": workspace_id,
        "workflowDefinitionId": definition.definition_id,
        "parameters": execution.parameters,
        "name": definition.name,
        "revision": definition.revision,
        "status": status,
        "locale": execution.locale,
        "expiresAt": None if expires_at is None else format_instant(expires_at),
        "uiOptions": dict(definition.ui_options),
        "executionType": "INTERACTIVE" if definition.interactive else "BACKGROUND",
        "executionVersion": 1,
        "token": execution.token,
        "link": execution.link,
        "recordId": execution.record_id,
        "origin": execution.origin,
        "createdAt": format_instant(datetime.fromtimestamp(execution.created_at, UTC)),
    }
