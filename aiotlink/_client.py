"""The client: configuration, its checks, and the lifecycle of its sessions.

It composes the request layer (``_requester.py``: API calls with auth and retries,
storage GETs without credentials) and the resources on it (``client.workflows``,
``_workflows.py``); the layers are drawn in ``_requester.py``'s docstring.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Mapping
from importlib.metadata import version
from types import TracebackType
from typing import Self

import aiohttp
from yarl import URL

from ._arguments import (
    BASE_URL_ENV_VAR,
    DEFAULT_BASE_URL,
    TOKEN_ENV_VAR,
    check_count,
    check_seconds,
)
from ._requester import DEFAULT_DOWNLOAD_BUFFER_BYTES, Requester, RequestOptions, Sessions
from ._retry import RetryPolicy
from ._transport import authorization_value
from ._webhooks import WebhookKeys, Webhooks
from ._workflows import Workflows

# Whether a client made without retry_backoff= sleeps between retries. The pytest
# plugin's transactionlink_defaults fixture turns it off for the clients an app makes
# itself (in its lifespan) during a test; nothing else should change it.
RETRY_BACKOFF_DEFAULT = True
# API answers are a few kilobytes; a bound this far above them stops a broken or hostile
# server from filling memory, and results have their own (get_result's max_bytes).
DEFAULT_MAX_RESPONSE_BYTES = 4 * 2**20
USER_AGENT = f"aiotlink/{version('aiotlink')}"


class _Keep(enum.Enum):
    """Marks an option that :meth:`TransactionLinkClient.with_options` leaves as it is."""

    KEEP = enum.auto()


_KEEP = _Keep.KEEP


def _check_base_url(base_url: str | None) -> str:
    """The API's base URL, from the argument, TRANSACTIONLINK_BASE_URL or the default.

    A malformed value is not echoed in the error: it may be a credential put in the
    wrong place (a token in TRANSACTIONLINK_BASE_URL, a password in the URL).
    """
    if base_url is None:
        base_url = os.environ.get(BASE_URL_ENV_VAR) or DEFAULT_BASE_URL
    if not isinstance(base_url, str):
        raise TypeError(f"base_url must be a str, got {type(base_url).__name__}")
    try:
        url = URL(base_url)
        port = url.port  # a port out of range is only found here
    except ValueError:
        url, port = None, None
    if url is None or url.scheme not in ("http", "https") or not url.host or port == 0:
        raise ValueError(
            "base_url must be an http(s) URL with a host, like https://api.transactionlink.io "
            "(the value is not shown: it may hold a credential)"
        )
    if url.user is not None or url.password is not None:
        # It would show in every error and log line: the token is the credential.
        raise ValueError("base_url must not carry a user or password; pass the token instead")
    if url.query_string or url.fragment:
        raise ValueError("base_url must not have a query or fragment (not shown: it may hold one)")
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
    transient failures only; ``retry_backoff=False`` retries without sleeping (tests;
    ``None``, the default, sleeps, unless the pytest plugin's
    ``transactionlink_defaults`` fixture is on).
    ``base_url`` ``None`` reads ``TRANSACTIONLINK_BASE_URL``, else the production API.
    ``default_headers`` are added to every API call (e.g. an ``Accept`` that picks the
    API version), never to storage. ``connection_limit`` caps the connections of the
    client's own session. ``max_response_bytes`` bounds every API answer read (results
    have ``get_result``'s ``max_bytes``): past it a call raises
    :class:`ResponseTooLargeError` having read no more. ``download_buffer_bytes``
    (default 16 MiB) is what all downloads of the client buffer at once, together; one
    download to disk streams per 512 KiB of it, the others wait their turn.

    One client is meant to be shared by all tasks of an event loop. Closing it ends
    every wait on it at once with :class:`ClientClosedError`.

    Attributes:
        workflows: the Workflows endpoints (:class:`aiotlink.Workflows`): initialise,
            find, cancel, get_result, stream_result, download_result, wait_for_completion,
            watch, run, as_completed, nudge.
        webhooks: verified webhook events and receivers (the ``webhooks`` extra).

    Raises:
        ValueError: no token, or a malformed argument (a ``session`` with ``auth=``).
        TypeError: an argument of the wrong type.
    """

    workflows: Workflows
    webhooks: Webhooks

    def __init__(
        self,
        token: str | None = None,
        *,
        base_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float | None = 30.0,
        max_retries: int = 3,
        retry_backoff: bool | None = None,
        default_headers: Mapping[str, str] | None = None,
        connection_limit: int = 100,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        download_buffer_bytes: int = DEFAULT_DOWNLOAD_BUFFER_BYTES,
    ) -> None:
        token = _check_token(token)
        if retry_backoff is None:
            retry_backoff = RETRY_BACKOFF_DEFAULT
        _check_options(timeout, max_retries, retry_backoff)
        check_count("connection_limit", connection_limit, minimum=1)
        check_count("download_buffer_bytes", download_buffer_bytes, minimum=1)
        self.max_response_bytes = check_count("max_response_bytes", max_response_bytes, minimum=1)
        _check_session(session)
        headers = _check_default_headers(default_headers)
        self._setup(
            token,
            base_url=_check_base_url(base_url),
            default_headers=headers,
            max_response_bytes=max_response_bytes,
            sessions=Sessions(session, connection_limit, download_buffer_bytes),
            options=RequestOptions(timeout, RetryPolicy(max_retries, retry_backoff)),
            webhook_keys=WebhookKeys(),
            owns_lifecycle=True,
        )

    def _setup(
        self,
        token: str,
        *,
        base_url: str,
        default_headers: Mapping[str, str],
        max_response_bytes: int,
        sessions: Sessions,
        options: RequestOptions,
        webhook_keys: WebhookKeys,
        owns_lifecycle: bool,
    ) -> None:
        """Set every attribute of a client or a view, from checked settings: one path.

        Views (:meth:`with_options`) come through here too, so that what a client holds
        is made, never copied from another.
        """
        self.base_url = base_url
        self.max_response_bytes = max_response_bytes
        self._token = token
        self._default_headers = dict(default_headers)
        self._sessions = sessions
        self._options = options
        self._owns_lifecycle = owns_lifecycle
        self._webhook_keys = webhook_keys  # shared by the client and its views
        self._requester = Requester(
            sessions,
            options,
            base_url=base_url,
            headers={
                **default_headers,
                "User-Agent": USER_AGENT,
                "Authorization": authorization_value(token),
            },
            # What error bodies are scrubbed of: a proxy may echo the Authorization header.
            secrets=(token, token.removeprefix("Bearer ")),
            max_response_bytes=max_response_bytes,
        )
        self.workflows = Workflows(self._requester)
        self.webhooks = Webhooks(self._requester, webhook_keys, nudge=self.workflows.nudge)

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
        view = type(self).__new__(type(self))  # a subclass's views are of the subclass
        view._setup(
            self._token,
            base_url=self.base_url,
            default_headers=self._default_headers,
            max_response_bytes=self.max_response_bytes,
            sessions=self._sessions,
            options=RequestOptions(new_timeout, new_policy),
            webhook_keys=self._webhook_keys,
            owns_lifecycle=False,
        )
        return view

    @property
    def timeout(self) -> float | None:
        """Seconds per HTTP attempt (``None``: no limit)."""
        return self._options.timeout

    @property
    def max_retries(self) -> int:
        """Retries after the first attempt, for transient failures."""
        return self._options.retry_policy.max_retries

    @property
    def retry_backoff(self) -> bool:
        """Whether retries wait (backoff, ``Retry-After``) or follow at once."""
        return self._options.retry_policy.backoff

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
