"""One HTTP attempt: the auth header, reading the answer, and mapping it to an error.

The decisions are pure functions over ``(status, headers, body)``; the aiohttp code
around them stays thin so that retries, results and polling can reuse one attempt.
"""

from __future__ import annotations

import json
import logging
import re
import time
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
    ClientClosedError,
    ErrorCode,
    ErrorDetail,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseTooLargeError,
    ResultNotReadyError,
    ServerError,
    TransactionLinkError,
)
from ._redaction import scrub
from ._retry import parse_retry_after

logger = logging.getLogger("aiotlink")

SNIPPET_CHARS = 200
# The route that log lines and errors give requests to pre-signed storage.
STORAGE_ROUTE = "storage"
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
    from_api: bool = True,
) -> APIError:
    """The error for an HTTP error answer; the one place statuses map to error classes.

    Unreadable bodies (an HTML 502 from a proxy, an empty 503) still map by status and
    keep a short snippet of the body for the message. A 404 of the API (``from_api``;
    storage is not the API) is an unknown route when it is not the API's error
    document, or names an unknown path (``ErrorCode.NOT_FOUND``); a 404 with
    ``WORKFLOW_RESULT_NOT_FOUND`` is a :class:`ResultNotReadyError`.
    """
    document = _error_document(body)
    fingerprint, errors = document if document is not None else (None, [])
    if status in _ERRORS_BY_STATUS:
        cls = _ERRORS_BY_STATUS[status]
    elif status >= 500:
        cls = ServerError
    else:
        cls = APIError
    codes = {error.code for error in errors}
    if status == 404 and ErrorCode.WORKFLOW_RESULT_NOT_FOUND in codes:
        cls = ResultNotReadyError
    error = cls(
        status,
        method=method,
        url=url,
        fingerprint=fingerprint,
        errors=errors,
        body_snippet=None if document is not None else _snippet(body),
        retry_after=parse_retry_after(headers.get("Retry-After"), now=now or datetime.now(UTC)),
    )
    if isinstance(error, NotFoundError) and from_api:
        error.unknown_route = document is None or ErrorCode.NOT_FOUND in codes
    return error


_JSON_DECODER = msgspec.json.Decoder()


def parse_json(body: bytes) -> Any:
    """The JSON value of ``body``; ``ValueError`` when it is not JSON.

    msgspec parses about four times faster than the standard library and, unlike
    orjson, keeps integers beyond 64 bits exact. What it refuses goes to the standard
    library, which either takes it (``NaN``) or says what is wrong. Nesting too deep
    for either (a 2 KB body of 1,000 brackets) is a ``ValueError`` too.
    """
    try:
        return _JSON_DECODER.decode(body)
    except msgspec.DecodeError:
        problem = None
    except RecursionError:
        problem = "the JSON nests too deep to decode"
    if problem is None:
        try:
            return json.loads(body)
        except RecursionError:
            problem = "the JSON nests too deep to decode"
        except UnicodeDecodeError as error:  # its .object holds the body
            problem = f"the body is not UTF-8 ({error.reason})"
        except json.JSONDecodeError as error:  # its .doc holds the body
            problem = f"not JSON: {error.msg} at byte {error.pos}"
    # Raised out here: raised in a handler, the decoder's error (and the body it
    # holds, which may echo a secret) would ride along as __context__.
    raise ValueError(problem)


def decode_json(response: Response) -> Any:
    """The JSON value of a successful answer's body; ``ValueError`` when it is not JSON."""
    return parse_json(response.body)


class Request(NamedTuple):
    """One request as every attempt at it sends it.

    ``display_url`` is the URL as it may appear in errors and logs (signatures masked),
    ``route`` its template for logs (``/workflows/{id}``). The body is read up to
    ``max_bytes``; past that ``too_large`` is raised. ``secrets`` are scrubbed from
    error bodies, in every spelling (_redaction.scrub).
    """

    method: str
    url: URL
    display_url: str
    route: str
    headers: Mapping[str, str] | None
    data: bytes | None
    timeout: aiohttp.ClientTimeout
    max_bytes: int
    too_large: type[ResponseTooLargeError]
    secrets: tuple[str, ...]
    allow_redirects: bool

    def __repr__(self) -> str:
        # The headers hold the token: never in a repr, or a traceback's locals.
        return f"Request({self.method} {self.display_url})"

    @property
    def described(self) -> tuple[str, str, str]:
        """Method, route and display URL: what a log line names."""
        return self.method, self.route, self.display_url


async def _read_body(response: aiohttp.ClientResponse, request: Request) -> bytes:
    """The body, read no further than ``request.max_bytes``.

    With a ``Content-Length`` the parser itself stops there, so the whole read is
    bounded by the check before it; without one (chunked, or until the connection
    closes) the body is read piece by piece, and a body that goes on past the bound is
    left unread.
    """
    max_bytes = request.max_bytes
    length = response.content_length
    if length is not None and response.headers.get("Content-Encoding", "identity") == "identity":
        if length > max_bytes:
            raise request.too_large(max_bytes=max_bytes, size=length, url=request.display_url)
        return await response.read()
    body = bytearray()
    async for chunk in response.content.iter_any():
        body += chunk
        if len(body) > max_bytes:
            raise request.too_large(max_bytes=max_bytes, size=None, url=request.display_url)
    return bytes(body)


