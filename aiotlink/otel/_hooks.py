"""The client's observability hooks (aiotlink._instrument), made of OpenTelemetry spans.

The span tree (README.md, "Traces and metrics")::

    aiotlink.run                           workflow definition, execution, outcome
    ├── aiotlink.initialise                one API call, retry sleeps as events
    │   └── POST /workflows                one HTTP attempt (client semantic conventions)
    ├── aiotlink.wait                      execution id, polls, statuses (events), outcome
    │   └── aiotlink.poll                  one shared poll: its call, linked to other waits
    │       └── GET /workflows/{id}
    └── aiotlink.get_result | aiotlink.download   (bytes, redirected, resumes, refreshes)

A poll serves every wait of its poller on its execution (_polling.py): its span is a
child of the oldest such wait's span and links to the others' spans; every such wait's
span counts the poll, and each status the poll brings that is new to a wait is an event
on that wait's span. Waits of other clients on the same execution have polls of their own.

Tracing never breaks the client: an error of a hook, or of a span processor it calls,
is logged (its type only: the text may hold anything) and the call goes on untraced
(:meth:`OpenTelemetryHooks._around`, :func:`_quietly`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Generator, Iterator, Mapping
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, Concatenate, Generic, ParamSpec, TypeVar, cast

import aiohttp
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.util.types import AttributeValue
from yarl import URL

from .._download import Streamed
from .._errors import APIError, WaitTimeoutError, WorkflowFailedError
from .._models import DownloadedResult, RunResult, WebhookEvent, WorkflowStatus
from .._polling import DeadlinePassed, Lookup, Poller, Subscription
from .._transport import Request, Response, send

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider
    from opentelemetry.trace import TracerProvider

T = TypeVar("T")
P = ParamSpec("P")
H = TypeVar("H")
Attributes = dict[str, AttributeValue]
logger = logging.getLogger("aiotlink.otel")

SCHEMA_URL = "https://opentelemetry.io/schemas/1.26.0"
# The semantic conventions' advice for http.client.request.duration, in seconds.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)
# Waits last minutes: the buckets of the HTTP histogram, then longer ones.
WAIT_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)

# The span of an API call is named for the method that makes it.
_CALL_NAMES = {
    ("POST", "/workflows"): "aiotlink.initialise",
    ("GET", "/workflows/{id}"): "aiotlink.find",
    ("POST", "/workflows/{id}/cancel"): "aiotlink.cancel",
    ("GET", "/workflows/{id}/result"): "aiotlink.get_result",
    ("GET", "storage"): "aiotlink.storage",
    ("GET", "/auth/webhooks/key/{kid}"): "aiotlink.webhook_key",
}

EXECUTION_ID = "aiotlink.execution.id"
STATUS = "aiotlink.execution.status"
OUTCOME = "aiotlink.outcome"


class _Call:
    """The request whose attempts and retries are in progress: for the retry counter."""

    __slots__ = ("method", "route")

    def __init__(self, method: str, route: str) -> None:
        self.method = method
        self.route = route


class _Poll:
    """A shared poll in progress: the waits its call span links to, besides its parent."""

    __slots__ = ("execution_id", "links")

    def __init__(self, execution_id: str, links: list[Link]) -> None:
        self.execution_id = execution_id
        self.links = links


class _Download:
    """A download in progress: what its span tells at the end."""

    __slots__ = ("refreshes", "resumes")

    def __init__(self) -> None:
        self.resumes = 0
        self.refreshes = 0


class _Wait:
    """A wait or watch in progress: its span and what it has seen."""

    __slots__ = ("execution_id", "poller", "polls", "span", "started", "status")

    def __init__(
        self, span: Span, poller: object, execution_id: str, status: WorkflowStatus | None
    ) -> None:
        self.span = span
        self.poller = poller
        self.execution_id = execution_id
        self.started = time.perf_counter()
        self.polls = 0
        self.status: WorkflowStatus | None = None
        self.saw(status)

    def saw(self, status: WorkflowStatus | None) -> None:
        """``status`` is what the execution is now: an event on the span if it is new."""
        if status is not None and status != self.status:
            self.status = status
            self.span.add_event("aiotlink.status", {STATUS: status.value})


_CALL: ContextVar[_Call | None] = ContextVar("aiotlink_otel_call", default=None)
_POLL: ContextVar[_Poll | None] = ContextVar("aiotlink_otel_poll", default=None)
_DOWNLOAD: ContextVar[_Download | None] = ContextVar("aiotlink_otel_download", default=None)
# The key of the webhook verification in progress: "cached" or "fetched".
_KEY: ContextVar[list[str] | None] = ContextVar("aiotlink_otel_key", default=None)
# The status of the streamed answer in progress (a download's read).
_ANSWER: ContextVar[list[int] | None] = ContextVar("aiotlink_otel_answer", default=None)


def error_type(error: BaseException) -> str:
    """``error.type`` of the conventions: the status of an error answer, else the class.

    The first public class: a private one (a download's short read) says nothing.
    """
    if isinstance(error, APIError):
        return str(error.status)
    for cls in type(error).__mro__:
        if not cls.__name__.startswith("_"):
            return cls.__name__
    return "_OTHER"  # pragma: no cover - object is public: every class has a public base


def failed(span: Span, error: BaseException) -> None:
    """Mark ``span`` as ended by ``error``: its type only, never its text.

    A cancellation is the caller's choice, not a failure: no error status.
    """
    kind = error_type(error)
    span.set_attribute("error.type", kind)
    if not _cancelled(error):
        span.set_status(Status(StatusCode.ERROR, kind))


def _cancelled(error: BaseException) -> bool:
    return isinstance(error, asyncio.CancelledError)


def full_url(display_url: URL, *, storage: bool) -> str:
    """``url.full`` of the conventions: no credentials, and no query for pre-signed storage.

    ``display_url`` has its signatures masked already; a pre-signed URL's whole query is
    its credential, so none of it is kept.
    """
    url = display_url.with_fragment(None)
    if storage:
        url = url.with_query(None)
    if url.user is not None or url.password is not None:
        url = url.with_user("REDACTED").with_password("REDACTED")
    return str(url)


def outcome_of(error: BaseException) -> str:
    """The outcome of a wait or run that ``error`` ended."""
    if isinstance(error, WaitTimeoutError | DeadlinePassed):
        return "timeout"
    if _cancelled(error) or isinstance(error, GeneratorExit):
        return "cancelled"
    return "failed"


def status_outcome(status: WorkflowStatus) -> str:
    return "completed" if status is WorkflowStatus.COMPLETED else "failed"


# The hooks that failed since instrument(): a processor that always fails warns once each.
_FAILED: set[str] = set()


def _broken(where: str, error: Exception) -> None:
    """Tracing failed in ``where``: said by type only, never its text.

    The text of a span processor's error may quote anything, and its traceback the
    values of its frames: neither goes to the log. A warning the first time per hook,
    debug after: a broken processor fails on every span.
    """
    level = logging.DEBUG if where in _FAILED else logging.WARNING
    _FAILED.add(where)
    logger.log(level, "tracing failed in %s (%s); the client goes on", where, type(error).__name__)


def _quietly(method: Callable[Concatenate[H, P], None]) -> Callable[Concatenate[H, P], None]:
    """A hook that returns nothing, whose errors are logged instead of reaching the client."""

    @functools.wraps(method)
    def run(self: H, /, *arguments: P.args, **keywords: P.kwargs) -> None:
        try:
            method(self, *arguments, **keywords)
        except Exception as error:
            _broken(method.__name__, error)

    return run


class _Tracked(Generic[T]):
    """The client's own work, awaited inside the instrumentation: how far it got, and how."""

    __slots__ = ("done", "error", "result", "started", "work")

    def __init__(self, work: Awaitable[T]) -> None:
        self.work = work
        self.started = False
        self.done = False
        self.error: BaseException | None = None
        self.result: T | None = None

    def __await__(self) -> Generator[Any, None, T]:
        self.started = True
        try:
            result = yield from self.work.__await__()
        except BaseException as error:
            self.error, self.done = error, True
            raise
        self.result, self.done = result, True
        return result


class OpenTelemetryHooks:
    """The hooks of :mod:`aiotlink._instrument`, with spans and metrics of one provider each."""

    def __init__(
        self, tracer_provider: TracerProvider | None, meter_provider: MeterProvider | None
    ) -> None:
        from .. import __version__

        _FAILED.clear()
        self._tracer = trace.get_tracer(
            "aiotlink", __version__, tracer_provider=tracer_provider, schema_url=SCHEMA_URL
        )
        meter = metrics.get_meter(
            "aiotlink", __version__, meter_provider=meter_provider, schema_url=SCHEMA_URL
        )
        self._request_duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of HTTP client requests (each attempt).",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._retries = meter.create_counter(
            "aiotlink.client.retries", unit="{retry}", description="Retries of failed attempts."
        )
        self._active_waits = meter.create_up_down_counter(
            "aiotlink.waits.active", unit="{wait}", description="Waits and watches in progress."
        )
        self._polls = meter.create_counter(
            "aiotlink.polls", unit="{poll}", description="Lookups of executions by shared polls."
        )
        self._wait_duration = meter.create_histogram(
            "aiotlink.wait.duration",
            unit="s",
            description="Duration of waits and watches, by outcome.",
            explicit_bucket_boundaries_advisory=WAIT_BUCKETS,
        )
        self._download_bytes = meter.create_counter(
            "aiotlink.download.bytes", unit="By", description="Bytes of results downloaded."
        )
        self._verifications = meter.create_counter(
            "aiotlink.webhook.verifications",
            unit="{verification}",
            description="Webhook deliveries verified, by outcome.",
        )
        self._waits: dict[Subscription, _Wait] = {}
        # By execution, then by poller: a poll serves only the waits of its own poller.
        self._waits_of: dict[str, dict[object, list[_Wait]]] = {}

    async def _around(
        self, where: str, work: Awaitable[T], instrumenting: Callable[[Awaitable[T]], Awaitable[T]]
    ) -> T:
        """Await ``work`` through ``instrumenting``; should that fail, the client does not.

        ``work`` is awaited once all the same: untraced if the instrumentation failed
        before it started, and its own result or error stands if it failed after.
        """
        tracked = _Tracked(work)
        try:
            return await instrumenting(tracked)
        except Exception as error:
            if tracked.error is error:
                raise
            _broken(where, error)
        # Out of the handler, so that the instrumentation's error rides on nothing.
        if not tracked.started:
            return await work
        if tracked.error is not None:
            raise tracked.error
        # Started means ended: the instrumentation awaits the work itself, inline.
        return cast(T, tracked.result)

    # API calls and their attempts

    async def call(self, request: Request, calling: Awaitable[Response]) -> Response:
        return await self._around("call", calling, lambda work: self._call(request, work))

    async def _call(self, request: Request, calling: Awaitable[Response]) -> Response:
        poll = _POLL.get()
        attributes: Attributes = {"http.request.method": request.method}
        if request.route != "storage":
            attributes["url.template"] = request.route
        links: list[Link] = []
        if poll is None:
            name = _CALL_NAMES.get((request.method, request.route), f"aiotlink {request.method}")
        else:
            name, links = "aiotlink.poll", poll.links
            attributes[EXECUTION_ID] = poll.execution_id
        token = _CALL.set(_Call(request.method, request.route))
        try:
            with self._tracer.start_as_current_span(
                name,
                links=links,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    return await calling
                except BaseException as error:
                    failed(span, error)
                    raise
        finally:
            _CALL.reset(token)

    async def send(
        self, session: aiohttp.ClientSession, request: Request, attempt_number: int
    ) -> Response:
        return await self._around(
            "send",
            send(session, request, attempt_number),
            lambda work: self._send(work, request, attempt_number),
        )

    async def _send(
        self, sending: Awaitable[Response], request: Request, attempt_number: int
    ) -> Response:
        answer = [0]
        return await self._attempt(
            sending,
            answer,
            method=request.method,
            display_url=request.display_url,
            route=request.route,
            attempt_number=attempt_number,
        )

    async def stream_attempt(
        self,
        streaming: Awaitable[T],
        *,
        url: str,
        route: str,
        storage: bool,
        attempt_number: int,
        resumed: bool,
    ) -> T:
        # storage: the route tells it (_attempt).
        async def traced(work: Awaitable[T]) -> T:
            call, download = _CALL.get(), _DOWNLOAD.get()
            if call is not None:
                call.route = route
            if resumed and download is not None:
                download.resumes += 1
            answer = [0]
            token = _ANSWER.set(answer)
            try:
                return await self._attempt(
                    work,
                    answer,
                    method="GET",
                    display_url=url,
                    route=route,
                    attempt_number=attempt_number,
                    resumed=resumed,
                )
            finally:
                _ANSWER.reset(token)

        return await self._around("stream_attempt", streaming, traced)

    @_quietly
    def responded(self, status: int) -> None:
        answer = _ANSWER.get()
        if answer is not None:
            answer[0] = status

    async def _attempt(
        self,
        attempting: Awaitable[T],
        answer: list[int],
        *,
        method: str,
        display_url: str,
        route: str,
        attempt_number: int,
        resumed: bool | None = None,
    ) -> T:
        """One HTTP attempt's span and duration: the conventions of an HTTP client."""
        storage = route == "storage"
        url = URL(display_url, encoded=True)
        measured: Attributes = {"http.request.method": method}
        if url.host is not None:
            measured["server.address"] = url.host
        if url.port is not None:
            measured["server.port"] = url.port
        if not storage:
            measured["url.template"] = route
        attributes: Attributes = {**measured, "url.full": full_url(url, storage=storage)}
        if attempt_number > 1:  # the conventions: set on resends only
            attributes["http.request.resend_count"] = attempt_number - 1
        if resumed is not None:
            attributes["aiotlink.download.resumed"] = resumed
        name = method if storage else f"{method} {route}"
        started = time.perf_counter()
        with self._tracer.start_as_current_span(
            name,
            kind=SpanKind.CLIENT,
            attributes=attributes,
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                result = await attempting
            except BaseException as error:
                status = error.status if isinstance(error, APIError) else answer[0]
                if status:
                    span.set_attribute("http.response.status_code", status)
                    measured["http.response.status_code"] = status
                failed(span, error)
                measured["error.type"] = error_type(error)
                raise
            else:
                status = result.status if isinstance(result, Response) else answer[0]
                if status:
                    span.set_attribute("http.response.status_code", status)
                    measured["http.response.status_code"] = status
                return result
            finally:
                self._request_duration.record(time.perf_counter() - started, measured)

    @_quietly
    def retry(self, delay: float, failed_attempt: int, error: BaseException | None) -> None:
        attributes: Attributes = {
            "aiotlink.retry.delay": delay,
            "aiotlink.retry.failed_attempt": failed_attempt,
        }
        if error is not None:
            attributes["error.type"] = error_type(error)
        trace.get_current_span().add_event("aiotlink.retry", attributes)
        measured: Attributes = {}
        call = _CALL.get()
        if call is not None:
            measured["http.request.method"] = call.method
            if call.route != "storage":
                measured["url.template"] = call.route
        if error is not None:
            measured["error.type"] = error_type(error)
        self._retries.add(1, measured)

    # Waits, watches and their shared polls

    @_quietly
    def wait_started(self, subscription: Subscription, last_status: WorkflowStatus | None) -> None:
        execution_id = subscription.execution_id
        span = self._tracer.start_span(
            "aiotlink.wait",
            attributes={
                EXECUTION_ID: execution_id,
                "aiotlink.wait.every_change": subscription.every_change,
            },
        )
        wait = _Wait(span, subscription.poller, execution_id, last_status)
        self._waits[subscription] = wait
        self._waits_of.setdefault(execution_id, {}).setdefault(wait.poller, []).append(wait)
        self._active_waits.add(1)

    @_quietly
    def wait_ended(self, subscription: Subscription, error: BaseException | None) -> None:
        wait = self._forget(subscription)
        if wait is None:
            return  # started before instrument()
        span = wait.span
        if wait.status is not None and wait.status.is_terminal:
            outcome = status_outcome(wait.status)
        elif error is not None:
            outcome = outcome_of(error)
            span.set_attribute(
                "error.type",
                "WaitTimeoutError" if isinstance(error, DeadlinePassed) else error_type(error),
            )
        else:
            outcome = "cancelled"  # the caller stopped waiting
        if wait.status is not None:
            span.set_attribute(STATUS, wait.status.value)
        span.set_attribute("aiotlink.wait.polls", wait.polls)
        span.set_attribute(OUTCOME, outcome)
        if outcome in ("failed", "timeout"):
            span.set_status(Status(StatusCode.ERROR, outcome))
        self._active_waits.add(-1)
        self._wait_duration.record(time.perf_counter() - wait.started, {OUTCOME: outcome})
        span.end()  # last: a span processor's error here leaves the counts right

    def _forget(self, subscription: Subscription) -> _Wait | None:
        wait = self._waits.pop(subscription, None)
        if wait is not None:
            pollers = self._waits_of[wait.execution_id]
            waits = pollers[wait.poller]
            waits.remove(wait)
            if not waits:
                del pollers[wait.poller]
                if not pollers:
                    del self._waits_of[wait.execution_id]
        return wait

    def _waits_on(self, poller: object, execution_id: str) -> list[_Wait]:
        return self._waits_of.get(execution_id, {}).get(poller, [])

    async def poll(self, poller: Poller, execution_id: str, fetching: Awaitable[Lookup]) -> Lookup:
        return await self._around(
            "poll", fetching, lambda work: self._poll(poller, execution_id, work)
        )

    async def _poll(self, poller: Poller, execution_id: str, fetching: Awaitable[Lookup]) -> Lookup:
        waits = self._waits_on(poller, execution_id)
        # A poll task runs in a context of its own (Poller._start): without a wait to
        # belong to, its span starts a trace.
        parent = trace.set_span_in_context(waits[0].span) if waits else otel_context.Context()
        links = [Link(wait.span.get_span_context()) for wait in waits[1:]]
        attached = otel_context.attach(parent)
        token = _POLL.set(_Poll(execution_id, links))
        try:
            lookup = await fetching
        except Exception as error:
            self._polls.add(1, {"error.type": error_type(error)})
            for wait in self._waits_on(poller, execution_id):
                wait.polls += 1
            raise
        finally:
            _POLL.reset(token)
            otel_context.detach(attached)
        self._polls.add(1)
        status = lookup.execution.status
        for wait in self._waits_on(poller, execution_id):
            wait.polls += 1
            wait.saw(status)
        return lookup

    def close(self) -> None:
        """End the spans of waits in progress: once off, their end is not seen."""
        for subscription in list(self._waits):
            wait = self._forget(subscription)
            if wait is None:  # pragma: no cover - one loop's waits: none ends in between
                continue
            try:  # each wait on its own: one that fails leaves the others to end
                self._active_waits.add(-1)
                wait.span.set_attribute("aiotlink.wait.polls", wait.polls)
                wait.span.end()
            except Exception as error:
                _broken("close", error)

    # Runs, downloads and webhook verifications

    async def operation(
        self,
        kind: str,
        running: Coroutine[Any, Any, T],
        arguments: tuple[Any, ...],
        keywords: Mapping[str, Any],
    ) -> T:
        return await self._around(
            kind, running, lambda work: self._operation(kind, work, arguments, keywords)
        )

    async def _operation(
        self,
        kind: str,
        running: Awaitable[T],
        arguments: tuple[Any, ...],
        keywords: Mapping[str, Any],
    ) -> T:
        subject = arguments[1] if len(arguments) > 1 else None
        if kind == "run":
            subject = subject if subject is not None else keywords.get("workflow_definition_id")
            attributes: Attributes = {"aiotlink.workflow.definition_id": str(subject)}
        elif kind == "download":
            subject = subject if subject is not None else keywords.get("execution_id")
            attributes = {EXECUTION_ID: str(subject)}
        else:
            attributes = {}
        name = {"run": "aiotlink.run", "download": "aiotlink.download"}.get(
            kind, "aiotlink.webhook.verify"
        )
        download, key = _Download(), ["unknown"]
        tokens = (
            _DOWNLOAD.set(download if kind == "download" else None),
            _CALL.set(_Call("GET", "/workflows/{id}/result") if kind == "download" else None),
            _KEY.set(key),
        )
        try:
            with self._tracer.start_as_current_span(
                name,
                attributes=attributes,
                record_exception=False,
                set_status_on_exception=False,
            ) as span:
                try:
                    result = await running
                except BaseException as error:
                    self._operation_failed(kind, span, error, download, key[0])
                    raise
                self._operation_done(kind, span, result, download, key[0])
                return result
        finally:
            _KEY.reset(tokens[2])
            _CALL.reset(tokens[1])
            _DOWNLOAD.reset(tokens[0])

    def _operation_done(
        self, kind: str, span: Span, result: object, download: _Download, key: str
    ) -> None:
        if isinstance(result, RunResult):
            span.set_attribute(EXECUTION_ID, str(result.execution.id))
            span.set_attribute(STATUS, result.execution.status.value)
            span.set_attribute(OUTCOME, status_outcome(result.execution.status))
        elif isinstance(result, DownloadedResult | Streamed):
            span.set_attributes(
                {
                    "aiotlink.download.bytes": result.size,
                    "aiotlink.download.redirected": result.redirected,
                    "aiotlink.download.resumes": download.resumes,
                    "aiotlink.download.url_refreshes": download.refreshes,
                }
            )
            self._download_bytes.add(
                result.size, {"aiotlink.download.redirected": result.redirected}
            )
        elif isinstance(result, WebhookEvent):
            if result.execution_id is not None:
                span.set_attribute(EXECUTION_ID, str(result.execution_id))
            self._verified(span, "verified", key)

    def _operation_failed(
        self, kind: str, span: Span, error: BaseException, download: _Download, key: str
    ) -> None:
        failed(span, error)
        if kind == "run":
            span.set_attribute(OUTCOME, outcome_of(error))
            execution = getattr(error, "execution", None)
            if isinstance(error, WorkflowFailedError | WaitTimeoutError) and execution:
                span.set_attribute(EXECUTION_ID, str(execution.id))
                span.set_attribute(STATUS, execution.status.value)
        elif kind == "download":
            span.set_attribute("aiotlink.download.resumes", download.resumes)
            span.set_attribute("aiotlink.download.url_refreshes", download.refreshes)
        elif not _cancelled(error):
            self._verified(span, "rejected", key)

    def _verified(self, span: Span, outcome: str, key: str) -> None:
        span.set_attribute(OUTCOME, outcome)
        span.set_attribute("aiotlink.webhook.key", key)
        self._verifications.add(1, {OUTCOME: outcome, "aiotlink.webhook.key": key})

    @_quietly
    def url_refreshed(self) -> None:
        download = _DOWNLOAD.get()
        if download is not None:
            download.refreshes += 1
        trace.get_current_span().add_event("aiotlink.url_refresh")

    @_quietly
    def webhook_key(self, *, cached: bool) -> None:
        key = _KEY.get()
        if key is not None:
            key[0] = "cached" if cached else "fetched"

    @_quietly
    def nudged(self, execution_id: str, status: WorkflowStatus | None, woke: bool) -> None:
        attributes: Attributes = {EXECUTION_ID: execution_id, "aiotlink.nudge.woke": woke}
        if status is not None:
            attributes[STATUS] = status.value
        # Copies: a nudge may come from another thread while the loop's waits change.
        pollers = list(self._waits_of.get(execution_id, {}).values())
        links = [Link(wait.span.get_span_context()) for waits in pollers for wait in list(waits)]
        self._tracer.start_span("aiotlink.nudge", links=links, attributes=attributes).end()

    # Durable following: a job's span linked to the trace that asked for it

    def inject(self) -> dict[str, str]:
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier)  # reads the context; no processor
        return carrier

    @contextlib.contextmanager
    def following(self, execution_id: str, carrier: Mapping[str, str]) -> Iterator[None]:
        """The job's span: ended by its error's type only, never its text, as every span."""
        try:
            origin = trace.get_current_span(
                TraceContextTextMapPropagator().extract(dict(carrier))
            ).get_span_context()
            links = [Link(origin)] if origin.is_valid else []
            span = self._tracer.start_span(
                "aiotlink.follow", links=links, attributes={EXECUTION_ID: execution_id}
            )
            attached = otel_context.attach(trace.set_span_in_context(span))
        except Exception as error:
            _broken("following", error)
            yield
            return
        try:
            yield
        except BaseException as error:
            failed(span, error)
            raise
        finally:
            otel_context.detach(attached)
            try:
                span.end()
            except Exception as error:
                _broken("following", error)
