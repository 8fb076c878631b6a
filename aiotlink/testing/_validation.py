"""Validation of the initialise request body (``InitialiseWorkflowRequest``).

Pure functions: bytes and the current time in, a parsed request or an ``ApiProblem``
(400) out.
"""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from typing import Any

import attrs

from aiotlink.testing._wire import ApiProblem, ErrorDetail

EXPIRY_MIN = timedelta(minutes=30)
"""The earliest ``expiresAt`` the API accepts, counted from now."""

EXPIRY_MAX = timedelta(days=30)
"""The latest ``expiresAt`` the API accepts, counted from now."""

EXPIRY_GRACE = timedelta(seconds=5)
"""Slack on the lower bound: a client that sends exactly ``now + 30 min`` is accepted
although a little time passes before the request arrives."""

_CANONICAL_UUID = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE
)


def canonical_uuid(text: str) -> str | None:
    """Return ``text`` lower-cased if it is a UUID in 8-4-4-4-12 form, else ``None``."""
    return text.lower() if _CANONICAL_UUID.fullmatch(text) else None


@attrs.frozen
class InitialiseRequest:
    """A valid initialise request, in the fake's terms."""

    workflow_definition_id: str
    locale: str
    parameters: dict[str, Any]
    expires_at: datetime | None
    record_id: str | None


def _invalid(field: str, message: str) -> ErrorDetail:
    return ErrorDetail("VALIDATION_ERROR", f"{field}: {message}")


def _required_text(body: dict[str, Any], field: str) -> tuple[str, ErrorDetail | None]:
    value = body.get(field)
    if value is None:
        return "", _invalid(field, "must not be null")
    if not isinstance(value, str) or not value.strip():
        return "", _invalid(field, "must be a non-empty string")
    return value, None


def parse_expires_at(value: object, now: datetime) -> tuple[datetime | None, ErrorDetail | None]:
    """Parse ``expiresAt``: null, or an ISO 8601 date-time with an offset within bounds.

    ``now`` is an aware datetime. The value must lie between ``now + 30 min`` (minus
    ``EXPIRY_GRACE``) and ``now + 30 days``; a date-time without an offset is refused,
    since the server cannot guess its zone.
    """
    if value is None:
        return None, None
    if not isinstance(value, str):
        return None, _invalid("expiresAt", "must be an ISO 8601 date-time string")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None, _invalid("expiresAt", f"is not an ISO 8601 date-time: {value!r}")
    if moment.tzinfo is None:
        return None, _invalid("expiresAt", "needs a UTC offset or Z")
    if not now + EXPIRY_MIN - EXPIRY_GRACE <= moment <= now + EXPIRY_MAX:
        return None, _invalid("expiresAt", "must be between 30 minutes and 30 days from now")
    return moment, None


def parse_record_id(value: object) -> tuple[str | None, ErrorDetail | None]:
    """Parse ``recordId``: null, or a UUID string (answered in lower case)."""
    if value is None:
        return None, None
    record_id = canonical_uuid(value) if isinstance(value, str) else None
    if record_id is None:
        return None, _invalid("recordId", "must be a UUID")
    return record_id, None


def parse_initialise_body(body: bytes, now: datetime) -> InitialiseRequest:
    """Parse and validate an initialise body; raise ``ApiProblem`` (400) listing every fault.

    ``now`` is an aware datetime. ``parameters`` is required (the reference marks it
    so) and must be a JSON object; unknown fields are ignored.
    """
    try:
        document = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        raise ApiProblem.of(400, "INVALID_REQUEST_BODY", "the body is not valid JSON") from None
    if not isinstance(document, dict):
        raise ApiProblem.of(400, "INVALID_REQUEST_BODY", "the body must be a JSON object")
    definition_id, definition_error = _required_text(document, "workflowDefinitionId")
    locale, locale_error = _required_text(document, "locale")
    raw_parameters = document.get("parameters")
    parameters: dict[str, Any] = raw_parameters if isinstance(raw_parameters, dict) else {}
    parameters_error = (
        None
        if isinstance(raw_parameters, dict)
        else _invalid("parameters", "must be a JSON object")
    )
    expires_at, expires_error = parse_expires_at(document.get("expiresAt"), now)
    record_id, record_error = parse_record_id(document.get("recordId"))
    errors = [
        error
        for error in (definition_error, locale_error, parameters_error, expires_error, record_error)
        if error is not None
    ]
    if errors:
        raise ApiProblem(400, *errors)
    return InitialiseRequest(definition_id, locale, parameters, expires_at, record_id)
