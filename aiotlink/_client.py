"""The client: configuration, the HTTP session's lifecycle, and the request path.

Every API call goes through :meth:`TransactionLinkClient._request` (auth, headers,
retries); every storage download through :meth:`TransactionLinkClient._fetch_storage`
(no credentials at all). The endpoints live in ``_workflows.py``.
"""

from __future__ import annotations

import enum
import json
import os
import warnings
from collections.abc import Mapping
from importlib.metadata import version
from types import TracebackType
from typing import Any, Self

import aiohttp
import attrs
from yarl import URL

from ._arguments import check_count, check_seconds
from ._errors import ClientClosedError, ResponseTooLargeError
from ._polling import Fetch, Poller
from ._redaction import mask_url, url_secrets
from ._retry import RetryPolicy, call_with_retries
from ._transport import Request, Response, api_url, authorization_value, send
from ._workflows import Workflows

DEFAULT_BASE_URL = "https://api.transactionlink.io"
TOKEN_ENV_VAR = "TRANSACTIONLINK_TOKEN"
BASE_URL_ENV_VAR = "TRANSACTIONLINK_BASE_URL"
# API answers are a few kilobytes; a bound this far above them stops a broken or hostile
# server from filling memory, and results have their own (get_result's max_bytes).
DEFAULT_MAX_RESPONSE_BYTES = 4 * 2**20
USER_AGENT = f"aiotlink/{version('aiotlink')}"
JSON_CONTENT_TYPE = "application/json;charset=UTF-8"


class _Keep(enum.Enum):
    """Marks an option that :meth:`TransactionLinkClient.with_options` leaves as it is."""

    KEEP = enum.auto()


_KEEP = _Keep.KEEP


@attrs.frozen
class _RequestOptions:
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


class _Sessions:
    """The aiohttp sessions of one client and of every view made by ``with_options``.

    The API session is the caller's (never closed here) or ours, opened lazily inside
    the running loop. Storage is fetched on a session that carries no default headers,
    auth or cookies: ours when we own the API session (we create it clean), else a
    second one of ours, because a caller's session may add credentials of its own.
    """

    def __init__(self, session: aiohttp.ClientSession | None, connection_limit: int) -> None:
        self._caller_session = session
        self.connection_limit = connection_limit
        self._own_sessions: list[aiohttp.ClientSession] = []
        self._pollers: dict[_RequestOptions, Poller] = {}
        self.closed = False

    def poller(self, options: _RequestOptions, fetch: Fetch) -> Poller:
        """The poll loops for views with ``options``: waiters on one id share one loop.

        Views made with the same settings (``with_options(timeout=5)`` on every call)
        share a poller; at most ``connection_limit`` polls of each are in flight.
        """
        self._check_open()
        if options not in self._pollers:
            self._pollers[options] = Poller(fetch, max_in_flight=self.connection_limit)
        return self._pollers[options]

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


