"""The fake TransactionLink server: the four Workflows endpoints on loopback, and webhooks.

Handlers are thin: they check credentials, call the pure rules of the sibling
modules, and return an ``Answer``; ``_serve`` records the request, applies a
planned fault, and streams the answer. With a webhook URL, every status change is
announced to it: handlers announce the changes they cause, and one timer (or a
``ManualClock``'s advance) those that time alone causes; ``WebhookSender`` posts
them in the background.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import random
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from types import TracebackType
from typing import Any, Literal, Self, TextIO

import yarl
from aiohttp import web

from aiotlink._models import WorkflowStatus
from aiotlink.testing._answers import Answer, hang_up, send
from aiotlink.testing._auth import (
    ORG_TOKEN_PREFIX,
    Grant,
    authorise,
    new_grant,
    new_jwt,
    new_org_token,
)
from aiotlink.testing._clock import Clock, ManualClock
from aiotlink.testing._deliveries import (
    DEFAULT_WEBHOOK_RETRY_SECONDS,
    DEFAULT_WEBHOOK_TIMEOUT,
    WebhookSender,
)
from aiotlink.testing._events import webhook_payload
from aiotlink.testing._executions import (
    DEFAULT_STATUSES,
    Definition,
    Execution,
    check_statuses,
    check_step_seconds,
)
from aiotlink.testing._faults import (
    DropFault,
    ErrorBody,
    Fault,
    FaultPlan,
    Route,
    SlowFault,
    StatusFault,
    WebhookCorruptSignature,
    WebhookDelay,
    WebhookDrop,
    WebhookDuplicate,
    WebhookReorder,
    WebhookUnknownKey,
    check_after_bytes,
    check_reorder_count,
    check_route,
    check_seconds,
    fault_answer,
    status_fault,
)
from aiotlink.testing._records import RecordedRequest, WebhookDelivery
from aiotlink.testing._results import GeneratedResult, InlineResult, ResultBody
from aiotlink.testing._signing import require_joserfc
from aiotlink.testing._storage import Storage
from aiotlink.testing._validation import canonical_uuid, parse_initialise_body
from aiotlink.testing._watch import StatusWatch
from aiotlink.testing._wire import (
    JSON_CONTENT_TYPE,
    ApiProblem,
    ErrorDetail,
    dump_json,
    error_answer,
    execution_body,
    json_answer,
    problem_answer,
)

HOST = "127.0.0.1"
"""The fake listens on loopback only."""

DEFAULT_REDIRECT_THRESHOLD = 9_000_000
"""Results larger than this many bytes are answered with a ``$redirect`` (9 MB)."""

DEFAULT_URL_TTL = 300
"""Validity of a pre-signed storage URL, in seconds (5 minutes)."""

_SHUTDOWN_SECONDS = 2.0
"""Longest wait for answers in flight when the fake closes, in seconds."""

PEM_CONTENT_TYPE = "text/plain;charset=UTF-8"
"""Content type of the webhook key endpoint's PEM answer."""

_Handler = Callable[[web.Request, bytes], Answer]
_Permission = Literal["can_run", "can_view_workspace"]


# What fail_randomly answers with: a rate limit, server errors, a dropped connection.
_RANDOM_FAULTS: tuple[Fault, ...] = (
    StatusFault(429, "1", "auto"),
    StatusFault(500, None, "auto"),
    StatusFault(502, None, "auto"),
    StatusFault(503, None, "auto"),
    DropFault(None),
)


class _Echo(enum.Enum):
    ECHO = "echo"

    def __repr__(self) -> str:
        return "<echo of the execution>"


ECHO = _Echo.ECHO
"""Default ``result`` of a definition: an object echoing the execution's id,
definition id and parameters, so a test can tell whose result it got."""


