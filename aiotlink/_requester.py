"""The request layer: what resources may do over HTTP, and nothing else.

::

    TransactionLinkClient (_client.py)     configuration, checks, lifecycle; composes
    ├── Requester (this module)            API calls: auth, the retry policy, bounds;
    │   │                                  storage GETs without credentials; streams
    │   ├── Sessions                       the aiohttp sessions, opened lazily, closed once
    │   └── send (_transport.py)           one HTTP attempt: the answer, or our error
    ├── Workflows (_workflows.py)          the endpoints, on a Requester only
    │   └── Downloader (_download.py)      results to disk, on the same Requester
    └── Webhooks (_webhooks.py)            verified events and receivers; keys fetched
                                           on the Requester, waits nudged through it

Resources (``Workflows``, ``Downloader``, ``Webhooks``) get a :class:`Requester` and
use only its public methods: one request path and one retry loop for all of them, so
that scrubbing, bounds and ``max_retries`` cannot be lost in a copy.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import aiohttp
import attrs
from yarl import URL

from . import _instrument
from ._budget import ByteBudget
from ._errors import (
    APIConnectionError,
    ClientClosedError,
    ResponseTooLargeError,
    TransactionLinkError,
)
from ._models import WorkflowStatus
from ._polling import Fetch, Poller
from ._redaction import mask_url, url_secrets
from ._retry import RetryPolicy, call_with_retries
from ._transport import (
    STORAGE_ROUTE,
    Request,
    Response,
    api_url,
    closed_session,
    connection_error,
    error_of_answer,
    log_attempt,
    seconds_of,
    send,
    unusable_session,
)

T = TypeVar("T")
# What a client's downloads may buffer at once, all of them together.
DEFAULT_DOWNLOAD_BUFFER_BYTES = 16 * 2**20

JSON_CONTENT_TYPE = "application/json;charset=UTF-8"


@attrs.frozen
class RequestOptions:
    """Per-attempt settings: what :meth:`~TransactionLinkClient.with_options` may change."""

    timeout: float | None
    retry_policy: RetryPolicy
    client_timeout: aiohttp.ClientTimeout = attrs.field(init=False)
    storage_timeout: aiohttp.ClientTimeout = attrs.field(init=False)

    @client_timeout.default
    def _client_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.timeout)

    @storage_timeout.default
    def _storage_timeout(self) -> aiohttp.ClientTimeout:
        # Per read, not in total: a large, healthy download may take longer than any
        # single attempt at an API call should.
        return aiohttp.ClientTimeout(total=None, sock_connect=self.timeout, sock_read=self.timeout)


class Sessions:
    """The aiohttp sessions of one client and of every view made by ``with_options``.

    The API session is the caller's (never closed here) or ours, opened lazily inside
    the running loop. Storage is fetched on a session that carries no default headers,
    auth or cookies: ours when we own the API session (we create it clean), else a
    second one of ours, because a caller's session may add credentials of its own.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession | None,
        connection_limit: int,
        download_buffer_bytes: int = DEFAULT_DOWNLOAD_BUFFER_BYTES,
    ) -> None:
        self._caller_session = session
        self.connection_limit = connection_limit
        # Every download of the client and its views shares this many buffered bytes.
        self.download_budget = ByteBudget(download_buffer_bytes)
        self._own_sessions: list[aiohttp.ClientSession] = []
        self._pollers: dict[RequestOptions, Poller] = {}
        self.closed = False

    def poller(self, options: RequestOptions, fetch: Fetch) -> Poller:
        """The poll loops for views with ``options``: waiters on one id share one loop.

        Views made with the same settings (``with_options(timeout=5)`` on every call)
        share a poller; at most ``connection_limit`` polls of each are in flight.
        """
        self._check_open()
        if options not in self._pollers:
            self._pollers[options] = Poller(fetch, max_in_flight=self.connection_limit)
        return self._pollers[options]

    def nudge(self, execution_id: str, status: WorkflowStatus | None) -> bool:
        """Nudge the polls of ``execution_id`` in every view's poller (Poller.nudge)."""
        woke = False
        # A copy: a nudge from another thread may run while the loop adds a poller.
        for poller in list(self._pollers.values()):
            woke = poller.nudge(execution_id, status) or woke
        return woke

    def _open(self) -> aiohttp.ClientSession:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connection_limit),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        self._own_sessions.append(session)
        return session

    def _check_open(self) -> None:
        if self.closed:
            raise ClientClosedError(
                "this TransactionLinkClient is closed; create a new one for more calls"
            )

    def cannot_send(self, *, storage: bool) -> bool:
        """Whether the session for API calls (or for storage) is closed; opens nothing."""
        if self.closed:
            return True
        caller = self._caller_session
        return caller is not None and not storage and caller.closed

    def api(self) -> aiohttp.ClientSession:
        """The session for API calls, opened on first use."""
        self._check_open()
        if self._caller_session is not None:
            return self._caller_session
        return self._own_sessions[0] if self._own_sessions else self._open()

    def storage(self) -> aiohttp.ClientSession:
        """A session safe to send to storage: no credentials, headers or cookies of ours."""
        if self._caller_session is None:
            return self.api()
        self._check_open()
        return self._own_sessions[0] if self._own_sessions else self._open()

    async def close(self) -> None:
        """Close our sessions, and end every wait at once with :class:`ClientClosedError`."""
        self.closed = True
        for poller in self._pollers.values():
            poller.close(ClientClosedError)
        sessions, self._own_sessions = self._own_sessions, []
        for session in sessions:
            await session.close()

    def __del__(self) -> None:
        if any(not session.closed for session in self._own_sessions):
            warnings.warn(
                "TransactionLinkClient was not closed: use `async with` or `await client.close()`",
                ResourceWarning,
                stacklevel=2,
            )


