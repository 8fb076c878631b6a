"""One HTTP attempt: the auth header, reading the answer, and mapping it to an error.

The decisions are pure functions over ``(status, headers, body)``; the aiohttp code
around them stays thin so that retries, results and polling can reuse one attempt.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, NamedTuple

import aiohttp
import msgspec
from yarl import URL

from ._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ErrorDetail,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResultTooLargeError,
    ServerError,
)
from ._redaction import MASK
from ._retry import parse_retry_after

SNIPPET_CHARS = 200
# An error body is read only this far: enough for any error document, and a proxy's
# multi-megabyte page cannot hold the connection.
ERROR_BODY_LIMIT = 64 * 1024

_ERRORS_BY_STATUS: dict[int, type[APIError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    429: RateLimitError,
}
_S3_ERROR_PATTERN = re.compile(
    r"<Code>(?P<code>[^<]*)</Code>\s*<Message>(?P<message>[^<]*)</Message>", re.DOTALL
)


def authorization_value(token: str) -> str:
    """The ``Authorization`` header for a token.

    Organization tokens (``tot_``) go raw; anything else is a legacy JWT sent as
    ``Bearer <jwt>``, unless it already starts with ``Bearer ``.
    """
    if token.startswith(("tot_", "Bearer ")):
        return token
    return f"Bearer {token}"


class Response(NamedTuple):
    """A complete HTTP answer: status, headers and the body bytes (a tuple: one per call)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def __repr__(self) -> str:
        return f"Response(status={self.status}, {len(self.body)} bytes)"


def api_url(text: str) -> URL:
    """``text`` as a URL sent exactly as written.

    Not remembered: thousands of executions polled in turn never hit a bounded cache,
    which then only churns long-lived objects for the cyclic collector to walk, and a
    URL costs about 2 µs to build (benchmarks/NOTES.md).
    """
    return URL(text, encoded=True)


def _snippet(body: bytes) -> str | None:
    text = " ".join(body.decode("utf-8", errors="replace").split())
    if not text:
        return None
    return text if len(text) <= SNIPPET_CHARS else text[: SNIPPET_CHARS - 1] + "…"


def _error_document(body: bytes) -> tuple[str | None, list[ErrorDetail]] | None:
    """The fingerprint and errors of an ``ErrorResponse`` body (or S3's XML), if it is one."""
    try:
        document = parse_json(body)
    except ValueError:
        match = _S3_ERROR_PATTERN.search(body.decode("utf-8", errors="replace"))
        if match is None:
            return None
        return None, [ErrorDetail(code=match["code"], message=match["message"])]
    if not isinstance(document, dict):
        return None
    fingerprint = document.get("fingerprint")
    entries = document.get("errors")
    errors = [
        ErrorDetail(code=str(entry.get("code", "")), message=str(entry.get("message", "")))
        for entry in (entries if isinstance(entries, list) else [])
        if isinstance(entry, dict)
    ]
    if not errors and not isinstance(fingerprint, str):
        return None
    return (fingerprint if isinstance(fingerprint, str) else None), errors


def error_for_response(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    method: str,
    url: str,
    now: datetime | None = None,
) -> APIError:
    """The error for an HTTP error answer; the one place statuses map to error classes.

    Unreadable bodies (an HTML 502 from a proxy, an empty 503) still map by status and
    keep a short snippet of the body for the message.
    """
    if status in _ERRORS_BY_STATUS:
        cls = _ERRORS_BY_STATUS[status]
    elif status >= 500:
        cls = ServerError
    else:
        cls = APIError
    document = _error_document(body)
    fingerprint, errors = document if document is not None else (None, [])
    return cls(
        status,
        method=method,
        url=url,
        fingerprint=fingerprint,
        errors=errors,
        body_snippet=None if document is not None else _snippet(body),
        retry_after=parse_retry_after(headers.get("Retry-After"), now=now or datetime.now(UTC)),
    )


_JSON_DECODER = msgspec.json.Decoder()


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``; ``ValueError`` when it is not JSON.

    msgspec parses about four times faster than the standard library and, unlike
    orjson, keeps integers beyond 64 bits exact. What it refuses goes to the standard
    library, which either takes it (``NaN``) or says what is wrong.
    """
    try:
        return _JSON_DECODER.decode(body)
    except msgspec.DecodeError:
        return json.loads(body)


def decode_json(response: Response) -> Any:
    """The JSON value of a successful answer's body; ``ValueError`` when it is not JSON."""
    return parse_json(response.body)


async def _read_body(response: aiohttp.ClientResponse, max_bytes: int | None, url: str) -> bytes:
    if max_bytes is None:
        return await response.read()
    if response.content_length is not None and response.content_length > max_bytes:
        raise ResultTooLargeError(max_bytes=max_bytes, size=response.content_length, url=url)
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > max_bytes:
            raise ResultTooLargeError(max_bytes=max_bytes, size=None, url=url)
    return bytes(body)


def _scrub(body: bytes, secret: str | None) -> bytes:
    # A misbehaving proxy may echo request headers into its error page.
    if secret and secret.encode() in body:
        return body.replace(secret.encode(), MASK.encode())
    return body


async def send(
    session: aiohttp.ClientSession,
    method: str,
    url: URL,
    display_url: str,
    headers: Mapping[str, str] | None,
    data: bytes | None,
    client_timeout: aiohttp.ClientTimeout,
    max_bytes: int | None,
    secret: str | None,
    allow_redirects: bool,
) -> Response:
    """Make one HTTP attempt and return the whole successful answer.

    ``display_url`` is the URL as it may appear in errors (signatures masked). An error
    status raises the matching :class:`APIError`; no answer raises
    :class:`APIConnectionError` (or :class:`APITimeoutError`) with ``request_sent``
    telling whether the server may have seen the request. ``secret`` is scrubbed from
    error bodies.
    """
    try:
        async with session.request(
            method,
            url,
            headers=headers,
            data=data,
            timeout=client_timeout,
            allow_redirects=allow_redirects,
        ) as response:
            if response.status >= 300:
                body = _scrub(await response.content.read(ERROR_BODY_LIMIT), secret)
                raise error_for_response(
                    response.status, response.headers, body, method=method, url=display_url
                )
            body = await _read_body(response, max_bytes, display_url)
            return Response(response.status, response.headers, body)
    except (aiohttp.ConnectionTimeoutError, aiohttp.ClientConnectorError) as exc:
        raise connection_error(exc, method, display_url, request_sent=False) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise connection_error(exc, method, display_url, request_sent=True) from None


def connection_error(
    exc: BaseException, method: str, display_url: str, *, request_sent: bool
) -> APIConnectionError:
    """The error for an aiohttp failure that left no answer (a timeout or a lost link)."""
    # The aiohttp exception is not chained: its text can carry the full URL with the
    # signature of a pre-signed link.
    if isinstance(exc, TimeoutError):
        stage = "connecting" if not request_sent else "waiting for the answer"
        return APITimeoutError(
            f"timed out {stage}", method=method, url=display_url, request_sent=request_sent
        )
    if request_sent:
        message = f"connection lost ({type(exc).__name__})"
    else:
        # Names host and port and the OS error; never the path or query.
        message = f"could not connect: {exc}"
    return APIConnectionError(message, method=method, url=display_url, request_sent=request_sent)
