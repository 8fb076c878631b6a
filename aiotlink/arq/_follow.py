"""``follow`` and ``nudge``: what a web handler or a webhook receiver calls."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, cast
from uuid import UUID

from .._arguments import check_execution_id, check_seconds, check_text, shown
from .._instrument import trace_context
from .._models import WorkflowStatus
from .._workflows import poll_schedule
from ._state import (
    GENERATION_TTL_SECONDS,
    armed_key,
    due_key,
    follow_key,
    generation_key,
    per_client,
    scripts,
    shard_args,
    shard_of,
    text,
)

if TYPE_CHECKING:
    from arq.connections import ArqRedis

logger = logging.getLogger("aiotlink")

# A webhook receiver waits this long at most for Redis to take a nudge: the answer to
# the provider must not wait on a slow Redis, and the poll is the safety net.
NUDGE_TIMEOUT = 0.5


def check_redis(redis: object) -> ArqRedis:
    from arq.connections import ArqRedis

    if not isinstance(redis, ArqRedis):
        raise TypeError(f"redis must be an arq ArqRedis pool (arq.create_pool), got {shown(redis)}")
    return redis


# The most follow() calls sent in one pipeline.
MAX_PIPELINE = 1000


class _Batch:
    """``follow()`` calls made at once on one pool, sent together: one pipeline of scripts.

    A caller waits for its own script's answer (or error) as if it were sent alone, but
    a web process that hands over thousands of executions at once pays one round trip
    per batch, not per call (benchmarks/NOTES.md, "Durable following").
    """

    def __init__(self, pool: ArqRedis) -> None:
        self.pool = pool
        self.waiting: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        self.sender: asyncio.Task[None] | None = None

    async def run(self, keys: list[str], args: list[Any]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.waiting.append((keys, args, future))
        if self.sender is None:
            # Started after the calls already scheduled, which join this batch.
            self.sender = asyncio.create_task(self._send())
        return await future

    async def _send(self) -> None:
        taken: list[tuple[list[str], list[Any], asyncio.Future[Any]]] = []
        try:
            while self.waiting:
                taken, self.waiting = self.waiting[:MAX_PIPELINE], self.waiting[MAX_PIPELINE:]
                try:
                    async with self.pool.pipeline(transaction=False) as pipe:
                        for keys, args, _ in taken:
                            await scripts(self.pool).follow(keys=keys, args=args, client=pipe)
                        answers = await pipe.execute(raise_on_error=False)
                except Exception as error:  # no answers at all: each call fails with it
                    answers = [error] * len(taken)
                for (_, _, future), answer in zip(taken, answers, strict=True):
                    if future.done():  # its caller was cancelled
                        continue
                    if isinstance(answer, Exception):
                        future.set_exception(answer)
                    else:
                        future.set_result(answer)
                taken = []
        finally:
            self.sender = None
            # Cancelled itself (the loop closing): no caller waits for ever.
            for _, _, future in taken + self.waiting:
                future.cancel()
            self.waiting = []


_BATCHES: dict[int, tuple[Any, _Batch]] = {}


def _batch(pool: ArqRedis) -> _Batch:
    """The batch of ``pool``'s follow() calls, made once per pool."""
    return per_client(_BATCHES, pool, _Batch)


