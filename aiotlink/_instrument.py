"""Where observability plugs in: hooks that cost one global read while nothing listens.

:data:`current` is ``None`` until ``aiotlink.otel.instrument()`` sets it, and back to
``None`` after ``uninstrument()``. Each concern has one call site that reads it and
does nothing more when it is ``None``, so the client pays for tracing only when
tracing is on (benchmarks/RESULTS.md, "Observability when off")::

    API call      Requester._retrying        the call, and each HTTP attempt (send)
    retry sleep   _retry (log_retry)          an event on the call's span
    wait, watch   Poller.subscribe/unsubscribe, and each poll (Poller._poll_once)
    run           Workflows.run (@observed)
    download      Workflows.download_result, and stream_result's task (_download_to),
                  both @observed; their attempts and URL refreshes
    webhooks      Webhooks.verify (@observed), the key lookup; Requester.nudge

Nothing here imports OpenTelemetry: the hooks are implemented in ``aiotlink.otel``.
Durable following and the CLI (``_cli.main`` turns ``aiotlink.otel`` on with the global
providers) carry the same spans by calling the client as usual,
and a job that follows an execution for someone else links to that someone's trace
with :func:`trace_context` (when the job is made) and :func:`following` (when it runs).
A new path that streams with ``Requester.stream`` gets its attempt spans by awaiting
the stream through ``hook.stream_attempt``, as ``Downloader._read_once`` does.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, ParamSpec, Protocol, TypeVar

if TYPE_CHECKING:
    import aiohttp

    from ._models import WorkflowStatus
    from ._polling import Lookup, Poller, Subscription
    from ._transport import Request, Response

P = ParamSpec("P")
T = TypeVar("T")


class Hooks(Protocol):
    """What an instrumentation implements; every method is called only while it is on.

    No method may raise an error of its own (the call sites do not guard them, to cost
    nothing more): ``aiotlink.otel`` logs any, and goes on with the client's work.
    """

    async def call(self, request: Request, calling: Awaitable[Response]) -> Response:
        """Await ``calling``, one API call with its retries, inside the call's span."""

    async def send(
        self, session: aiohttp.ClientSession, request: Request, attempt_number: int
    ) -> Response:
        """One HTTP attempt of a call (``_transport.send``), inside the attempt's span."""

    def retry(self, delay: float, failed_attempt: int, error: BaseException | None) -> None:
        """A retry will come after ``delay`` seconds: attempt ``failed_attempt`` failed."""

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
        """Await one streamed GET of a download (``Requester.stream``), inside its span.

        ``url`` has its signatures masked; ``resumed``: it asks for a ``Range``.
        """

    def responded(self, status: int) -> None:
        """The streamed GET in progress got an answer with ``status``."""

    def url_refreshed(self) -> None:
        """The download in progress asks the API for a fresh pre-signed URL."""

    def wait_started(self, subscription: Subscription, last_status: WorkflowStatus | None) -> None:
        """A wait or watch began following ``subscription.execution_id``.

        Called once the subscription is in place and its poll started, and
        ``wait_ended`` once it is gone: an error of either leaves the poller whole.
        """

    def wait_ended(self, subscription: Subscription, error: BaseException | None) -> None:
        """That wait stopped following: ended by ``error``, a terminal status, or its caller."""

    async def poll(self, poller: Poller, execution_id: str, fetching: Awaitable[Lookup]) -> Lookup:
        """Await one shared poll of ``execution_id`` by ``poller`` (a :class:`~._polling.Lookup`).

        It serves the waits whose ``subscription.poller`` is ``poller``, no others.
        """

    async def operation(
        self,
        kind: str,
        running: Coroutine[Any, Any, T],
        arguments: tuple[Any, ...],
        keywords: Mapping[str, Any],
    ) -> T:
        """Await ``running``, a call of the public method that :func:`observed` marks."""

    def webhook_key(self, *, cached: bool) -> None:
        """The verification in progress found its key cached, or is fetching it."""

    def nudged(self, execution_id: str, status: WorkflowStatus | None, woke: bool) -> None:
        """``client.workflows.nudge`` ran; ``woke``: some wait was on the execution."""

    def inject(self) -> dict[str, str]:
        """The current trace context as W3C Trace Context fields."""

    def following(
        self, execution_id: str, carrier: Mapping[str, str]
    ) -> AbstractContextManager[None]:
        """A span for following ``execution_id`` on behalf of the trace in ``carrier``."""


# The instrumentation that is on, or None. Set only by aiotlink.otel.
current: Hooks | None = None


def observed(
    kind: str,
) -> Callable[[Callable[P, Coroutine[Any, Any, T]]], Callable[P, Coroutine[Any, Any, T]]]:
    """Mark a public coroutine method as one operation with a span (``run``, ...).

    Off, the mark costs one coroutine frame per call: for operations that last
    seconds (a run, a download, a webhook's verification), never for ``find``.
    """

    def mark(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
        @functools.wraps(method)
        async def run(*arguments: P.args, **keywords: P.kwargs) -> T:
            hook = current
            if hook is None:
                return await method(*arguments, **keywords)
            return await hook.operation(kind, method(*arguments, **keywords), arguments, keywords)

        return run

    return mark


def trace_context() -> dict[str, str]:
    """The caller's trace context (W3C ``traceparent``/``tracestate``), to keep with a job.

    ``{}`` while tracing is off. Store it in the job's metadata when the job is made,
    and hand it to :func:`following` when the job runs.
    """
    hook = current
    return {} if hook is None else hook.inject()


def following(execution_id: str, carrier: Mapping[str, str] | None) -> AbstractContextManager[None]:
    """Around a job that follows ``execution_id``: its span, linked to ``carrier``'s trace.

    Everything the job does inside (waits, polls, calls) is a child of that span. A
    ``carrier`` that is ``None``, empty or unreadable gives the span no link; tracing
    off gives nothing at all.
    """
    hook = current
    if hook is None:
        return contextlib.nullcontext()
    return hook.following(execution_id, carrier or {})
