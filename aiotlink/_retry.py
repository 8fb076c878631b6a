"""When and how long to retry a failed request: pure decisions, run by tenacity.

tenacity is an implementation detail and is imported nowhere else; the public knobs
are the client's ``max_retries`` and ``retry_backoff``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from functools import partial
from typing import Any, TypeVar

import attrs
import tenacity

from . import _instrument
from ._errors import APIConnectionError, APIError

T = TypeVar("T")

logger = logging.getLogger("aiotlink")

RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
# The most a Retry-After is honoured for, anywhere: a call's retry longer than this is
# not slept through (the caller gets the error, with the wait, and decides: a worker may
# prefer to requeue rather than hold a slot), and a wait's next poll comes no later
# than this after such a hint. README.md, "Retries".
MAX_RETRY_AFTER = 60.0
# A hint further out than this is read as this: an error's ``retry_after`` stays a
# plain, printable number whatever the server sends (a date in the year 99999999999).
RETRY_AFTER_CEILING = 86400.0
BACKOFF_BASE = 0.5  # seconds: the ceiling of the first retry's wait, doubling after
BACKOFF_CAP = 8.0  # seconds


@attrs.frozen
class RetryPolicy:
    """How many retries after the first attempt, and whether to sleep between them."""

    max_retries: int = 3
    backoff: bool = True


def parse_retry_after(value: str | None, *, now: datetime) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay-seconds or an HTTP date).

    ``None`` when the header is absent or unreadable; a date in the past gives 0; a
    hint beyond RETRY_AFTER_CEILING (a day) gives that. Never raises.
    """
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds) or seconds < 0:
            return None
        return min(seconds, RETRY_AFTER_CEILING)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError, IndexError):
        # OverflowError: a year beyond what datetime holds (99999999999).
        return None
    if when.tzinfo is None:  # "-0000" in an HTTP date means UTC
        when = when.replace(tzinfo=UTC)
    return min(max(0.0, (when - now).total_seconds()), RETRY_AFTER_CEILING)


def backoff_delay(retry_number: int, *, random_fraction: float) -> float:
    """Seconds before retry ``retry_number`` (1-based): exponential with full jitter.

    ``random_fraction`` in [0, 1) picks the point between 0 and the ceiling
    ``min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (retry_number - 1))``.
    """
    # The exponent stops growing long after the cap is reached: 2.0 ** 1024 overflows.
    ceiling = min(BACKOFF_CAP, BACKOFF_BASE * 2.0 ** min(retry_number - 1, 64))
    return random_fraction * ceiling


def retry_reason(error: BaseException, *, idempotent: bool) -> str | None:
    """Why the failed attempt may be retried, or ``None`` when it must not be.

    A request that is not idempotent (``initialise``) is retried only where the server
    provably did not process it: the connection was never established, or 429.
    ``asyncio.CancelledError`` and anything unexpected are never retried.
    """
    if isinstance(error, APIError):
        if error.status not in RETRYABLE_STATUSES:
            return None
        if error.retry_after is not None and error.retry_after > MAX_RETRY_AFTER:
            return None
        if idempotent or error.status == 429:
            return f"HTTP {error.status}"
        return None
    if isinstance(error, APIConnectionError) and (idempotent or not error.request_sent):
        return error.message
    return None


def wait_before_retry(error: BaseException, retry_number: int, *, random_fraction: float) -> float:
    """Seconds to wait: the server's ``Retry-After`` where it gave one, else backoff."""
    if isinstance(error, APIError) and error.retry_after is not None:
        return error.retry_after
    return backoff_delay(retry_number, random_fraction=random_fraction)


async def _no_sleep(_: float) -> None:
    # Still yield once, so a retry loop with sleeps turned off stays cancellable.
    await asyncio.sleep(0)


async def call_with_retries(
    attempt: Callable[..., Awaitable[T]],
    *arguments: Any,
    policy: RetryPolicy,
    idempotent: bool,
    description: str,
) -> T:
    """Await ``attempt(*arguments, attempt_number)`` until it succeeds or fails for good.

    It fails for good on an error not worth retrying, or once retries run out.
    ``attempt_number`` counts from 1. The last error is raised as it is; an
    :class:`APIConnectionError` (no answer) is told how many attempts failed and over
    how long, for its message. ``description`` (method and URL, signatures masked)
    goes into the log line of each retry.
    """
    started = time.monotonic()
    # The first attempt runs bare, and nothing is built for a retry until one is
    # needed: most calls succeed, every microsecond here is the client's overhead per
    # call, and tenacity's state is a reference cycle per call that only the cyclic GC
    # frees, which at thousands of calls a second means long collector pauses.
    try:
        return await attempt(*arguments, 1)
    except Exception as error:
        if policy.max_retries == 0 or retry_reason(error, idempotent=idempotent) is None:
            _count_attempts(error, 1, started)
            raise
        first_failure = error
    return await _retry_after_failure(
        partial(attempt, *arguments),
        first_failure,
        policy=policy,
        idempotent=idempotent,
        description=description,
        started=started,
    )


def _count_attempts(error: BaseException, attempts: int, started: float) -> None:
    """Tell a no-answer error how many attempts failed, and over how many seconds."""
    if isinstance(error, APIConnectionError):
        error.attempts = attempts
        error.elapsed = time.monotonic() - started


async def _retry_after_failure(
    attempt: Callable[[int], Awaitable[T]],
    first_failure: Exception,
    *,
    policy: RetryPolicy,
    idempotent: bool,
    description: str,
    started: float,
) -> T:
    """Hand a failed first attempt to tenacity, which waits and retries from there."""
    attempts = policy.max_retries + 1
    attempt_number = 1

    async def attempt_again() -> T:
        # tenacity's first attempt reports the failure already seen, so that its wait
        # (Retry-After or backoff) and its log line decide what comes before retry 1.
        nonlocal attempt_number
        if attempt_number == 1:
            attempt_number += 1
            raise first_failure
        attempt_number += 1
        return await attempt(attempt_number - 1)

    def failure(retry_state: tenacity.RetryCallState) -> BaseException | None:
        outcome = retry_state.outcome
        return outcome.exception() if outcome is not None and outcome.failed else None

    def should_retry(retry_state: tenacity.RetryCallState) -> bool:
        error = failure(retry_state)
        return error is not None and retry_reason(error, idempotent=idempotent) is not None

    def wait(retry_state: tenacity.RetryCallState) -> float:
        error = failure(retry_state)
        if not policy.backoff or error is None:
            return 0.0
        return wait_before_retry(error, retry_state.attempt_number, random_fraction=random.random())

    def log_retry(retry_state: tenacity.RetryCallState) -> None:
        error = failure(retry_state)
        sleep = retry_state.next_action.sleep if retry_state.next_action else 0.0
        logger.warning(
            "retrying %s in %.2f s (attempt %d of %d failed: %s)",
            description,
            sleep,
            retry_state.attempt_number,
            attempts,
            error and retry_reason(error, idempotent=idempotent),
        )
        if (hook := _instrument.current) is not None:
            hook.retry(sleep, retry_state.attempt_number, error)

    retrying = tenacity.AsyncRetrying(
        stop=tenacity.stop_after_attempt(attempts),
        retry=should_retry,
        wait=wait,
        sleep=asyncio.sleep if policy.backoff else _no_sleep,
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        return await retrying(attempt_again)
    except Exception as error:
        _count_attempts(error, attempt_number - 1, started)
        raise
