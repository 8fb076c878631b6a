"""Retry decisions (pure) and the retry loop, without any HTTP."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from aiotlink import APIConnectionError, APIError, APITimeoutError, RateLimitError, ServerError
from aiotlink._retry import (
    BACKOFF_CAP,
    RetryPolicy,
    backoff_delay,
    call_with_retries,
    parse_retry_after,
    retry_reason,
    wait_before_retry,
)

NOW = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)


def api_error(status: int, retry_after: float | None = None) -> APIError:
    cls = RateLimitError if status == 429 else ServerError if status >= 500 else APIError
    return cls(status, method="GET", url="u", retry_after=retry_after)


def connection_error(*, request_sent: bool) -> APIConnectionError:
    return APIConnectionError("x", method="GET", url="u", request_sent=request_sent)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("5", 5.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 3 ", 3.0),
        ("Sat, 28 Nov 2026 12:00:45 GMT", 45.0),
        ("Sat, 28 Nov 2026 11:00:00 GMT", 0.0),
        (None, None),
        ("soon", None),
        ("-1", None),
        ("nan", None),
        ("inf", None),
        ("", None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    """Retry-After as delay-seconds or an HTTP date; unreadable or negative is None."""
    assert parse_retry_after(value, now=NOW) == seconds


def test_parse_retry_after_date_without_zone() -> None:
    """An HTTP date with -0000 is read as UTC."""
    assert parse_retry_after("Sat, 28 Nov 2026 12:00:10 -0000", now=NOW) == 10.0


def test_backoff_is_exponential_with_full_jitter() -> None:
    """Ceilings 0.5, 1, 2, 4, 8, 8 s; the random fraction picks the point below."""
    ceilings = [backoff_delay(n, random_fraction=1.0) for n in range(1, 7)]
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 8.0, BACKOFF_CAP]
    assert backoff_delay(3, random_fraction=0.0) == 0.0
    assert backoff_delay(3, random_fraction=0.5) == 1.0


def test_wait_prefers_retry_after() -> None:
    """The server's Retry-After replaces the backoff; without it, backoff applies."""
    assert wait_before_retry(api_error(429, 12.0), 1, random_fraction=0.0) == 12.0
    assert wait_before_retry(api_error(503), 2, random_fraction=1.0) == 1.0
    assert wait_before_retry(connection_error(request_sent=True), 1, random_fraction=1.0) == 0.5


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
def test_retryable_statuses_for_idempotent_calls(status: int) -> None:
    """GETs and cancel are retried on 408, 429, 500, 502, 503, 504."""
    assert retry_reason(api_error(status), idempotent=True) == f"HTTP {status}"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422, 501])
def test_other_statuses_are_not_retried(status: int) -> None:
    """Client errors and 501 are final."""
    assert retry_reason(api_error(status), idempotent=True) is None


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (api_error(429), True),
        (api_error(500), False),
        (api_error(503), False),
        (api_error(408), False),
        (connection_error(request_sent=False), True),
        (connection_error(request_sent=True), False),
        (APITimeoutError("t", method="POST", url="u", request_sent=True), False),
    ],
)
def test_non_idempotent_calls_retry_only_when_provably_unprocessed(
    error: Exception, retried: bool
) -> None:
    """initialise is retried after 429 or a failed connect only."""
    assert (retry_reason(error, idempotent=False) is not None) == retried


def test_long_retry_after_is_not_retried() -> None:
    """A Retry-After over 60 s ends the retries; up to 60 s is retried."""
    assert retry_reason(api_error(429, 61.0), idempotent=True) is None
    assert retry_reason(api_error(429, 60.0), idempotent=True) is not None


def test_unexpected_exceptions_are_never_retried() -> None:
    """Cancellation and programming errors are never retried."""
    assert retry_reason(asyncio.CancelledError(), idempotent=True) is None
    assert retry_reason(KeyError("x"), idempotent=True) is None


class Attempts:
    """An attempt function that raises the given errors in turn, then returns 'ok'.

    It keeps the attempt number it was called with each time.
    """

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls = 0
        self.numbers: list[int] = []

    async def __call__(self, attempt_number: int) -> str:
        self.calls += 1
        self.numbers.append(attempt_number)
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_loop_retries_then_succeeds() -> None:
    """Retryable failures are retried until an attempt succeeds."""
    attempts = Attempts(api_error(503), connection_error(request_sent=True))
    result = await call_with_retries(
        attempts, policy=RetryPolicy(3, backoff=False), idempotent=True, description="GET u"
    )
    assert (result, attempts.calls) == ("ok", 3)
    assert attempts.numbers == [1, 2, 3]


async def test_loop_raises_the_last_error_when_retries_run_out() -> None:
    """With max_retries=1 there are two attempts, then the last error itself is raised."""
    last = api_error(502)
    attempts = Attempts(api_error(503), last, api_error(504))
    with pytest.raises(ServerError) as caught:
        await call_with_retries(
            attempts, policy=RetryPolicy(1, backoff=False), idempotent=True, description="GET u"
        )
    assert caught.value is last
    assert attempts.calls == 2


async def test_loop_does_not_retry_cancellation() -> None:
    """CancelledError from an attempt propagates at once."""
    attempts = Attempts(asyncio.CancelledError())
    with pytest.raises(asyncio.CancelledError):
        await call_with_retries(
            attempts, policy=RetryPolicy(3, backoff=False), idempotent=True, description="GET u"
        )
    assert attempts.calls == 1


async def test_loop_sleeps_the_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """With backoff on, the loop sleeps the jittered delay between attempts."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("aiotlink._retry.asyncio.sleep", fake_sleep)
    monkeypatch.setattr("aiotlink._retry.random.random", lambda: 1.0)
    attempts = Attempts(api_error(503), api_error(503), api_error(429, 3.0))
    await call_with_retries(attempts, policy=RetryPolicy(3), idempotent=True, description="GET u")
    assert slept == [0.5, 1.0, 3.0]