async def read_up_to(response: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body until ``limit`` bytes or its end, whichever comes first.

    Not one ``read(limit)``: that returns what has arrived so far, which may end in
    the middle of an echoed secret, past the reach of scrubbing.
    """
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await response.content.read(limit - size)
        if not chunk:  # the end, however the server signalled it
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def error_of_answer(
    response: aiohttp.ClientResponse,
    *,
    method: str,
    display_url: str,
    secrets: tuple[str, ...],
    from_api: bool = True,
) -> APIError:
    """The error for an error answer: its body read up to ERROR_BODY_LIMIT, secrets scrubbed.

    The one way every request path (calls, storage, downloads) reads an error answer;
    ``from_api`` is False for storage.
    """
    body = await read_up_to(response, ERROR_BODY_LIMIT)
    body = scrub(body, secrets, cut=len(body) == ERROR_BODY_LIMIT)
    return error_for_response(
        response.status,
        response.headers,
        body,
        method=method,
        url=display_url,
        from_api=from_api,
    )


async def send(session: aiohttp.ClientSession, request: Request, attempt_number: int) -> Response:
    """Make one HTTP attempt and return the whole successful answer.

    An error status raises the matching :class:`APIError`; no answer raises
    :class:`APIConnectionError` (or :class:`APITimeoutError`) with ``request_sent``
    telling whether the server may have seen the request. No aiohttp exception is
    chained to the error raised: their request information carries the headers.
    """
    if session.closed:  # closed meanwhile: a retry after the client's close
        raise closed_session()
    # Asked once: the clock and the log line cost a call only when someone listens.
    debug = logger.isEnabledFor(logging.DEBUG)
    started = time.perf_counter() if debug else 0.0
    failure: TransactionLinkError
    try:
        async with session.request(
            request.method,
            request.url,
            headers=request.headers,
            data=request.data,
            timeout=request.timeout,
            allow_redirects=request.allow_redirects,
            raise_for_status=False,  # a caller's session may say True: statuses are ours
        ) as response:
            if response.status >= 300:
                error = await error_of_answer(
                    response,
                    method=request.method,
                    display_url=request.display_url,
                    secrets=request.secrets,
                    from_api=request.route != STORAGE_ROUTE,
                )
                if debug:
                    log_attempt(*request.described, attempt_number, started, response.status)
                raise error  # in no handler: nothing rides along
            answer = Response(
                response.status, response.headers, await _read_body(response, request)
            )
            if debug:
                log_attempt(*request.described, attempt_number, started, response.status)
            return answer
    except (aiohttp.ClientError, TimeoutError) as exc:  # aiohttp's read timeouts are both
        failure = connection_error(
            exc, request.method, request.display_url, timeout=seconds_of(request.timeout)
        )
    except RuntimeError as exc:
        failure = unusable_session(
            exc, closed=session.closed, method=request.method, display_url=request.display_url
        )
    if debug:
        log_attempt(*request.described, attempt_number, started, failure)
    # Raised here, outside the handlers: raised inside one, the aiohttp exception would
    # ride along as __context__.
    raise failure


def log_attempt(
    method: str,
    route: str,
    display_url: str,
    attempt_number: int,
    started: float,
    outcome: int | BaseException,
) -> None:
    """The DEBUG line of one HTTP attempt: its status, or the error type of no answer.

    ``started`` is the attempt's start by ``time.perf_counter()``; ``display_url`` has
    its signatures masked.
    """
    if logger.isEnabledFor(logging.DEBUG):
        logger.debug(
            "%s %s -> %s in %.1f ms (attempt %d, %s)",
            method,
            route,
            outcome if isinstance(outcome, int) else type(outcome).__name__,
            (time.perf_counter() - started) * 1000,
            attempt_number,
            display_url,
        )


def closed_session() -> ClientClosedError:
    """The error for a session closed before a request: the client's, or the caller's."""
    return ClientClosedError("the HTTP session is closed (the client, or the session passed in)")


def unusable_session(
    exc: RuntimeError, *, closed: bool, method: str, display_url: str
) -> TransactionLinkError:
    """The error for aiohttp refusing to send at all: a session closed, or of another loop.

    Only aiohttp's own words about its state; never the request.
    """
    if closed:
        return closed_session()
    return APIConnectionError(
        f"the HTTP session cannot send ({exc}); was it made in another event loop?",
        method=method,
        url=display_url,
        request_sent=False,
    )


def seconds_of(timeout: aiohttp.ClientTimeout) -> float | None:
    """The limit a timeout of ``timeout`` ran out on: the total, else the per-read one."""
    return timeout.total if timeout.total is not None else timeout.sock_read


def connection_error(
    exc: BaseException, method: str, display_url: str, *, timeout: float | None = None
) -> APIConnectionError:
    """The error for an aiohttp failure that left no answer (a timeout or a lost link).

    ``request_sent`` is False only where the server provably never saw the request:
    the connection could not be made. ``timeout`` is the limit that applied, named in a
    timeout's message. Call it outside the ``except`` block that caught ``exc``, or
    raise its result from there, never inside it (see :func:`send`).
    """
    request_sent = not isinstance(
        exc, aiohttp.ConnectionTimeoutError | aiohttp.ClientConnectorError
    )
    if isinstance(exc, TimeoutError):
        stage = "connecting" if not request_sent else "waiting for the answer"
        return APITimeoutError(
            f"timed out {stage}",
            method=method,
            url=display_url,
            request_sent=request_sent,
            timeout=timeout,
        )
    if type(exc) is aiohttp.ClientResponseError:
        # aiohttp's parser refused the answer itself (its own subclasses are other
        # things: too many redirects, a proxy's refusal). Not its text: that may quote
        # what a hostile server sent, which may be anything.
        message = (
            "malformed answer: its status line or headers are not valid HTTP, or past "
            "aiohttp's limits (8 KB a header line)"
        )
    elif request_sent:
        # Only the type: the text of a response error names the request, headers aside.
        message = f"connection lost ({type(exc).__name__})"
    else:
        # Names host and port and the OS error; never the path or query.
        message = f"could not connect: {exc}"
    return APIConnectionError(message, method=method, url=display_url, request_sent=request_sent)