def _check_base_url(base_url: str | None) -> str:
    if base_url is None:
        base_url = os.environ.get(BASE_URL_ENV_VAR) or DEFAULT_BASE_URL
    if not isinstance(base_url, str):
        raise TypeError(f"base_url must be a str, got {type(base_url).__name__}")
    try:
        url = URL(base_url)
    except ValueError:
        raise ValueError(f"base_url is not a valid URL: {base_url!r}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"base_url must be an http(s) URL with a host, got {base_url!r}")
    if url.user is not None or url.password is not None:
        # It would show in every error and log line: the token is the credential.
        raise ValueError("base_url must not carry a user or password; pass the token instead")
    if url.query_string or url.fragment:
        raise ValueError(f"base_url must not have a query or fragment, got {base_url!r}")
    return str(url).rstrip("/")


def _check_token(token: str | None) -> str:
    if token is None:
        token = os.environ.get(TOKEN_ENV_VAR)
        if not token:
            raise ValueError(
                f"no API token: pass token= or set the {TOKEN_ENV_VAR} environment variable"
            )
    if not isinstance(token, str) or not token.strip():
        raise ValueError("token must be a non-empty string")
    credential = token.removeprefix("Bearer ")
    if not credential or not all("!" <= char <= "~" for char in credential):
        # Not echoed: the text of a ValueError ends up in logs. Visible ASCII only: an
        # HTTP header cannot carry anything else, and aiohttp would refuse it at every
        # call instead of here.
        raise ValueError(
            "token must be visible ASCII characters only: it has whitespace, control or "
            "non-ASCII characters"
        )
    return token


def _check_session(session: aiohttp.ClientSession | None) -> None:
    if session is None:
        return
    if not isinstance(session, aiohttp.ClientSession):
        raise TypeError(f"session must be an aiohttp.ClientSession, got {type(session).__name__}")
    if session.auth is not None:
        # aiohttp refuses a request that has both its auth= and an Authorization header.
        raise ValueError(
            "session has auth= set: the client sends its own Authorization header from "
            "the token; pass a session without auth="
        )


def _check_options(timeout: float | None, max_retries: int, retry_backoff: bool) -> None:
    check_seconds("timeout", timeout, allow_none=True)
    check_count("max_retries", max_retries, minimum=0)
    if not isinstance(retry_backoff, bool):
        raise TypeError(f"retry_backoff must be True or False, got {type(retry_backoff).__name__}")


def _check_default_headers(default_headers: Mapping[str, str] | None) -> dict[str, str]:
    if default_headers is not None and not isinstance(default_headers, Mapping):
        raise TypeError(
            f"default_headers must be a mapping of str to str, got {type(default_headers).__name__}"
        )
    headers = dict(default_headers or {})
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ValueError(f"default_headers must map str to str, got {name!r}")
        if name.strip().lower() == "authorization":
            raise ValueError("default_headers must not set Authorization: pass the token instead")
        if not name or not all("!" <= char <= "~" and char != ":" for char in name):
            raise ValueError(f"default_headers has a malformed header name: {name!r}")
        if not all(" " <= char <= "~" or char == "\t" for char in value):
            raise ValueError(f"default_headers[{name!r}] has control or non-ASCII characters")
    return headers


class TransactionLinkClient:
    """An asyncio client for TransactionLink's Workflows API (v3).

    ``token`` is an organization token (``tot_...``, sent as is) or a legacy JWT (sent as
    ``Bearer <jwt>``); ``None`` reads ``TRANSACTIONLINK_TOKEN``. ``session`` is an
    ``aiohttp.ClientSession`` you own and close; without one the client opens its own
    on first use and closes it in :meth:`close`. ``timeout`` is seconds per HTTP attempt
    (``None``: no limit); ``max_retries`` counts retries after the first attempt, for
    transient failures only; ``retry_backoff=False`` retries without sleeping (tests).
    ``base_url`` ``None`` reads ``TRANSACTIONLINK_BASE_URL``, else the production API.
    ``default_headers`` are added to every API call (e.g. an ``Accept`` that picks the
    API version), never to storage. ``connection_limit`` caps the connections of the
    client's own session. ``max_response_bytes`` bounds every API answer read (results
    have ``get_result``'s ``max_bytes``): past it a call raises
    :class:`ResponseTooLargeError` having read no more.

    One client is meant to be shared by all tasks of an event loop. Closing it ends
    every wait on it at once with :class:`ClientClosedError`.

    Raises:
        ValueError: no token, or a malformed argument (a ``session`` with ``auth=``).
        TypeError: an argument of the wrong type.
    """

    workflows: Workflows

    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float | None = 30.0,
        max_retries: int = 3,
        retry_backoff: bool = True,
        default_headers: Mapping[str, str] | None = None,
        connection_limit: int = 100,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        token = _check_token(token)
        _check_options(timeout, max_retries, retry_backoff)
        check_count("connection_limit", connection_limit, minimum=1)
        self.max_response_bytes = check_count("max_response_bytes", max_response_bytes, minimum=1)
        _check_session(session)
        headers = _check_default_headers(default_headers)
        self.base_url = _check_base_url(base_url)
        self._token = token
        # What error bodies are scrubbed of: a proxy may echo the Authorization header.
        self._secrets = (token, token.removeprefix("Bearer "))
        self._get_headers = {
            **headers,
            "User-Agent": USER_AGENT,
            "Authorization": authorization_value(token),
        }
        self._post_headers = {**self._get_headers, "Content-Type": JSON_CONTENT_TYPE}
        self._sessions = _Sessions(session, connection_limit)
        self._owns_lifecycle = True
        self._options = _RequestOptions(timeout, RetryPolicy(max_retries, retry_backoff))
        self.workflows = Workflows(self)

    def with_options(
        self,
        *,
        timeout: float | _Keep | None = _KEEP,
        max_retries: int | _Keep = _KEEP,
        retry_backoff: bool | _Keep = _KEEP,
    ) -> TransactionLinkClient:
        """A view of this client with other per-call settings, sharing its session.

        For one call (``await client.with_options(max_retries=0).workflows.find(id)``)
        or a part of a program. Closing a view does nothing: close the original client.
        """
        policy = self._options.retry_policy
        new_timeout = self._options.timeout if timeout is _KEEP else timeout
        new_policy = RetryPolicy(
            policy.max_retries if max_retries is _KEEP else max_retries,
            policy.backoff if retry_backoff is _KEEP else retry_backoff,
        )
        _check_options(new_timeout, new_policy.max_retries, new_policy.backoff)
        view = object.__new__(TransactionLinkClient)
        view.__dict__.update(self.__dict__)
        view._owns_lifecycle = False
        view._options = _RequestOptions(new_timeout, new_policy)
        view.workflows = Workflows(view)
        return view

    @property
    def timeout(self) -> float | None:
        """Seconds per HTTP attempt (``None``: no limit)."""
        return self._options.timeout

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt, for transient failures."""
        return self._options.retry_policy.max_retries

    async def close(self) -> None:
        """Close the sessions this client opened (never the caller's). Safe to repeat."""
        if self._owns_lifecycle:
            await self._sessions.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"<TransactionLinkClient base_url={self.base_url!r}>"

    def _api_headers(self) -> dict[str, str]:
        """The headers of a GET to the API: auth, User-Agent and the default headers."""
        return self._get_headers

    async def _request(
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
            self._secrets,
            False,  # allow_redirects: credentials must not follow a redirect
        )
        return await call_with_retries(
            send,
            session,
            request,
            policy=options.retry_policy,
            idempotent=idempotent,
            description=f"{method} {url_text}",
        )

    async def _fetch_storage(
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
            "storage",
            None,  # no header of ours: storage gets no credential
            None,
            options.storage_timeout,
            max_bytes,
            too_large,
            # Storage may echo its signature in an error; it never gets the token, but
            # scrubbing that too costs nothing.
            url_secrets(url_text) + self._secrets,
            True,  # allow_redirects: nothing secret is sent along
        )
        return await call_with_retries(
            send,
            session,
            request,
            policy=options.retry_policy,
            idempotent=True,
            description=f"GET {display_url}",
        )


def _encode_body(body: Any) -> bytes:
    """The JSON of a request body (already checked by the endpoint)."""
    try:
        return json.dumps(body, separators=(",", ":")).encode()
    except RecursionError:
        problem = "the request body nests too deep to encode as JSON"
    raise ValueError(problem)