class FakeTransactionLink:
    """An in-process fake of TransactionLink's Workflows API v3, on 127.0.0.1.

    Use it as ``async with FakeTransactionLink() as fake:``, or call ``start()`` and
    ``close()``. ``port``/``storage_port`` 0 pick free ports. Results above
    ``redirect_threshold`` bytes are answered with a ``$redirect`` to the storage
    listener, valid ``url_ttl`` seconds. ``clock`` (seconds since the epoch) drives
    ``expiresAt``, time-based steps and URL expiry; pass a ``ManualClock`` to move
    time by hand. ``record_requests=False`` keeps ``requests`` empty, for long
    benchmarks. ``token`` fixes the all-permission ``tot_`` token (e.g. for a demo)
    instead of a random one. ``request_log`` gets a line per request: the time
    (``time.time()``), the route, the path and ``ok`` or the fault it was answered
    with; never a header or a body.

    ``webhook_url`` (or ``set_webhook_url`` later) has every status change of every
    execution POSTed there, signed like the provider's webhooks (needs the
    ``webhooks`` extra); an attempt without a 2xx answer within ``webhook_timeout``
    seconds is retried up to 5 times, ``webhook_retry_seconds`` apart.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        storage_port: int = 0,
        redirect_threshold: int = DEFAULT_REDIRECT_THRESHOLD,
        url_ttl: int = DEFAULT_URL_TTL,
        clock: Clock = time.time,
        record_requests: bool = True,
        token: str | None = None,
        webhook_url: str | None = None,
        webhook_timeout: float = DEFAULT_WEBHOOK_TIMEOUT,
        webhook_retry_seconds: float = DEFAULT_WEBHOOK_RETRY_SECONDS,
        request_log: TextIO | None = None,
    ) -> None:
        """Prepare the fake, with one all-permission token and JWT; nothing listens yet.

        Raises ``ImportError`` when ``webhook_url`` is given without the ``webhooks``
        extra installed, ``ValueError`` for a bad argument.
        """
        if token is not None and not token.startswith(ORG_TOKEN_PREFIX):
            raise ValueError("token must be an organization token, starting with tot_")
        if redirect_threshold < 0:
            raise ValueError("redirect_threshold must be 0 or more bytes")
        if url_ttl < 1:
            raise ValueError("url_ttl must be 1 second or more")
        if not math.isfinite(webhook_timeout) or webhook_timeout <= 0:
            raise ValueError("webhook_timeout must be a finite number of seconds, more than 0")
        check_seconds(webhook_retry_seconds)
        self._port = port
        self._storage_port = storage_port
        self._redirect_threshold = redirect_threshold
        self._clock = clock
        self._record_requests = record_requests
        self._secret = secrets.token_bytes(32)
        self._grants: dict[str, Grant] = {}
        self._definitions: dict[str, Definition] = {}
        self._executions: dict[str, Execution] = {}
        self._faults = FaultPlan()
        self._random_faults: dict[str, float] = {}
        self._random = random.Random()
        self._request_log = request_log
        self._storage = Storage(clock=clock, url_ttl=url_ttl)
        self._runners: list[web.AppRunner] = []
        self._closing = asyncio.Event()
        self._url: str | None = None
        self._storage_host: str | None = None
        self._webhooks = WebhookSender(
            timeout=float(webhook_timeout), retry_seconds=float(webhook_retry_seconds)
        )
        self._webhook_url: str | None = None
        self._watch = StatusWatch()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_due: float | None = None
        self.workspace_id = str(uuid.uuid4())
        """The workspace of every execution (``workspaceId``)."""
        self.requests: list[RecordedRequest] = []
        """Every request received, in order, storage included."""
        self.token = self.add_token() if token is None else self._grant_all(token)
        """An organization token (``tot_...``) with every permission: ``token`` if given."""
        self.jwt = self.add_token(legacy_jwt=True)
        """A legacy JWT with every permission, to send as ``Bearer <jwt>``."""
        self.set_webhook_url(webhook_url)

    def __repr__(self) -> str:
        return (
            f"<FakeTransactionLink url={self._url!r} definitions={len(self._definitions)}"
            f" executions={len(self._executions)}>"
        )

    # Lifecycle

    async def start(self) -> None:
        """Listen on 127.0.0.1: the API on ``port`` and the storage on ``storage_port``.

        Raises ``RuntimeError`` if already started, ``OSError`` if a port is taken.
        """
        if self._runners:
            raise RuntimeError("the fake is already started")
        self._closing = asyncio.Event()
        try:
            api_port = await self._listen(self._api_app(), self._port)
            storage_port = await self._listen(self._storage_app(), self._storage_port)
        except BaseException:
            await self.close()
            raise
        self._url = f"http://{HOST}:{api_port}"
        self._storage_host = f"{HOST}:{storage_port}"
        self._webhooks.loop = asyncio.get_running_loop()
        if isinstance(self._clock, ManualClock):
            self._clock.subscribe(self._announce_due)
        self._arm()

    async def close(self) -> None:
        """Stop listening; answers in flight are cut short. Closing twice is harmless.

        Webhook deliveries not yet done, a POST in flight included, are cancelled
        (their ``outcome`` becomes ``"cancelled"``) and the fake's session is closed.
        """
        self._closing.set()
        runners, self._runners = self._runners, []
        for runner in runners:
            await runner.cleanup()
        if isinstance(self._clock, ManualClock):
            self._clock.unsubscribe(self._announce_due)
        self._disarm()
        await self._webhooks.close()

    async def __aenter__(self) -> Self:
        """Start the fake and return it."""
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        """Close the fake."""
        await self.close()

    @property
    def url(self) -> str:
        """Base URL of the API, without a trailing slash, e.g. ``http://127.0.0.1:43123``."""
        if self._url is None:
            raise RuntimeError("the fake is not started: use `async with` or `await start()`")
        return self._url

    @property
    def storage_url(self) -> str:
        """Base URL of the storage listener (another origin than ``url``)."""
        if self._storage_host is None:
            raise RuntimeError("the fake is not started: use `async with` or `await start()`")
        return f"http://{self._storage_host}"

    # Setup by tests

    def add_definition(
        self,
        definition_id: str | None = None,
        statuses: Sequence[str] = DEFAULT_STATUSES,
        result: object = ECHO,
        step_seconds: float = 0.0,
        interactive: bool = False,
        *,
        name: str | None = None,
        revision: str = "1",
        ui_options: Mapping[str, Any] | None = None,
    ) -> str:
        """Add (or replace) a workflow definition and return its id.

        ``definition_id`` None picks a fresh UUID (real ids are UUIDs). ``statuses``
        is the walk of each execution; a terminal status may only come last.
        ``result`` is any JSON value (serialised once, compactly) or a
        ``GeneratedResult``; by default, an echo of the execution. ``step_seconds``
        0 moves one status per find; more moves one status per that many seconds.
        ``interactive`` executions carry a ``link`` and a ``token``. Raises
        ``ValueError`` or ``TypeError`` for a bad walk, step or result.
        """
        definition_id = str(uuid.uuid4()) if definition_id is None else definition_id
        body: ResultBody | None
        if result is ECHO:
            body = None
        elif isinstance(result, GeneratedResult):
            body = result
        else:
            body = InlineResult(dump_json(result))
        self._definitions[definition_id] = Definition(
            definition_id=definition_id,
            statuses=check_statuses(statuses),
            result=body,
            step_seconds=check_step_seconds(step_seconds),
            interactive=interactive,
            name=definition_id if name is None else name,
            revision=revision,
            ui_options=dict(ui_options or {}),
        )
        return definition_id

    def add_token(
        self, *, can_run: bool = True, can_view_workspace: bool = True, legacy_jwt: bool = False
    ) -> str:
        """Issue a credential with the given permissions and return it.

        ``legacy_jwt`` issues a JWT, to send as ``Bearer <jwt>``; otherwise a
        ``tot_`` token, to send as the whole ``Authorization`` value. Initialise
        needs ``can_run``; find, cancel and result need ``can_view_workspace``.
        """
        grant = new_grant(
            can_run=can_run, can_view_workspace=can_view_workspace, legacy_jwt=legacy_jwt
        )
        credential = (
            new_jwt(secret=self._secret, grant=grant, issued_at=self._clock())
            if legacy_jwt
            else new_org_token()
        )
        self._grants[credential] = grant
        return credential

    def _grant_all(self, token: str) -> str:
        self._grants[token] = new_grant(can_run=True, can_view_workspace=True, legacy_jwt=False)
        return token

    def expire(self, execution_id: str) -> None:
        """Set an execution's ``expiresAt`` to now: unless terminal, it is ``EXPIRED`` from now on.

        Raises ``KeyError`` for an unknown execution.
        """
        execution = self._execution(execution_id)
        execution.expires_at = datetime.fromtimestamp(self._clock(), UTC)
        self._announce(execution)

    def status_of(self, execution_id: str) -> WorkflowStatus:
        """Return an execution's current status without counting a poll.

        A ``WorkflowStatus``, which equals its text (``== "COMPLETED"`` holds too).
        Raises ``KeyError`` for an unknown execution.
        """
        execution = self._execution(execution_id)
        self._announce(execution)
        return WorkflowStatus(execution.status(self._clock()))

    def requests_for(self, route: str) -> list[RecordedRequest]:
        """Return the recorded requests of one route, in order."""
        return [request for request in self.requests if request.route == route]

    # Faults

    def fail_next(
        self,
        route: Route,
        status: int = 503,
        *,
        times: int = 1,
        retry_after: int | datetime | str | None = None,
        body: ErrorBody = "auto",
    ) -> None:
        """Answer the next ``times`` requests of ``route`` with ``status`` instead.

        ``retry_after`` sets ``Retry-After``: whole seconds, an aware datetime (sent
        as an HTTP date) or a raw value. ``body``: ``"auto"`` (an ``ErrorResponse``,
        or S3 XML on storage), ``"json"``, ``"xml"``, ``"html"`` (a proxy's page) or
        ``"empty"``. Raises ``ValueError`` for an unknown route, status or body.
        """
        self._faults.add(route, status_fault(status, retry_after, body), times)

    def drop_next(self, route: Route, *, times: int = 1, after_bytes: int | None = None) -> None:
        """Drop the connection of the next ``times`` requests of ``route``.

        ``after_bytes`` None closes it before the request is processed. A number
        processes the request, sends the headers with the full ``Content-Length``,
        then at most that many body bytes (always fewer than the whole body), and
        closes; an empty answer (cancel's) cannot be cut, so it closes unanswered.
        aiohttp retries a GET once after a drop, so plan ``times=2`` for a GET
        client to see it.
        """
        self._faults.add(route, DropFault(check_after_bytes(after_bytes)), times)

    def slow_next(self, route: Route, seconds: float, *, times: int = 1) -> None:
        """Delay the next ``times`` answers of ``route`` by ``seconds``, then answer normally.

        Closing the fake ends the delay at once.
        """
        self._faults.add(route, SlowFault(check_seconds(seconds)), times)

    def fail_randomly(self, route: Route, rate: float, *, seed: int | None = None) -> None:
        """Answer a ``rate`` fraction of ``route``'s requests, at random, with a fault.

        Each faulty answer is one of 429 (``Retry-After: 1``), 500, 502, 503, or a
        connection dropped before answering. Planned faults come first. ``rate`` 0
        stops it. Raises ``ValueError`` for a rate outside 0..1 or an unknown route.
        """
        check_route(route)
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be between 0 and 1, got {rate!r}")
        self._random_faults[route] = rate
        self._random = random.Random(seed)

    def _random_fault(self, route: str) -> Fault | None:
        rate = self._random_faults.get(route, 0.0)
        if not rate or self._random.random() >= rate:
            return None
        return self._random.choice(_RANDOM_FAULTS)

    def pending_faults(self, route: Route) -> int:
        """Count the faults planned for ``route`` and not yet used."""
        return self._faults.pending(route)

    def clear_faults(self) -> None:
        """Forget every planned fault of the routes (webhook faults: ``clear_webhook_faults``)."""
        self._faults.clear()

    # Webhooks

    @property
    def webhook_url(self) -> str | None:
        """Where status changes are POSTed, or ``None`` when the fake sends no webhooks."""
        return self._webhook_url

    def set_webhook_url(self, url: str | None) -> None:
        """Send the webhooks of the changes from now on to ``url``; ``None`` stops sending.

        Executions that already exist are announced from their next change on. A
        delivery already made keeps its URL for its retries. Raises ``ImportError``
        without the ``webhooks`` extra (``pip install "aiotlink[webhooks]"``), and
        ``ValueError`` for a URL that is not absolute http(s).
        """
        if url is None:
            self._webhook_url = None
            self._watch = StatusWatch()
            self._disarm()
            return
        parsed = yarl.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise ValueError(f"webhook_url must be an absolute http(s) URL, not {url!r}")
        require_joserfc()
        was_off = self._webhook_url is None
        self._webhook_url = url
        if was_off:
            now = self._clock()
            for execution in self._executions.values():
                self._watch.changes(execution, now)  # where it stands now: not a change
            self._arm()

    @property
    def webhook_key_id(self) -> str:
        """The ``kid`` that signs the next webhooks (a UUID), served by the key endpoint."""
        return self._webhooks.keys.current.kid

    def rotate_webhook_key(self) -> str:
        """Sign the next webhooks with a new RSA key under a new ``kid``, and return the kid.

        The old kids stay served by ``GET /auth/webhooks/key/{kid}``; a delivery being
        retried keeps the signature it was made with.
        """
        return self._webhooks.keys.rotate().kid

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Every webhook made so far, in the order made: the event, bytes, header, attempts."""
        return self._webhooks.deliveries

    async def webhooks_settled(self, timeout: float | None = 10.0) -> None:
        """Wait until no webhook delivery is pending or in flight.

        Changes that the clock has already reached are announced first. Retries
        count as pending, and so do webhooks held by ``reorder_next_webhooks`` until
        the last of them arrives. Raises ``TimeoutError`` after ``timeout`` seconds
        (``None``: no limit).
        """
        self._announce_due()
        await self._webhooks.settled(timeout)

    def drop_next_webhook(self, *, times: int = 1) -> None:
        """Never deliver the next ``times`` webhooks (each is recorded as ``"dropped"``)."""
        self._webhooks.faults.add(WebhookDrop(), times)

    def duplicate_next_webhook(self, *, times: int = 1) -> None:
        """Deliver each of the next ``times`` webhooks twice, the same body and signature.

        Each copy is a record of its own in ``webhook_deliveries``, with its own attempts.
        """
        self._webhooks.faults.add(WebhookDuplicate(), times)

    def reorder_next_webhooks(self, count: int = 2) -> None:
        """Hold the next ``count`` webhooks, then deliver them in reverse order.

        The webhooks held take no other planned fault. Until the last arrives they
        stay pending; ``clear_webhook_faults`` sends those held at once.
        """
        self._webhooks.faults.add(WebhookReorder(check_reorder_count(count)), 1)

    def delay_next_webhook(self, seconds: float, *, times: int = 1) -> None:
        """Deliver the next ``times`` webhooks ``seconds`` late; later ones may overtake them.

        Closing the fake cancels the wait.
        """
        self._webhooks.faults.add(WebhookDelay(check_seconds(seconds)), times)

    def corrupt_next_webhook_signature(self, *, times: int = 1) -> None:
        """Send the next ``times`` webhooks with one byte of the signature flipped."""
        self._webhooks.faults.add(WebhookCorruptSignature(), times)

    def sign_next_webhook_with_unknown_key(self, *, times: int = 1) -> None:
        """Sign the next ``times`` webhooks validly, with a key whose ``kid`` is not served.

        Fetching that kid from the key endpoint answers 404.
        """
        self._webhooks.faults.add(WebhookUnknownKey(), times)

    def pending_webhook_faults(self) -> int:
        """Count the webhook faults planned and not yet used (a reorder counts once)."""
        return self._webhooks.faults.pending()

    def clear_webhook_faults(self) -> None:
        """Forget every planned webhook fault, and send any webhooks held for a reorder."""
        self._webhooks.faults.clear()
        self._webhooks.release_held()

    def _announce(self, execution: Execution) -> None:
        """Send the webhooks of ``execution``'s changes not yet announced."""
        url = self._webhook_url
        if url is None or not self._runners:
            return
        for change in self._watch.changes(execution, self._clock()):
            self._webhooks.send(url, webhook_payload(execution, change.status, change.at))
        self._arm()

    def _announce_cancel(self, execution: Execution) -> None:
        url = self._webhook_url
        if url is None or not self._runners:
            return
        self._watch.finish(execution.id, "CANCELLED")
        self._webhooks.send(url, webhook_payload(execution, "CANCELLED", self._clock()))

    def _announce_due(self) -> None:
        """Announce the executions whose next time step or expiry the clock has reached."""
        if self._webhook_url is None or not self._runners:
            return
        for execution_id in self._watch.pop_due(self._clock()):
            self._announce(self._executions[execution_id])
        self._arm()

    def _arm(self) -> None:
        """Set the one timer for the earliest change that time alone will cause.

        A ``ManualClock`` does not move with wall time: its ``advance`` announces instead.
        """
        loop = self._webhooks.loop
        if self._webhook_url is None or not self._runners or loop is None:
            return
        if isinstance(self._clock, ManualClock):
            return
        due = self._watch.next_due()
        if due == self._timer_due and self._timer is not None:
            return
        self._disarm()
        if due is not None:
            delay = max(due - self._clock(), 0.0)
            self._timer = loop.call_later(delay, self._on_timer)
            self._timer_due = due

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._timer_due = None, None

    def _on_timer(self) -> None:
        self._timer, self._timer_due = None, None
        self._announce_due()

    # Serving

    async def _listen(self, app: web.Application, port: int) -> int:
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_SECONDS)
        await runner.setup()
        self._runners.append(runner)
        await web.TCPSite(runner, HOST, port).start()
        bound_port: int = runner.addresses[0][1]
        return bound_port

    def _api_app(self) -> web.Application:
        app = web.Application()
        router = app.router
        router.add_post("/workflows", self._handler("initialise", self._initialise))
        router.add_get(
            "/workflows/{workflow_id:[^/]+}", self._handler("find", self._find), allow_head=False
        )
        router.add_post(
            "/workflows/{workflow_id:[^/]+}/cancel", self._handler("cancel", self._cancel)
        )
        router.add_get(
            "/workflows/{workflow_id:[^/]+}/result",
            self._handler("result", self._result),
            allow_head=False,
        )
        router.add_get(
            "/hosted/{workflow_id:[^/]+}", self._handler("hosted", self._hosted), allow_head=False
        )
        router.add_get(
            "/auth/webhooks/key/{kid:[^/]+}",
            self._handler("webhook_key", self._webhook_key),
            allow_head=False,
        )
        # Last, so it only takes what no endpoint does (wrong paths and methods).
        router.add_route("*", "/{tail:.*}", self._handler("unmatched", self._unmatched))
        return app

    def _storage_app(self) -> web.Application:
        app = web.Application()
        app.router.add_route("*", "/{key:.*}", self._handler("storage", self._storage_answer))
        return app

    def _handler(
        self, route: str, handler: _Handler
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            return await self._serve(route, handler, request)

        return handle

    async def _serve(
        self, route: str, handler: _Handler, request: web.Request
    ) -> web.StreamResponse:
        self._announce_due()
        now = time.monotonic()
        try:
            body: bytes | None = await request.read()
        except web.HTTPRequestEntityTooLarge:
            body = None
        if self._record_requests:
            path, _, query = request.raw_path.partition("?")
            self.requests.append(
                RecordedRequest(
                    route, request.method, path, query, request.headers, body or b"", now
                )
            )
        fault = self._faults.take(route) or self._random_fault(route)
        if self._request_log is not None:
            # Route and path only: never a header (the credential) or a body.
            marker = "ok" if fault is None else type(fault).__name__
            self._request_log.write(f"{time.time():.6f} {route} {request.path} {marker}\n")
        cut_after = None
        if isinstance(fault, StatusFault):
            return await send(request, fault_answer(fault, route), closing=self._closing)
        if isinstance(fault, DropFault):
            if fault.after_bytes is None:
                hang_up(request)
                return web.Response()
            cut_after = fault.after_bytes
        elif isinstance(fault, SlowFault):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._closing.wait(), timeout=fault.seconds)
        if body is None:
            detail = ErrorDetail("PAYLOAD_TOO_LARGE", "the request body is too large")
            answer = error_answer(413, (detail,))
        else:
            try:
                answer = handler(request, body)
            except ApiProblem as problem:
                answer = problem_answer(problem)
        return await send(request, answer, closing=self._closing, cut_after=cut_after)

    def _authenticate(self, request: web.Request) -> Grant:
        grant = authorise(request.headers.get("Authorization"), self._grants)
        if grant is None:
            raise ApiProblem.of(
                401,
                "UNAUTHORIZED",
                "missing or invalid Authorization: send a tot_ token as the whole value,"
                " or a legacy JWT as Bearer <jwt>",
            )
        return grant

    def _grant(self, request: web.Request, permission: _Permission) -> Grant:
        grant = self._authenticate(request)
        allowed = grant.can_run if permission == "can_run" else grant.can_view_workspace
        if not allowed:
            raise ApiProblem.of(403, "ACCESS_DENIED", f"the credential lacks {permission}")
        return grant

    def _execution(self, execution_id: str) -> Execution:
        execution = self._executions.get(canonical_uuid(execution_id) or execution_id)
        if execution is None:
            raise KeyError(f"no workflow execution {execution_id!r}")
        return execution

    def _lookup(self, request: web.Request) -> Execution:
        execution_id = request.match_info["workflow_id"]
        try:
            return self._execution(execution_id)
        except KeyError:
            raise ApiProblem.of(
                404, "WORKFLOW_NOT_FOUND", f"no workflow execution {execution_id!r}"
            ) from None

    def _body(self, execution: Execution, status: str) -> Answer:
        return json_answer(execution_body(execution, status=status, workspace_id=self.workspace_id))

    def _initialise(self, request: web.Request, body: bytes) -> Answer:
        grant = self._grant(request, "can_run")
        if request.content_type != "application/json":
            raise ApiProblem.of(
                415, "UNSUPPORTED_MEDIA_TYPE", "Content-Type must be application/json"
            )
        now = self._clock()
        wanted = parse_initialise_body(body, datetime.fromtimestamp(now, UTC))
        definition = self._definitions.get(wanted.workflow_definition_id)
        if definition is None:
            raise ApiProblem.of(
                404,
                "WORKFLOW_DEFINITION_NOT_FOUND",
                f"no workflow definition {wanted.workflow_definition_id!r}",
            )
        execution_id = str(uuid.uuid4())
        interactive = definition.interactive
        execution = Execution(
            id=execution_id,
            definition=definition,
            created_at=now,
            parameters=wanted.parameters,
            locale=wanted.locale,
            expires_at=wanted.expires_at,
            record_id=wanted.record_id,
            token=secrets.token_urlsafe(24) if interactive else None,
            link=f"{self.url}/hosted/{execution_id}" if interactive else None,
            origin={"type": "API", "tokenId": grant.token_id},
        )
        self._executions[execution_id] = execution
        self._announce(execution)
        return self._body(execution, execution.status(now))

    def _find(self, request: web.Request, body: bytes) -> Answer:
        self._grant(request, "can_view_workspace")
        execution = self._lookup(request)
        status = execution.poll(self._clock())
        self._announce(execution)
        return self._body(execution, status)

    def _cancel(self, request: web.Request, body: bytes) -> Answer:
        self._grant(request, "can_view_workspace")
        execution = self._lookup(request)
        self._announce(execution)  # what came before the cancel, first
        now = self._clock()
        outcome = execution.cancel(now)
        if outcome == "already_finished":
            raise ApiProblem.of(
                400,
                "WORKFLOW_ALREADY_FINISHED",
                f"workflow execution {execution.id} is already {execution.status(now)}",
            )
        if outcome == "cancelled":
            self._announce_cancel(execution)
        return Answer.of_bytes(200, {}, b"")

    def _result(self, request: web.Request, body: bytes) -> Answer:
        self._grant(request, "can_view_workspace")
        if canonical_uuid(request.match_info["workflow_id"]) is None:
            raise ApiProblem.of(400, "INVALID_WORKFLOW_ID", "workflowId must be a UUID")
        execution = self._lookup(request)
        status = execution.status(self._clock())
        if status != "COMPLETED":
            raise ApiProblem.of(
                404,
                "WORKFLOW_RESULT_NOT_FOUND",
                f"workflow execution {execution.id} has no result: it is {status}",
            )
        result = execution.definition.result
        if result is None:
            result = InlineResult(dump_json(self._echo(execution)))
        if result.size <= self._redirect_threshold:
            return Answer(
                200, {"Content-Type": JSON_CONTENT_TYPE}, result.iter_bytes(), result.size
            )
        key = f"workspaces/{self.workspace_id}/executions/{execution.id}/result.json"
        path = self._storage.put(key, result)
        host = self.storage_url.removeprefix("http://")
        url = self._storage.presigned_url(host=host, path=path)
        return json_answer({"$redirect": url})

    @staticmethod
    def _echo(execution: Execution) -> dict[str, Any]:
        return {
            "executionId": execution.id,
            "workflowDefinitionId": execution.definition.definition_id,
            "parameters": execution.parameters,
        }

    def _hosted(self, request: web.Request, body: bytes) -> Answer:
        # The page a person would open from an interactive execution's link.
        execution = self._lookup(request)
        status = execution.status(self._clock())
        page = (
            "<!doctype html><title>TransactionLink (fake)</title>"
            f"<h1>{escape(execution.definition.name)}</h1>"
            f"<p>Execution {execution.id}: {status}</p>"
        )
        return Answer.of_bytes(200, {"Content-Type": "text/html;charset=UTF-8"}, page.encode())

    def _webhook_key(self, request: web.Request, body: bytes) -> Answer:
        # Any valid credential may fetch a key: the reference names no permission for it.
        self._authenticate(request)
        if request.query.get("pem", "true").lower() != "true":
            raise ApiProblem.of(
                400, "INVALID_REQUEST", "the fake serves webhook keys as PEM only (pem=true)"
            )
        kid = request.match_info["kid"]
        key = self._webhooks.keys.served(kid)
        if key is None:
            raise ApiProblem.of(404, "WEBHOOK_KEY_NOT_FOUND", f"no webhook key {kid!r}")
        try:
            pem = key.public_pem()
        except ImportError as exc:
            raise ApiProblem.of(500, "INTERNAL_SERVER_ERROR", str(exc)) from None
        return Answer.of_bytes(200, {"Content-Type": PEM_CONTENT_TYPE}, pem)

    def _unmatched(self, request: web.Request, body: bytes) -> Answer:
        raise ApiProblem.of(404, "NOT_FOUND", f"no endpoint {request.method} {request.path}")

    def _storage_answer(self, request: web.Request, body: bytes) -> Answer:
        return self._storage.answer(
            method=request.method,
            host=request.host,
            target=request.raw_path,
            headers=request.headers,
        )
