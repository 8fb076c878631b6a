"""The worker side: the sweep job, the client per worker, the outcome.

A sweep (the arq job ``aiotlink_sweep``, one shard of one queue) claims the members of
its shard that are due, a batch at a time (aiotlink/arq/_state.py). For a follow it
looks the execution up once (through the client's request layer, with its retries)
and either schedules the next poll, by the schedule of ``aiotlink._polling`` (the one
in-process waits use), or ends the follow, which makes its outcome due for delivery.
For a delivery it runs ``on_terminal``. Every lookup and handler of a batch runs at
once; their outcomes go back to Redis in one script. Nothing waits between polls: a
follow is a member of a sorted set until it is due again.
"""

from __future__ import annotations

import asyncio
import enum
import json
import logging
import math
import random
import time
import uuid
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
    BATCH,
    BEGIN_FIELDS,
    DEAD_LETTER_ORDER_KEY,
    DEAD_LETTERS_KEY,
    GENERATION_TTL_SECONDS,
    LEASE_MARGIN,
    MAX_DEAD_LETTERS,
    STAY_SECONDS,
    SWEEP_BUDGET,
    SWEEP_FUNCTION,
    armed_key,
    due_key,
    encode,
    parse_due_key,
    scripts,
    seconds,
    shard_args,
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
    poll_timeout: float
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
    ``functions`` (the ``on_terminal`` handlers among them, called by name) and the job
    of durable following (the sweep), and hooks that build one ``TransactionLinkClient`` per
    worker process at startup (``token`` ``None`` reads ``TRANSACTIONLINK_TOKEN`` there,
    ``base_url`` ``None`` reads ``TRANSACTIONLINK_BASE_URL``; ``timeout``,
    ``max_retries`` and ``connection_limit`` are the client's) and close it at
    shutdown, around your own ``on_startup``/``on_shutdown``. Nothing of the token
    goes to Redis.

    A lookup runs for ``poll_timeout`` seconds at most. A handler runs for
    ``handler_timeout`` seconds at most (its download included); one that raises or
    runs over is run again after ``retry_delay`` seconds, doubling up to
    ``max_retry_delay``, ``max_attempts`` times in all, and then recorded as a dead
    letter (``python -m aiotlink.arq list|replay|purge``). A claim that a worker
    never finished (killed, or cut off from Redis) is due again after that limit plus
    LEASE_MARGIN seconds, for any worker. At startup, a worker arms the sweeps of
    every due set in Redis (healing one that Redis lost).
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
        poll_timeout=poll_seconds,
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
        await _heal(ctx["redis"])
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
        # No results kept: a sweep's job id is never used again. arq's own retries of
        # a job run it again after a worker died; a sweep run again just claims what
        # is due then. Its timeout: its claiming budget, then its last batch's lookups
        # or handlers (each within its own limit), then the write-back.
        func(
            sweep,
            name=SWEEP_FUNCTION,
            timeout=SWEEP_BUDGET + max(poll_seconds, handler_seconds) + LEASE_MARGIN,
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


async def _heal(redis: ArqRedis) -> None:
    """Arm the sweep of every due set: one that Redis lost (with its worker) runs again."""
    run = scripts(redis)
    try:
        async for key in redis.scan_iter(match="aiotlink:due:*", count=1000, _type="ZSET"):
            parsed = parse_due_key(text(key))
            if parsed is not None:
                queue, shard = parsed
                await run.heal(
                    keys=[due_key(queue, shard), armed_key(queue, shard)],
                    args=[*shard_args(redis, queue, shard), repr(time.time())],
                )
    except RedisError as error:
        # Not fatal: the next follow or nudge of a member arms its sweep too.
        logger.warning("could not arm the sweeps of durable following at startup: %s", error)


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


# What a sweep writes back for one member: see WRITE_BACK in _state.py.
Written = list[str]


async def sweep(ctx: dict[str, Any], queue: str, shard: int) -> None:
    """Claim the due members of one shard and work them off (the job ``aiotlink_sweep``)."""
    state = _state(ctx)
    redis: ArqRedis = ctx["redis"]
    settings = state.settings
    began = time.monotonic()
    stayed = False
    while True:
        token = uuid.uuid4().hex
        now = time.time()
        try:
            earliest, claimed = await scripts(redis).claim(
                keys=[due_key(queue, shard), armed_key(queue, shard)],
                args=[
                    *shard_args(redis, queue, shard),
                    repr(now),
                    BATCH,
                    token,
                    repr(settings.poll_timeout + LEASE_MARGIN),
                    repr(settings.handler_timeout + LEASE_MARGIN),
                    ctx["job_id"],
                    "1" if stayed else "0",
                ],
            )
        except RedisError as error:
            # Nothing claimed: arq runs this sweep again (the armed one may be it).
            _retry_later(f"shard {shard} of {queue}", error)
        writer = _Writer(redis, queue, shard, token, text(earliest))
        tasks = [asyncio.create_task(_work(ctx, state, item, now, writer)) for item in claimed]
        try:
            failures = await asyncio.gather(*tasks, return_exceptions=True)
        except asyncio.CancelledError:
            # A shutdown or the job's timeout: each member records what it got to
            # (given back, a failed attempt, a poll to come) and writes it back.
            if tasks:
                await asyncio.wait(tasks)
            await asyncio.shield(writer.close())
            raise
        for failure in failures:
            if failure is not None:  # pragma: no cover - _work records every outcome itself (a bug)
                logger.error("a sweep of %s lost a member's outcome: %r", queue, failure)
        await writer.close()
        spent = time.monotonic() - began
        if len(claimed) == BATCH and spent < SWEEP_BUDGET:
            stayed = False
            continue  # more are due: on with them
        # Members due within STAY seconds: wait for them rather than end and have arq
        # start the job armed for them (its start path costs more than a batch's
        # claim). A sweep killed meanwhile leaves that job armed.
        wait = (float(writer.earliest) - time.time()) if writer.earliest else math.inf
        wait = max(wait, 0)
        if wait > STAY_SECONDS or spent + wait >= SWEEP_BUDGET:
            return
        await asyncio.sleep(wait)
        stayed = True


# Outcomes that come within this long (seconds) of each other are written back
# together: a batch costs a few round trips, not one per member.
FLUSH_DELAY = 0.02


class _Writer:
    """The write-backs of one claim: each outcome soon after it is known, coalesced.

    A poll's outcome waits up to FLUSH_DELAY for others; a delivery's goes at once
    (with those that came while a write-back was under way), so that a handler that has
    ended does not run again if its worker is killed before the rest of its batch ends
    (at-least-once, but not more often than that).
    """

    def __init__(self, redis: ArqRedis, queue: str, shard: int, token: str, earliest: str) -> None:
        self.redis, self.queue, self.shard, self.token = redis, queue, shard, token
        # When the shard's next member is due ('' none), as the last script saw it.
        self.earliest = earliest
        self.shard_args = shard_args(redis, queue, shard)
        self.pending: list[Written] = []
        self.scheduled = False
        self.flushes: set[asyncio.Task[None]] = set()
        self.lock = asyncio.Lock()

    def add(self, written: Written, *, at_once: bool = False) -> None:
        self.pending.append(written)
        if not self.scheduled or at_once:
            self.scheduled = True
            flush = asyncio.create_task(self._flush_soon(0 if at_once else FLUSH_DELAY))
            self.flushes.add(flush)
            flush.add_done_callback(self.flushes.discard)

    async def _flush_soon(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        await self.flush()

    async def flush(self) -> None:
        async with self.lock:
            taken, self.pending, self.scheduled = self.pending, [], False
            await _write_back(self, taken)

    async def close(self) -> None:
        """Write back everything recorded (waiting for the write-backs under way)."""
        await asyncio.gather(*self.flushes)
        await self.flush()


async def _work(
    ctx: dict[str, Any], state: _WorkerState, item: list[Any], now: float, writer: _Writer
) -> None:
    """Look up or deliver one claimed member; write back what came of it."""
    member, phase = text(item[0]), text(item[1])
    if phase == "deliver":
        writer.add(await _deliver(ctx, state, member, text(item[2])), at_once=True)
        return
    try:
        follow = _Follow(item[2])
    except (ValueError, TypeError, KeyError) as error:
        # A follow's state that does not decode (written by something else than these
        # scripts) is kept for an operator, not claimed again after every lease.
        fields = dict(zip(BEGIN_FIELDS, map(text, item[2] or ()), strict=False))
        writer.add(_undecodable(member, json.dumps(fields), error), at_once=True)
        return
    # A span for the poll (tracing on), linked to the trace that started the follow.
    with following(member, follow.trace):
        written = await _poll(state, member, follow, now)
    writer.add(written)


def _carrier(stored: str) -> dict[str, str] | None:
    """The trace context kept with a follow, or ``None`` ('' or unreadable: no link)."""
    try:
        carrier = json.loads(stored) if stored else None
    except ValueError:
        return None
    if not isinstance(carrier, dict):
        return None
    return {str(key): str(value) for key, value in carrier.items()}


async def _poll(state: _WorkerState, execution_id: str, follow: _Follow, started: float) -> Written:
    """One lookup of a followed execution, and what follows from its answer."""
    if follow.deadline is not None and started >= follow.deadline:
        last = follow.last_body or None
        return _end(execution_id, follow, OutcomeKind.TIMEOUT, body=last)
    try:
        async with asyncio.timeout(state.settings.poll_timeout):
            lookup = await state.client.workflows._find(execution_id)
    except TransactionLinkError as error:
        if not is_transient(error):
            return _end(execution_id, follow, OutcomeKind.ERROR, error=error)
        logger.warning("polling execution %s failed, will poll again: %s", execution_id, error)
        retry_after = error.retry_after if isinstance(error, APIError) else None
        return _next(execution_id, follow, started, changed=False, retry_after=retry_after)
    except (Exception, asyncio.CancelledError) as error:
        # Not an answer at all: over poll_timeout, a shutdown, a bug. The follow must
        # not stop here: the next poll comes as if this one had failed.
        logger.warning(
            "polling execution %s was interrupted (%s), will poll again",
            execution_id,
            type(error).__name__,
        )
        return _next(execution_id, follow, started, changed=False, retry_after=None)
    execution = lookup.execution
    if execution.is_terminal:
        return _end(execution_id, follow, OutcomeKind.TERMINAL, body=lookup.body.decode())
    changed = execution.status.value != follow.status
    return _next(
        execution_id,
        follow,
        started,
        changed=changed,
        retry_after=lookup.retry_after,
        status=execution.status.value if changed else "",
        body=lookup.body.decode() if changed else "",
    )


def _next(
    execution_id: str,
    follow: _Follow,
    started: float,
    *,
    changed: bool,
    retry_after: float | None,
    status: str = "",
    body: str = "",
) -> Written:
    """The next poll, by the schedule in-process waits use."""
    interval = interval_after(follow.schedule, follow.interval, changed=changed)
    due, not_before = next_poll(
        time.time(),
        interval,
        retry_after=retry_after,
        random_fraction=random.random(),
        started_at=started,
        nudged=False,
    )
    floor = nudge_floor(not_before, started)
    return [execution_id, "poll", repr(interval), repr(due), repr(floor), status, body]


def _retry_later(name: str, error: RedisError) -> NoReturn:
    """Redis failed us before anything was claimed: arq runs this very job again."""
    from arq.worker import Retry

    logger.warning("durable following, %s: Redis failed (%s), retrying", name, error)
    raise Retry(defer=1.0) from None


def _end(
    execution_id: str,
    follow: _Follow,
    kind: OutcomeKind,
    *,
    body: str | None = None,
    error: TransactionLinkError | None = None,
) -> Written:
    """The follow ended: its outcome, due for delivery."""
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
    return [execution_id, "end", encode(payload)]


# A write-back that Redis refuses is tried again this many times, after these delays
# (seconds): a Redis restart is ridden out; beyond that, the claims' leases expire.
WRITE_BACK_DELAYS = (0.2, 0.5, 1.0, 2.0, 4.0)


async def _write_back(writer: _Writer, written: list[Written]) -> None:
    """Write back outcomes of a batch in one script; arm the shard's next sweep."""
    if not written:
        return
    redis, queue, shard = writer.redis, writer.queue, writer.shard
    outcomes = json.dumps(written, separators=(",", ":"))
    for delay in (*WRITE_BACK_DELAYS, None):
        try:
            earliest, dropped = await scripts(redis).write_back(
                keys=[
                    due_key(queue, shard),
                    armed_key(queue, shard),
                    DEAD_LETTERS_KEY,
                    DEAD_LETTER_ORDER_KEY,
                ],
                args=[
                    *writer.shard_args,
                    repr(time.time()),
                    writer.token,
                    outcomes,
                    GENERATION_TTL_SECONDS,
                    MAX_DEAD_LETTERS,
                ],
            )
            writer.earliest = text(earliest)
            break
        except RedisError as error:
            if delay is None:
                logger.error(
                    "durable following, shard %d of %s: Redis failed (%s); the batch's %d"
                    " members are due again when their claims expire",
                    shard,
                    queue,
                    error,
                    len(written),
                )
                return
            logger.warning(
                "durable following, shard %d of %s: Redis failed (%s), writing back again",
                shard,
                queue,
                error,
            )
            await asyncio.sleep(delay)
    for old in dropped:
        logger.warning(
            "more than %d dead letters: dropped the oldest, %s", MAX_DEAD_LETTERS, text(old)
        )


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


async def _deliver(ctx: dict[str, Any], state: _WorkerState, member: str, encoded: str) -> Written:
    """Run a follow's ``on_terminal`` with its outcome."""
    began = time.monotonic()
    try:
        payload: dict[str, Any] = json.loads(encoded)
        outcome = _outcome(payload)
    except (ValueError, KeyError, TypeError, TransactionLinkError) as error:
        # A payload that does not decode is kept for an operator, never dropped.
        return _undecodable(member, encoded, error)
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
            # Cancelled before its time was up: a shutdown (SIGTERM, a deploy), not the
            # sweep's job timeout (which comes after handler_timeout). Given back, due
            # now, for any worker: it is not a failed attempt.
            return [member, "release"]
        # A handler that raised, ran over its time, or was cancelled by the sweep's job
        # timeout: a failed attempt, run again later or recorded as a dead letter.
        return _failed(state, member, payload, error)
    logger.info("delivered the outcome of %s to %s", outcome.execution_id, payload["handler"])
    return [member, "done"]


def _failed(
    state: _WorkerState, member: str, payload: dict[str, Any], error: BaseException
) -> Written:
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
        return [member, "retry", encode(again), repr(time.time() + delay)]
    logger.error(
        "handler %s for %s failed %d times, recorded as a dead letter: %s",
        payload["handler"],
        payload["id"],
        attempt,
        reason,
    )
    letter = {**payload, "failed_at": time.time(), "reason": reason}
    return [member, "dead", f"{payload['id']}:{payload['gen']}", encode(letter)]


def _undecodable(member: str, encoded: str, error: Exception) -> Written:
    reason = f"undecodable payload: {type(error).__name__}"
    logger.error("the durable follow of %s: %s, recorded as a dead letter", member, reason)
    letter = {
        "id": "",
        "reason": reason,
        "failed_at": time.time(),
        # Capped: a dead letter is for an operator to read, not a second copy of a body.
        "raw": encoded[:RAW_LETTER_CHARS],
    }
    return [member, "dead", f"undecodable:{member}", encode(letter)]