class Requester:
    """The request layer of one client (or view): API calls, storage GETs, streams.

    ``base_url`` is the API's; ``secrets`` what error bodies are scrubbed of (the token,
    as sent and bare); ``retry_policy`` the client's, for resources that run attempts
    of their own (a download's resumable reads) through ``_retry``.
    """

    def __init__(
        self,
        sessions: Sessions,
        options: RequestOptions,
        *,
        base_url: str,
        headers: Mapping[str, str],
        secrets: tuple[str, ...],
        max_response_bytes: int,
    ) -> None:
        self._sessions = sessions
        self._options = options
        self.base_url = base_url
        self.secrets = secrets
        self.max_response_bytes = max_response_bytes
        self._get_headers = dict(headers)
        self._post_headers = {**self._get_headers, "Content-Type": JSON_CONTENT_TYPE}

    def __repr__(self) -> str:
        return f"<Requester base_url={self.base_url!r}>"  # never the headers: the token

    @property
    def retry_policy(self) -> RetryPolicy:
        """The client's retry policy (``max_retries``, backoff)."""
        return self._options.retry_policy

    def download_budget(self) -> ByteBudget:
        """The bytes every download of the client (and of its views) may buffer at once."""
        return self._sessions.download_budget

    def poller(self, fetch: Fetch) -> Poller:
        """The shared poll loops of every view with these options (see Sessions.poller)."""
        return self._sessions.poller(self._options, fetch)

    def nudge(self, execution_id: str, status: WorkflowStatus | None) -> bool:
        """Look ``execution_id`` up now in every wait of the client and its views."""
        woke = self._sessions.nudge(execution_id, status)
        if (hook := _instrument.current) is not None:
            hook.nudged(execution_id, status, woke)
        return woke

    async def stream(
        self,
        url: str,
        *,
        storage: bool,
        headers: Mapping[str, str],
        route: str,
        attempt_number: int,
        read_bufsize: int,
        consume: Callable[[aiohttp.ClientResponse], Awaitable[T]],
    ) -> T:
        """One raw GET of ``url`` whose successful answer ``consume`` reads as a stream.

        To storage (``storage=True``): on a session with no credential of ours, only
        ``headers``, following redirects, and an error body scrubbed of the URL's
        signature. To the API: with auth and the default headers, never following a
        redirect. Reads time out per read, never in total; aiohttp holds up to twice
        ``read_bufsize`` of the body before it stops reading. An error status raises its
        :class:`APIError`; what aiohttp raises, inside ``consume`` too, becomes our
        error as :func:`send` makes it (a body cut short: an APIConnectionError). One
        attempt: retries are the caller's, through ``_retry``, as for every call.
        """
        if storage:
            session, sent = self._sessions.storage(), dict(headers)
            display_url = mask_url(url)
            # Storage never gets the token, but scrubbing it too costs nothing.
            secrets = url_secrets(url) + self.secrets
        else:
            session, sent = self._sessions.api(), {**self._get_headers, **headers}
            display_url, secrets = url, self.secrets
        if session.closed:
            raise closed_session()
        started = time.perf_counter()
        failure: TransactionLinkError
        try:
            async with session.get(
                URL(url, encoded=True),
                headers=sent,
                timeout=self._options.storage_timeout,
                allow_redirects=storage,
                raise_for_status=False,  # a caller's session may say True: statuses are ours
                read_bufsize=read_bufsize,
            ) as response:
                log_attempt("GET", route, display_url, attempt_number, started, response.status)
                if response.status >= 300:
                    raise await error_of_answer(
                        response,
                        method="GET",
                        display_url=display_url,
                        secrets=secrets,
                        from_api=not storage,
                    )
                return await consume(response)
        except aiohttp.ClientPayloadError as exc:
            failure = APIConnectionError(
                f"connection lost mid-body ({type(exc).__name__})",
                method="GET",
                url=display_url,
                request_sent=True,
            )
        except (aiohttp.ClientError, TimeoutError) as exc:  # aiohttp's read timeouts are both
            timeout = seconds_of(self._options.storage_timeout)
            failure = connection_error(exc, "GET", display_url, timeout=timeout)
        except RuntimeError as exc:  # the session was closed, or is of another loop
            closed = self._sessions.cannot_send(storage=storage)
            failure = unusable_session(exc, closed=closed, method="GET", display_url=display_url)
        log_attempt("GET", route, display_url, attempt_number, started, failure)
        # Raised out here: raised in a handler, the aiohttp error (whose request
        # information holds the headers) would ride along as __context__.
        raise failure

    async def call(
        self,
        method: str,
        path: str,
        *,
        route: str,
        body: Any = None,
        idempotent: bool = True,
        max_bytes: int | None = None,
        too_large: type[ResponseTooLargeError] = ResponseTooLargeError,
    ) -> Response:
        """One API call with auth and retries; ``path`` is already safe to put in a URL.

        ``route`` is the path's template, for logs. The answer is read up to
        ``max_bytes`` (the client's ``max_response_bytes`` by default), past which
        ``too_large`` is raised.
        """
        session = self._sessions.api()
        url_text = self.base_url + path
        options = self._options
        request = Request(
            method,
            api_url(url_text),
            url_text,
            route,
            self._get_headers if body is None else self._post_headers,
            None if body is None else _encode_body(body),
            options.client_timeout,
            self.max_response_bytes if max_bytes is None else max_bytes,
            too_large,
            self.secrets,
            False,  # allow_redirects: credentials must not follow a redirect
        )
        return await self._retrying(
            session, request, idempotent=idempotent, description=f"{method} {url_text}"
        )

    async def fetch_storage(
        self, url_text: str, *, max_bytes: int, too_large: type[ResponseTooLargeError]
    ) -> Response:
        """GET a pre-signed storage URL exactly as given, with no credential of ours."""
        session = self._sessions.storage()
        display_url = mask_url(url_text)
        options = self._options
        request = Request(
            "GET",
            URL(url_text, encoded=True),
            display_url,
            STORAGE_ROUTE,
            None,  # no header of ours: storage gets no credential
            None,
            options.storage_timeout,
            max_bytes,
            too_large,
            # Storage may echo its signature in an error; it never gets the token, but
            # scrubbing that too costs nothing.
            url_secrets(url_text) + self.secrets,
            True,  # allow_redirects: nothing secret is sent along
        )
        return await self._retrying(
            session, request, idempotent=True, description=f"GET {display_url}"
        )

    def _retrying(
        self,
        session: aiohttp.ClientSession,
        request: Request,
        *,
        idempotent: bool,
        description: str,
    ) -> Awaitable[Response]:
        """``request``'s attempts under the retry policy: the one path of every API call.

        Not a coroutine of its own: off, observability costs a global read per call,
        not a frame (_instrument).
        """
        hook = _instrument.current
        calling = call_with_retries(
            send if hook is None else hook.send,
            session,
            request,
            policy=self._options.retry_policy,
            idempotent=idempotent,
            description=description,
        )
        return calling if hook is None else hook.call(request, calling)


def _encode_body(body: Any) -> bytes:
    """The JSON of a request body (already checked by the endpoint)."""
    try:
        return json.dumps(body, separators=(",", ":")).encode()
    except RecursionError:
        problem = "the request body nests too deep to encode as JSON"
    raise ValueError(problem)
