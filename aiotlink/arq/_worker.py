"""The worker side: the poll and delivery jobs, the client per worker, the outcome.

A poll is a short arq job: it marks its lookup in flight, looks the execution up once
(through the client's request layer, with its retries), and either schedules the next
poll, deferred by the schedule of ``aiotlink._polling`` (the one in-process waits use),
or ends the follow and queues the delivery of its outcome. Nothing waits between polls.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import attrs
from arq.worker import Function, func
from redis.exceptions import RedisError

from .. import TransactionLinkClient
from .._arguments import check_count, check_seconds, shown
from .._converter import decode_execution
from .._errors import APIError, TransactionLinkError
from .._instrument import following
from .._models import WorkflowExecution
from .._polling import PollSchedule, interval_after, is_transient, next_poll, nudge_floor
from .._transport import parse_json
from ._state import (
    BEGIN_FIELDS,
    DEAD_LETTER_ORDER_KEY,
    DEAD_LETTERS_KEY,
    DELIVER_FUNCTION,
    GENERATION_TTL_SECONDS,
    MAX_DEAD_LETTERS,
    POLL_FUNCTION,
    STATE_GRACE_SECONDS,
    encode,
    follow_key,
    job_payload,
    outcome_job_id,
    scripts,
    seconds,
    text,
)

if TYPE_CHECKING:
    from arq.connections import ArqRedis

logger = logging.getLogger("aiotlink")

CONTEXT_KEY = "aiotlink"
# An undecodable delivery payload is kept as a dead letter, this much of it.
RAW_LETTER_CHARS = 4096


class OutcomeKind(enum.Enum):
    """How a durable follow ended."""

    TERMINAL = "terminal"  # the execution reached a terminal status (see its status)
    TIMEOUT = "timeout"  # the follow's timeout passed first
    ERROR = "error"  # it could not be looked up: 401, 403, 404, a malformed answer


@attrs.frozen
class Outcome:
    """What ``on_terminal`` receives: how the follow of one execution ended.

    ``execution`` is the terminal execution (``TERMINAL``), the last one seen
    (``TIMEOUT``; ``None`` before any answer) or ``None`` (``ERROR``, with ``error``
    the error's text and ``error_status`` its HTTP status, if any). ``key`` is the
    same for every run of the handler for this follow: handlers run at least once, so
    use it to de-duplicate. ``attempt`` counts the runs, from 1. ``result_path`` is
    the downloaded result of a completed execution when the follow asked for one.
    """

    kind: OutcomeKind
    execution_id: str
    key: str
    attempt: int
    execution: WorkflowExecution | None = None
    error: str | None = None
    error_status: int | None = None
    result_path: Path | None = None


Handler = Callable[[dict[str, Any], Outcome], Awaitable[object]]


@attrs.frozen
class _Settings:
    handlers: dict[str, Handler]
    client_options: dict[str, Any]
    handler_timeout: float
    max_attempts: int
    retry_delay: float
    max_retry_delay: float
    on_startup: Callable[[dict[str, Any]], Awaitable[object]] | None
    on_shutdown: Callable[[dict[str, Any]], Awaitable[object]] | None


@attrs.define
class _WorkerState:
    settings: _Settings
    client: TransactionLinkClient


def _function_name(function: object) -> tuple[str, Handler]:
    if isinstance(function, Function):
        return function.name, function.coroutine
    if not callable(function):
        raise TypeError(
            f"functions must be arq functions or coroutine functions, got {shown(function)}"
        )
    name = getattr(function, "__qualname__", None)
    if not isinstance(name, str):
        raise TypeError(f"function {shown(function)} has no name; wrap it in arq.func(..., name=)")
    return name, function


def configure(
    functions: Sequence[Function | Callable[..., Awaitable[object]]] = (),
    *,
    token: str | None = None,
    base_url: str | None = None,
    timeout: float | None = 30.0,
    max_retries: int = 3,
    connection_limit: int = 100,
    poll_timeout: float = 120.0,
    handler_timeout: float = 300.0,
    max_attempts: int = 5,
    retry_delay: float = 1.0,
    max_retry_delay: float = 300.0,
    on_startup: Callable[[dict[str, Any]], Awaitable[object]] | None = None,
    on_shutdown: Callable[[dict[str, Any]], Awaitable[object]] | None = None,
) -> dict[str, Any]:
    """Settings for an arq worker that follows executions: merge them into ``WorkerSettings``.

    Returns ``{"functions": [...], "on_startup": ..., "on_shutdown": ...}``: your
    ``functions`` (the ``on_terminal`` handlers among them, called by name) and the two
    jobs of durable following, and hooks that build one ``TransactionLinkClient`` per
    worker process at startup (``token`` ``None`` reads ``TRANSACTIONLINK_TOKEN`` there,
    ``base_url`` ``None`` reads ``TRANSACTIONLINK_BASE_URL``; ``timeout``,
    ``max_retries`` and ``connection_limit`` are the client's) and close it at
    shutdown, around your own ``on_startup``/``on_shutdown``. Nothing of the token
    goes to Redis.

    A poll job runs for ``poll_timeout`` seconds at most. A handler runs for
    ``handler_timeout`` seconds at most (its download included); one that raises or
    runs over is run again after ``retry_delay`` seconds, doubling up to
    ``max_retry_delay``, ``max_attempts`` times in all, and then recorded as a dead
    letter (``python -m aiotlink.arq list|replay|purge``).
    """
    handlers: dict[str, Handler] = {}
    for function in functions:
        name, coroutine = _function_name(function)
        handlers[name] = coroutine
    poll_seconds = check_seconds("poll_timeout", poll_timeout)
    handler_seconds = check_seconds("handler_timeout", handler_timeout)
    assert poll_seconds is not None
    assert handler_seconds is not None
    first_delay = check_seconds("retry_delay", retry_delay)
    last_delay = check_seconds("max_retry_delay", max_retry_delay)
    assert first_delay is not None
    assert last_delay is not None
    settings = _Settings(
        handlers=handlers,
        client_options={
            "token": token,
            "base_url": base_url,
            "timeout": timeout,
            "max_retries": max_retries,
            "connection_limit": connection_limit,
        },
        handler_timeout=handler_seconds,
        max_attempts=check_count("max_attempts", max_attempts, minimum=1),
        retry_delay=first_delay,
        max_retry_delay=max(first_delay, last_delay),
        on_startup=on_startup,
        on_shutdown=on_shutdown,
    )
    # The client is checked here too, so that a missing token fails where it is set up.
    # The process that calls configure may not be a worker: it is closed at once.
    TransactionLinkClient(**settings.client_options)

    async def startup(ctx: dict[str, Any]) -> None:
        ctx[CONTEXT_KEY] = _WorkerState(settings, TransactionLinkClient(**settings.client_options))
        if settings.on_startup is not None:
            await settings.on_startup(ctx)

    async def shutdown(ctx: dict[str, Any]) -> None:
        try:
            if settings.on_shutdown is not None:
                await settings.on_shutdown(ctx)
        finally:
            state = ctx.pop(CONTEXT_KEY, None)
            if state is not None:
                await state.client.close()

    own = [
        # No results kept: a poll's job id is never used again, and the outcome's
        # includes the follow's generation (a later follow of the id delivers again).
        # arq's own retries of a job re-run it after a worker died (at-least-once);
        # the fence makes a stale poll a no-op, so they may be many.
        func(poll, name=POLL_FUNCTION, timeout=poll_seconds, keep_result=0, max_tries=1000),
        func(
            deliver,
            name=DELIVER_FUNCTION,
            timeout=handler_seconds + 2,  # its own bookkeeping after the handler
            keep_result=0,
            max_tries=1000,
        ),
    ]
    return {"functions": [*functions, *own], "on_startup": startup, "on_shutdown": shutdown}


def _state(ctx: dict[str, Any]) -> _WorkerState:
    state = ctx.get(CONTEXT_KEY)
    if not isinstance(state, _WorkerState):
        raise RuntimeError(
            "the worker was not set up by aiotlink.arq.configure: use its on_startup"
        )
    return state


def _cancelled_from_outside() -> bool:
    """Whether this task is being cancelled (a job timeout, a shutdown), not just raising it."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class _Follow:
    """One poll's view of its follow (the hash's BEGIN_FIELDS)."""

    def __init__(self, row: list[bytes | str | None]) -> None:
        values = dict(zip(BEGIN_FIELDS, (text(value) for value in row), strict=False))
        self.generation = int(values["gen"])
        self.handler = values["handler"]
        self.queue = values["queue"]
        self.download = values["download"]
        self.schedule = PollSchedule(
            float(values["pi"]), float(values["mpi"]), float(values["factor"])
        )
        self.interval = float(values["interval"])
        self.deadline = seconds(values["deadline"])
        self.timeout = seconds(values["timeout"])
        self.status = values["status"]
        self.trace = _carrier(values["trace"])
        self.last_body = text(row[len(BEGIN_FIELDS)]) if len(row) > len(BEGIN_FIELDS) else ""


async def poll(ctx: dict[str, Any], execution_id: str) -> None:
    """One poll of a durable follow (the job ``aiotlink_poll``)."""
    state = _state(ctx)
    redis: ArqRedis = ctx["redis"]
    job_id: str = ctx["job_id"]
    run = scripts(redis)
    started = time.time()
    try:
        row = await run.begin(keys=[follow_key(execution_id)], args=[job_id, repr(started)])
    except RedisError as error:
        # Not a drop: the follow names this job, so arq must run it again.
        _retry_later(execution_id, error)
    if row is None:
        return  # stale: the follow ended, or another run of this poll got there first
    follow = _Follow(row)
    # A span for the poll (tracing on), linked to the trace that started the follow.
    with following(execution_id, follow.trace):
        await _poll_followed(ctx, state, execution_id, follow, started)


def _carrier(stored: str) -> dict[str, str] | None:
    """The trace context kept with a follow, or ``None`` ('' or unreadable: no link)."""
    try:
        carrier = json.loads(stored) if stored else None
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    return {str(key): str(value) for key, value in carrier.items()}


async def _poll_followed(
    ctx: dict[str, Any], state: _WorkerState, execution_id: str, follow: _Follow, started: float
) -> None:
    """The lookup of a poll that is the follow's, and what follows from its answer."""
    if follow.deadline is not None and started >= follow.deadline:
        last = follow.last_body or None
        await _end(ctx, execution_id, follow, OutcomeKind.TIMEOUT, body=last)
        return
    try:
        lookup = await state.client.workflows._find(execution_id)
    except TransactionLinkError as error:
        if not is_transient(error):
            await _end(ctx, execution_id, follow, OutcomeKind.ERROR, error=error)
            return
        logger.warning("polling execution %s failed, will poll again: %s", execution_id, error)
        retry_after = error.retry_after if isinstance(error, APIError) else None
        await _reschedule(
            ctx, execution_id, follow, started, changed=False, retry_after=retry_after
        )
        return
    except (Exception, asyncio.CancelledError) as error:
        # Not an answer at all: the job's timeout (arq cancels it), a bug. The follow
        # must not stop here: the next poll comes as if this one had failed.
        logger.warning(
            "polling execution %s was interrupted (%s), will poll again",
            execution_id,
            type(error).__name__,
        )
        await asyncio.shield(
            _reschedule(ctx, execution_id, follow, started, changed=False, retry_after=None)
        )
        if isinstance(error, asyncio.CancelledError) and _cancelled_from_outside():
            raise
        return
    execution = lookup.execution
    if execution.is_terminal:
        await _end(ctx, execution_id, follow, OutcomeKind.TERMINAL, body=lookup.body.decode())
        return
    changed = execution.status.value != follow.status
    await _reschedule(
        ctx,
        execution_id,
        follow,
        started,
        changed=changed,
        retry_after=lookup.retry_after,
        status=execution.status.value if changed else "",
        body=lookup.body.decode() if changed else "",
    )


async def _reschedule(
    ctx: dict[str, Any],
    execution_id: str,
    follow: _Follow,
    started: float,
    *,
    changed: bool,
    retry_after: float | None,
    status: str = "",
    body: str = "",
) -> None:
    redis: ArqRedis = ctx["redis"]
    interval = interval_after(follow.schedule, follow.interval, changed=changed)
    now = time.time()
    due, not_before = next_poll(
        now,
        interval,
        retry_after=retry_after,
        random_fraction=random.random(),
        started_at=started,
        nudged=False,
    )
    try:
        await scripts(redis).reschedule(
            keys=[follow_key(execution_id)],
            args=[
                ctx["job_id"],
                repr(now),
                repr(interval),
                repr(due),
                repr(nudge_floor(not_before, started)),
                status,
                body,
                job_payload(redis, POLL_FUNCTION, execution_id),
                STATE_GRACE_SECONDS,
                execution_id,
                GENERATION_TTL_SECONDS,
            ],
        )
    except RedisError as error:
        _retry_later(execution_id, error)


def _retry_later(execution_id: str, error: RedisError) -> NoReturn:
    """Redis failed us mid-poll: arq runs this very job again (the fence still passes it)."""
    from arq.worker import Retry

    logger.warning("durable follow of %s: Redis failed (%s), retrying", execution_id, error)
    raise Retry(defer=1.0) from None


async def _end(
    ctx: dict[str, Any],
    execution_id: str,
    follow: _Follow,
    kind: OutcomeKind,
    *,
    body: str | None = None,
    error: TransactionLinkError | None = None,
) -> None:
    redis: ArqRedis = ctx["redis"]
    payload = {
        "id": execution_id,
        "gen": follow.generation,
        "kind": kind.value,
        "handler": follow.handler,
        "queue": follow.queue,
        "download": follow.download,
        "attempt": 1,
        "body": body,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "error_status": error.status if isinstance(error, APIError) else None,
    }
    if kind is OutcomeKind.ERROR:
        logger.warning("durable follow of %s ended: %s", execution_id, payload["error"])
    try:
        await scripts(redis).end(
            keys=[follow_key(execution_id)],
            args=[
                ctx["job_id"],
                outcome_job_id(execution_id, follow.generation, 1),
                job_payload(redis, DELIVER_FUNCTION, encode(payload)),
                repr(time.time()),
                STATE_GRACE_SECONDS,
            ],
        )
    except RedisError as failure:
        _retry_later(execution_id, failure)


def _outcome(payload: dict[str, Any]) -> Outcome:
    body = payload.get("body")
    return Outcome(
        kind=OutcomeKind(payload["kind"]),
        execution_id=payload["id"],
        key=f"{payload['id']}:{payload['gen']}",
        attempt=payload["attempt"],
        execution=None if not body else decode_execution(parse_json(body.encode())),
        error=payload.get("error"),
        error_status=payload.get("error_status"),
    )


async def deliver(ctx: dict[str, Any], encoded: str) -> None:
    """Run a follow's ``on_terminal`` with its outcome (the job ``aiotlink_deliver``)."""
    state = _state(ctx)
    began = time.monotonic()
    try:
        payload: dict[str, Any] = json.loads(encoded)
        outcome = _outcome(payload)
    except (ValueError, KeyError, TypeError, TransactionLinkError) as error:
        # A payload that does not decode is kept for an operator, never dropped.
        await _undecodable(ctx, encoded, error)
        return
    try:
        handler = state.settings.handlers.get(payload["handler"])
        if handler is None:
            raise LookupError(
                f"no function {payload['handler']!r} among those given to aiotlink.arq.configure"
            )
        async with asyncio.timeout(state.settings.handler_timeout):
            execution = outcome.execution
            if (
                payload["download"]
                and execution is not None
                and execution.status.value == "COMPLETED"
            ):
                path = Path(payload["download"]) / f"{outcome.execution_id}.json"
                await state.client.workflows.download_result(outcome.execution_id, path)
                outcome = attrs.evolve(outcome, result_path=path)
            await handler(ctx, outcome)
    except (Exception, asyncio.CancelledError) as error:
        if (
            isinstance(error, asyncio.CancelledError)
            and _cancelled_from_outside()
            and time.monotonic() - began < state.settings.handler_timeout
        ):
            # Cancelled before its time was up: a shutdown (SIGTERM, a deploy), not
            # arq's job timeout (which comes after handler_timeout). arq runs this same
            # job again; it is not a failed attempt.
            raise
        # A handler that raised, ran over its time, or was cancelled by arq's job
        # timeout: a failed attempt, run again later or recorded as a dead letter.
        await asyncio.shield(_failed(ctx, state, payload, error))
        if isinstance(error, asyncio.CancelledError) and _cancelled_from_outside():
            raise
        return
    logger.info("delivered the outcome of %s to %s", outcome.execution_id, payload["handler"])


async def _failed(
    ctx: dict[str, Any], state: _WorkerState, payload: dict[str, Any], error: BaseException
) -> None:
    redis: ArqRedis = ctx["redis"]
    settings = state.settings
    attempt = int(payload["attempt"])
    reason = "timed out" if isinstance(error, TimeoutError) else f"{type(error).__name__}: {error}"
    if attempt < settings.max_attempts:
        delay = min(settings.retry_delay * 2 ** (attempt - 1), settings.max_retry_delay)
        logger.warning(
            "handler %s for %s failed (attempt %d of %d), again in %g s: %s",
            payload["handler"],
            payload["id"],
            attempt,
            settings.max_attempts,
            delay,
            reason,
        )
        again = {**payload, "attempt": attempt + 1}
        try:
            await redis.enqueue_job(
                DELIVER_FUNCTION,
                encode(again),
                _job_id=outcome_job_id(payload["id"], payload["gen"], attempt + 1),
                _queue_name=payload["queue"],
                _defer_by=delay,
            )
        except RedisError as failure:
            _retry_later(payload["id"], failure)
        return
    logger.error(
        "handler %s for %s failed %d times, recorded as a dead letter: %s",
        payload["handler"],
        payload["id"],
        attempt,
        reason,
    )
    letter = {**payload, "failed_at": time.time(), "reason": reason}
    await _dead_letter(redis, f"{payload['id']}:{payload['gen']}", letter, payload["id"])


async def _undecodable(ctx: dict[str, Any], encoded: object, error: Exception) -> None:
    raw = encoded if isinstance(encoded, str) else repr(encoded)
    reason = f"undecodable payload: {type(error).__name__}"
    logger.error("delivery job %s: %s, recorded as a dead letter", ctx["job_id"], reason)
    letter = {
        "id": "",
        "reason": reason,
        "failed_at": time.time(),
        # Capped: a dead letter is for an operator to read, not a second copy of a body.
        "raw": raw[:RAW_LETTER_CHARS],
    }
    await _dead_letter(ctx["redis"], f"undecodable:{ctx['job_id']}", letter, ctx["job_id"])


async def _dead_letter(redis: ArqRedis, entry: str, letter: dict[str, Any], name: str) -> None:
    """Record a dead letter; Redis failing here makes arq run the delivery job again."""
    try:
        dropped = await scripts(redis).dead_letter(
            keys=[DEAD_LETTERS_KEY, DEAD_LETTER_ORDER_KEY],
            args=[entry, encode(letter), repr(time.time()), MAX_DEAD_LETTERS],
        )
    except RedisError as failure:
        _retry_later(name, failure)
    for old in dropped:
        logger.warning(
            "more than %d dead letters: dropped the oldest, %s", MAX_DEAD_LETTERS, text(old)
        )