async def follow(
    redis: ArqRedis,
    execution_id: str | UUID,
    *,
    on_terminal: str,
    timeout: float | None = None,
    download_to: str | os.PathLike[str] | None = None,
    poll_interval: float = 1.0,
    max_poll_interval: float = 15.0,
    poll_factor: float = 1.5,
    queue_name: str | None = None,
) -> bool:
    """Follow ``execution_id`` durably until it ends; then arq runs ``on_terminal``.

    ``on_terminal`` names one of the worker's functions given to :func:`configure`; it
    is called with ``(ctx, outcome)``, an :class:`Outcome`, once the execution ends,
    ``timeout`` seconds pass, or it cannot be looked up. ``download_to`` is a directory
    (on the workers) where a completed execution's result is downloaded before the
    handler runs. The schedule is ``wait_for_completion``'s. Returns whether this call
    started the follow: following an execution that is followed already, from any
    process, changes nothing.

    Raises:
        ValueError: a malformed argument (before Redis is asked).
        TypeError: ``redis`` is not an ``ArqRedis``.
    """
    pool = check_redis(redis)
    key = check_execution_id(execution_id)
    handler = check_text("on_terminal", on_terminal)
    schedule = poll_schedule(poll_interval, max_poll_interval, poll_factor)
    seconds = check_seconds("timeout", timeout, allow_none=True)
    download = "" if download_to is None else os.fspath(download_to)
    if not isinstance(download, str) or "\0" in download:
        raise ValueError(f"download_to must be a directory path, got {shown(download_to)}")
    queue = pool.default_queue_name if queue_name is None else check_text("queue_name", queue_name)
    shard = shard_of(key)
    now = time.time()
    generation = await _batch(pool).run(
        [follow_key(key), generation_key(key), due_key(queue, shard), armed_key(queue, shard)],
        [
            *shard_args(pool, queue, shard),
            key,
            repr(now),
            handler,
            download,
            repr(schedule.poll_interval),
            repr(schedule.max_poll_interval),
            repr(schedule.factor),
            "" if seconds is None else repr(now + seconds),
            "" if seconds is None else repr(seconds),
            GENERATION_TTL_SECONDS,
            # The trace that asked (when traced): every poll's span links to it.
            json.dumps(carrier) if (carrier := trace_context()) else "",
        ],
    )
    started = int(generation) > 0
    if int(generation) < 0:
        logger.warning("the durable follow of %s had lost its due entry: due again now", key)
    if started:
        logger.info("following execution %s durably (generation %s)", key, generation)
    return started


async def nudge(
    redis: ArqRedis, execution_id: str | UUID, status: WorkflowStatus | str | None = None
) -> bool:
    """Make the durable follow of ``execution_id`` look it up now; whether it is followed.

    For a webhook or any other signal that the execution changed: the lookup decides,
    never the signal. A burst costs one extra lookup (nudges within NUDGE_MIN_GAP of
    the last lookup wait for that gap; the last ``Retry-After`` is honoured); an
    execution nobody follows costs nothing. ``status`` is what the signal announced:
    follows wait for the end only, so a status that is not terminal costs no lookup.
    The next poll then starts at the workers' next look at the queue (arq's
    ``poll_delay``).
    """
    pool = check_redis(redis)
    key = check_execution_id(execution_id)
    hint = None if status is None else WorkflowStatus(check_text("status", status))
    maybe_end = hint is None or hint.is_terminal
    # The follow's queue (its due set's) is in its hash: read first, checked again by
    # the script. redis-py types its commands as "an awaitable or the value".
    queue = text(await cast("Awaitable[bytes | None]", pool.hget(follow_key(key), "queue")))
    if not queue:
        return False  # nobody follows it: nothing at all
    shard = shard_of(key)
    followed = await scripts(pool).nudge(
        keys=[follow_key(key), due_key(queue, shard), armed_key(queue, shard)],
        args=[*shard_args(pool, queue, shard), key, repr(time.time()), "1" if maybe_end else "0"],
    )
    return bool(int(followed))


async def nudge_within(
    redis: ArqRedis, execution_id: str, status: WorkflowStatus | None, seconds: float
) -> None:
    """Nudge, giving up after ``seconds``: for receivers, which must answer promptly.

    Errors are logged, not raised: the follow's polls are the safety net.
    """
    try:
        async with asyncio.timeout(seconds):
            await nudge(redis, execution_id, status)
    except TimeoutError:
        logger.warning("nudging the durable follow of %s took over %g s", execution_id, seconds)
    except Exception:
        logger.exception("could not nudge the durable follow of %s", execution_id)
