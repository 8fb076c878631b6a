"""The four Workflows endpoints: arguments checked before any request, answers decoded."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any
from uuid import UUID

from ._converter import DecodeError, decode_execution, encode_initialise_request
from ._errors import APIConnectionError, ResponseValidationError, ServerError
from ._models import InitialiseRequest, WorkflowExecution
from ._redaction import mask_url
from ._results import redirect_target
from ._transport import Response, decode_json

if TYPE_CHECKING:
    from ._client import TransactionLinkClient

# The provider's bounds for expiresAt (spec/README.md).
MIN_EXPIRY = timedelta(minutes=30)
MAX_EXPIRY = timedelta(days=30)
DEFAULT_MAX_RESULT_BYTES = 100 * 2**20
# Ids go into the URL path as they are: only RFC 3986 unreserved characters, so an id
# can never change the path (no "/", "..", "?" or "%").
_PATH_ID_PATTERN = re.compile(r"[A-Za-z0-9._~-]+")


def check_text(name: str, value: object) -> str:
    """``value`` as a non-empty string, else ``ValueError`` naming the argument."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def check_execution_id(value: object) -> str:
    """An execution id safe to put in a URL path (``str`` or ``UUID``)."""
    if isinstance(value, UUID):
        return str(value)
    text = check_text("execution_id", value)
    if not _PATH_ID_PATTERN.fullmatch(text) or text in (".", ".."):
        raise ValueError(f"execution_id has characters an id cannot have: {text!r}")
    return text


def check_uuid(name: str, value: object) -> UUID:
    """``value`` (a ``UUID`` or its text) as a ``UUID``, else ``ValueError`` naming it."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be a UUID, got {value!r}")


def check_parameters(parameters: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The workflow parameters as a JSON object (``None`` is ``{}``)."""
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise ValueError(f"parameters must be a mapping, got {type(parameters).__name__}")
    try:
        json.dumps(parameters, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"parameters must be JSON-serialisable: {exc}") from None
    return parameters


def check_expires_at(expires_at: datetime | timedelta | None, *, now: datetime) -> datetime | None:
    """The expiry as an aware datetime, checked to lie 30 minutes to 30 days after ``now``."""
    if expires_at is None:
        return None
    if isinstance(expires_at, timedelta):
        when = now + expires_at
    elif isinstance(expires_at, datetime):
        if expires_at.tzinfo is None or expires_at.utcoffset() is None:
            raise ValueError("expires_at must be timezone-aware (e.g. datetime.now(UTC) + ...)")
        when = expires_at
    else:
        raise ValueError(
            f"expires_at must be a datetime or a timedelta, got {type(expires_at).__name__}"
        )
    if not MIN_EXPIRY <= when - now <= MAX_EXPIRY:
        raise ValueError(
            "expires_at must lie between 30 minutes and 30 days from now, "
            f"got {when.isoformat()} ({when - now} from now)"
        )
    return when


def check_max_bytes(max_bytes: object) -> int:
    """A positive byte count, else ``ValueError``."""
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1:
        raise ValueError(f"max_bytes must be a positive whole number, got {max_bytes!r}")
    return max_bytes


class Workflows:
    """The Workflows endpoints, as ``client.workflows``."""

    def __init__(self, client: TransactionLinkClient) -> None:
        self._client = client

    async def initialise(
        self,
        workflow_definition_id: str,
        *,
        locale: str = "en",
        parameters: Mapping[str, Any] | None = None,
        expires_at: datetime | timedelta | None = None,
        record_id: UUID | str | None = None,
    ) -> WorkflowExecution:
        """Start an execution of a workflow definition (``POST /workflows``).

        ``expires_at`` is an aware ``datetime`` or a ``timedelta`` from now, between 30
        minutes and 30 days ahead. Not idempotent: retried only where the server
        provably did not see the request (no connection, or 429). After a 5xx, a
        timeout or a connection lost mid-request the error's ``may_have_been_created``
        is True and its text says so.

        Raises:
            ValueError: a malformed argument (before any request).
            APIError, APIConnectionError, ResponseValidationError.
        """
        request = InitialiseRequest(
            workflow_definition_id=check_text("workflow_definition_id", workflow_definition_id),
            locale=check_text("locale", locale),
            parameters=check_parameters(parameters),
            expires_at=check_expires_at(expires_at, now=datetime.now(UTC)),
            record_id=None if record_id is None else check_uuid("record_id", record_id),
        )
        try:
            response = await self._client._request(
                "POST", "/workflows", body=encode_initialise_request(request), idempotent=False
            )
        except ServerError as exc:
            exc.may_have_been_created = True
            raise
        except APIConnectionError as exc:
            exc.may_have_been_created = exc.request_sent
            raise
        return self._execution(response, "POST", "/workflows")

    async def find(self, execution_id: str | UUID) -> WorkflowExecution:
        """The execution as it is now (``GET /workflows/{id}``).

        Raises:
            ValueError: a malformed id. NotFoundError: no such execution.
        """
        path = f"/workflows/{check_execution_id(execution_id)}"
        response = await self._client._request("GET", path)
        return self._execution(response, "GET", path)

    async def cancel(self, execution_id: str | UUID) -> None:
        """Cancel an execution that has not ended (``POST /workflows/{id}/cancel``).

        Raises:
            ValueError: a malformed id. NotFoundError: no such execution.
        """
        await self._client._request("POST", f"/workflows/{check_execution_id(execution_id)}/cancel")

    async def get_result(
        self, execution_id: str | UUID, *, max_bytes: int = DEFAULT_MAX_RESULT_BYTES
    ) -> Any:
        """The decoded JSON result of a completed execution, held in memory.

        A ``$redirect`` to storage is followed with a plain GET that carries no
        credential. ``max_bytes`` (default 100 MiB) bounds the body read.

        Raises:
            ValueError: ``execution_id`` is not a UUID. NotFoundError: no such execution,
            or no result yet. ResultTooLargeError: over ``max_bytes``.
        """
        path = f"/workflows/{check_uuid('execution_id', execution_id)}/result"
        max_bytes = check_max_bytes(max_bytes)
        response = await self._client._request("GET", path, max_bytes=max_bytes)
        payload = self._json(response, "GET", self._client.base_url + path)
        try:
            target = redirect_target(payload, api_base_url=self._client.base_url)
        except ValueError as exc:
            raise ResponseValidationError(
                str(exc), method="GET", url=self._client.base_url + path
            ) from None
        if target is None:
            return payload
        stored = await self._client._fetch_storage(target, max_bytes=max_bytes)
        return self._json(stored, "GET", mask_url(target))

    def _json(self, response: Response, method: str, url: str) -> Any:
        try:
            return decode_json(response)
        except ValueError:
            raise ResponseValidationError(
                "the answer is not valid JSON", method=method, url=url
            ) from None

    def _execution(self, response: Response, method: str, path: str) -> WorkflowExecution:
        url = self._client.base_url + path
        try:
            return decode_execution(self._json(response, method, url))
        except DecodeError as exc:
            raise ResponseValidationError(
                "the answer does not fit WorkflowExecution",
                problems=exc.problems,
                method=method,
                url=url,
            ) from None
