"""Durable following on arq and Redis (aiotlink.arq), against a real Redis server.

Redis is ``redis-server`` started on a free port of 127.0.0.1 (``RedisServer``); the
workers here are real arq ``Worker`` objects run in the test's process, so that the
fake's request records and faults are at hand. tests/test_arq_processes.py runs them
as processes, with the fake as a process too.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from typing import Any

import pytest
from aiohttp import web
from arq.connections import ArqRedis

from aiotlink import TransactionLinkClient, WorkflowStatus
from aiotlink import _polling as polling
from aiotlink._polling import JITTER
from aiotlink.arq import DEAD_LETTERS_KEY, Outcome, OutcomeKind, follow, nudge
from aiotlink.arq._cli import dead_letters, main, replay
from aiotlink.arq._state import (
    DEAD_LETTER_ORDER_KEY,
    STATE_GRACE_SECONDS,
    follow_key,
    generation_key,
    scripts,
)
from aiotlink.testing import FakeTransactionLink, RecordedRequest, RedisServer

from .arq_helpers import Handled, eventually, pool, running_worker
from .test_otel import Telemetry, instrumented


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.fixture
async def redis(redis_server: RedisServer) -> AsyncIterator[ArqRedis]:
    connection = await pool(redis_server.port)
    await connection.flushall()
    yield connection
    await connection.aclose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTransactionLink]:
    async with FakeTransactionLink() as running:
        yield running


def finds(fake: FakeTransactionLink, execution_id: str) -> list[RecordedRequest]:
    return [
        request
        for request in fake.requests_for("find")
        if request.path == f"/workflows/{execution_id}"
    ]


async def start(fake: FakeTransactionLink, definition: str) -> str:
    async with TransactionLinkClient(fake.token, base_url=fake.url) as client:
        execution = await client.workflows.initialise(definition)
    return execution.id


def client_options(fake: FakeTransactionLink, **more: Any) -> dict[str, Any]:
    return {"token": fake.token, "base_url": fake.url, **more}


async def letters(redis: ArqRedis, count: int) -> bool:
    """Whether ``count`` dead letters are recorded."""
    return await redis.hlen(DEAD_LETTERS_KEY) == count


async def gone(redis: ArqRedis, execution_id: str) -> bool:
    """Whether the follow of ``execution_id`` (its delivery included) is over."""
    return not await redis.exists(follow_key(execution_id))


async def followed_keys(redis: ArqRedis) -> list[bytes]:
    return [key for key in await redis.keys("*") if not key.startswith(b"aiotlink:generation:")]


# Points 1 and 2: follow, poll as short jobs, run the handler once.


async def test_follow_polls_in_short_jobs_and_runs_the_handler_once(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    definition = fake.add_definition(statuses=["INITIALISED", "RUNNING", "COMPLETED"])
    execution_id = await start(fake, definition)
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        began = time.monotonic()
        assert await follow(redis, execution_id, on_terminal="Handled", poll_interval=0.05)
        [outcome] = await handled.wait_for(1)
        await asyncio.sleep(0.3)  # nothing more comes
    assert len(handled.outcomes) == 1
    assert outcome.kind is OutcomeKind.TERMINAL
    assert outcome.execution is not None
    assert outcome.execution.status is WorkflowStatus.COMPLETED
    assert (outcome.execution_id, outcome.key, outcome.attempt) == (
        execution_id,
        f"{execution_id}:1",
        1,
    )
    polls = finds(fake, execution_id)
    assert len(polls) == 2  # a status a find (RUNNING, COMPLETED): no lookup more than needed
    assert polls[0].at - began < 0.5  # the first lookup at once
    # Nothing is left behind: no follow, no job; the generation counter has a TTL.
    assert await followed_keys(redis) == [b"arq:queue:health-check"] or not await redis.keys(
        "aiotlink:follow:*"
    )
    assert not await redis.keys("arq:job:*")
    assert await redis.ttl(generation_key(execution_id)) > 0


async def test_the_handler_is_named_and_the_state_is_in_redis_with_a_ttl(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    definition = fake.add_definition(statuses=["INITIALISED", "RUNNING"], step_seconds=3600)
    execution_id = await start(fake, definition)
    assert await follow(redis, execution_id, on_terminal="later", poll_interval=30)
    # No worker yet: the follow and its first poll job wait in Redis, each with a TTL.
    state = await redis.hgetall(follow_key(execution_id))
    assert state[b"handler"] == b"later"
    assert 0 < await redis.ttl(follow_key(execution_id)) <= STATE_GRACE_SECONDS
    [job] = await redis.keys("arq:job:*")
    assert 0 < await redis.pttl(job) <= (STATE_GRACE_SECONDS + 1) * 1000
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        await eventually(lambda: len(finds(fake, execution_id)) == 1)
        await asyncio.sleep(0.1)
        ttl = await redis.ttl(follow_key(execution_id))
        # Refreshed by the poll: the next one is due in up to 30 s, plus the grace.
        assert STATE_GRACE_SECONDS < ttl <= STATE_GRACE_SECONDS + 31


# Point 3: one follower per execution.


async def test_following_an_execution_a_hundred_times_at_once_starts_one_follow(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    definition = fake.add_definition(statuses=["INITIALISED", "RUNNING", "COMPLETED"])
    execution_id = await start(fake, definition)
    started = await asyncio.gather(
        *(
            follow(redis, execution_id.upper() if n % 2 else execution_id, on_terminal="Handled")
            for n in range(100)
        )
    )
    assert started.count(True) == 1
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        await handled.wait_for(1)
        await asyncio.sleep(0.3)
    assert len(handled.outcomes) == 1
    assert len(finds(fake, execution_id)) == 2


# Defect 1 of the lost attempt: a second follow after the outcome must deliver again.


async def test_following_again_after_the_outcome_was_delivered_delivers_again(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    definition = fake.add_definition(statuses=["RUNNING", "FAILED"])
    execution_id = await start(fake, definition)
    outcomes: list[Outcome] = []
    release = asyncio.Event()

    async def held(ctx: dict[str, Any], outcome: Outcome) -> None:
        outcomes.append(outcome)
        await release.wait()

    async with running_worker(redis, [held], **client_options(fake)):
        assert await follow(redis, execution_id, on_terminal="held", poll_interval=0.05)
        await eventually(lambda: len(outcomes) == 1)
        # While its outcome is being delivered, a follow changes nothing (README).
        assert not await follow(redis, execution_id, on_terminal="held", poll_interval=0.05)
        release.set()
        await eventually(partial(gone, redis, execution_id))
        assert await follow(redis, execution_id, on_terminal="held", poll_interval=0.05)
        await eventually(lambda: len(outcomes) == 2)
    first, second = outcomes
    assert (first.key, second.key) == (f"{execution_id}:1", f"{execution_id}:2")
    assert second.execution is not None
    assert second.execution.status is WorkflowStatus.FAILED


# Point 4: the schedule and the outcomes are the in-process waits'.


async def test_timeout_failure_and_lookup_errors_reach_the_handler_told_apart(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    failing = await start(fake, fake.add_definition(statuses=["RUNNING", "FAILED"]))
    endless = await start(
        fake, fake.add_definition(statuses=["INITIALISED", "RUNNING"], step_seconds=3600)
    )
    unknown = str(uuid.uuid4())
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        for execution_id in (failing, unknown):
            await follow(redis, execution_id, on_terminal="Handled", poll_interval=0.05)
        await follow(redis, endless, on_terminal="Handled", poll_interval=0.05, timeout=0.4)
        outcomes = {outcome.execution_id: outcome for outcome in await handled.wait_for(3)}
    failed, timed_out, missing = outcomes[failing], outcomes[endless], outcomes[unknown]
    assert failed.kind is OutcomeKind.TERMINAL
    assert failed.execution is not None
    assert failed.execution.status is WorkflowStatus.FAILED
    assert timed_out.kind is OutcomeKind.TIMEOUT
    assert timed_out.execution is not None  # the last one seen
    assert timed_out.execution.status is WorkflowStatus.INITIALISED
    assert missing.kind is OutcomeKind.ERROR
    assert missing.execution is None
    assert missing.error_status == 404
    assert missing.error is not None
    assert "NotFoundError" in missing.error
    assert len(finds(fake, unknown)) == 1  # a 404 is not retried


async def test_a_forbidden_lookup_ends_the_follow_with_an_error_outcome(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    execution_id = await start(fake, fake.add_definition())
    blind = fake.add_token(can_view_workspace=False)
    handled = Handled()
    async with running_worker(redis, [handled], token=blind, base_url=fake.url):
        await follow(redis, execution_id, on_terminal="Handled")
        [outcome] = await handled.wait_for(1)
        await eventually(partial(gone, redis, execution_id))  # written back
    assert outcome.kind is OutcomeKind.ERROR
    assert outcome.error_status == 403
    assert not await redis.keys("aiotlink:follow:*")


async def test_the_gaps_grow_as_the_schedule_says(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    endless = await start(
        fake, fake.add_definition(statuses=["INITIALISED", "RUNNING"], step_seconds=3600)
    )
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        await follow(
            redis,
            endless,
            on_terminal="Handled",
            poll_interval=0.1,
            poll_factor=2,
            max_poll_interval=0.4,
            timeout=1.6,
        )
        [outcome] = await handled.wait_for(1)
    assert outcome.kind is OutcomeKind.TIMEOUT
    times = [request.at for request in finds(fake, endless)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    for gap, expected in zip(gaps, [0.1, 0.2, 0.4, 0.4], strict=False):
        # Jitter shortens a gap by up to a fifth; the worker's queue poll adds a bit.
        assert expected * (1 - JITTER) - 0.01 <= gap <= expected + 0.1, gaps
    assert len(gaps) >= 4


async def test_transient_errors_are_retried_and_retry_after_is_honoured(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    execution_id = await start(fake, fake.add_definition(statuses=["RUNNING", "COMPLETED"]))
    fake.fail_next("find", 503)
    fake.fail_next("find", 429, retry_after=1)
    handled = Handled()
    # No retries in the client: each failed lookup is a failed poll of the follow.
    async with running_worker(redis, [handled], **client_options(fake, max_retries=0)):
        await follow(redis, execution_id, on_terminal="Handled", poll_interval=0.05)
        [outcome] = await handled.wait_for(1)
    assert outcome.kind is OutcomeKind.TERMINAL
    times = [request.at for request in finds(fake, execution_id)]
    assert len(times) == 3
    assert times[2] - times[1] >= 0.99  # the 429's Retry-After


# Defect 2: a poll cut short by arq's job timeout polls again.


async def test_a_poll_cut_by_the_job_timeout_is_followed_by_the_next(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    execution_id = await start(fake, fake.add_definition(statuses=["RUNNING", "COMPLETED"]))
    fake.slow_next("find", 5.0)
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake), poll_timeout=0.3):
        await follow(redis, execution_id, on_terminal="Handled", poll_interval=0.05)
        [outcome] = await handled.wait_for(1, timeout=5)
        await eventually(partial(gone, redis, execution_id))  # written back
    assert outcome.kind is OutcomeKind.TERMINAL
    assert not await redis.keys("aiotlink:follow:*")


async def test_a_poll_that_fails_unexpectedly_is_followed_by_the_next(
    redis: ArqRedis, fake: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution_id = await start(fake, fake.add_definition(statuses=["RUNNING", "COMPLETED"]))
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)) as worker:
        await eventually(lambda: "aiotlink" in worker.ctx)
        workflows = worker.ctx["aiotlink"].client.workflows
        real = workflows._find
        calls = 0

        async def broken_once(key: str) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("a bug")
            return await real(key)

        monkeypatch.setattr(workflows, "_find", broken_once)
        await follow(redis, execution_id, on_terminal="Handled", poll_interval=0.05)
        [outcome] = await handled.wait_for(1)
    assert outcome.kind is OutcomeKind.TERMINAL
    assert calls == 2


async def test_a_stale_claims_write_back_does_nothing(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    """A sweep whose claim expired (its worker stalled) and was taken over writes nothing."""
    from aiotlink.arq._state import armed_key, due_key, shard_args, shard_of
    from aiotlink.arq._worker import BATCH

    execution_id = await start(
        fake, fake.add_definition(statuses=["INITIALISED", "RUNNING"], step_seconds=3600)
    )
    assert await follow(redis, execution_id, on_terminal="Handled", poll_interval=30)
    queue, shard = redis.default_queue_name, shard_of(execution_id)
    keys = [due_key(queue, shard), armed_key(queue, shard)]
    shard_part = shard_args(redis, queue, shard)
    run = scripts(redis)

    async def claim(token: str, lease: float) -> list[Any]:
        args = [*shard_part, repr(time.time()), BATCH, token, lease, lease, "no-job", "0"]
        _, claimed = await run.claim(keys=keys, args=args)
        return list(claimed)

    [(member, phase, _)] = await claim("stale", 0.05)  # a lease that expires at once
    assert (member, phase) == (execution_id.encode(), b"poll")
    await asyncio.sleep(0.1)
    [_] = await claim("fresh", 60)  # taken over after the lease
    written = [[execution_id, "poll", "30.0", repr(time.time() + 1), "0", "RUNNING", "{}"]]
    await run.write_back(
        keys=[*keys, DEAD_LETTERS_KEY, DEAD_LETTER_ORDER_KEY],
        args=[*shard_part, repr(time.time()), "stale", json.dumps(written), 60, 10],
    )
    state = await redis.hgetall(follow_key(execution_id))
    assert (state[b"claim"], state[b"status"], state[b"running"]) == (b"fresh", b"", b"1")
    assert await redis.zscore(keys[0], execution_id) > time.time() + 50  # the fresh lease
    # The same write-back with the live token takes.
    await run.write_back(
        keys=[*keys, DEAD_LETTERS_KEY, DEAD_LETTER_ORDER_KEY],
        args=[*shard_part, repr(time.time()), "fresh", json.dumps(written), 60, 10],
    )
    state = await redis.hgetall(follow_key(execution_id))
    assert (state[b"claim"], state[b"status"], state[b"running"]) == (b"", b"RUNNING", b"0")


# Defect 3 and point 5: handlers that fail, run over, are retried then dead-lettered.


async def test_a_handler_that_raises_is_retried_with_the_same_key(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    execution_id = await start(fake, fake.add_definition(statuses=["COMPLETED"]))
    attempts: list[Outcome] = []

    async def flaky(ctx: dict[str, Any], outcome: Outcome) -> None:
        attempts.append(outcome)
        if len(attempts) == 1:
            raise asyncio.CancelledError  # raised by the handler itself: a failure
        if len(attempts) == 2:
            raise ValueError("the database is down")

    async with running_worker(redis, [flaky], **client_options(fake), retry_delay=0.05):
        await follow(redis, execution_id, on_terminal="flaky")
        await eventually(lambda: len(attempts) == 3)
        await asyncio.sleep(0.3)
    assert [outcome.attempt for outcome in attempts] == [1, 2, 3]
    assert {outcome.key for outcome in attempts} == {f"{execution_id}:1"}
    assert not await redis.hgetall(DEAD_LETTERS_KEY)


async def test_a_handler_over_its_time_is_retried_then_dead_lettered(
    redis: ArqRedis, fake: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    execution_id = await start(fake, fake.add_definition(statuses=["COMPLETED"]))
    runs: list[float] = []

    async def slow(ctx: dict[str, Any], outcome: Outcome) -> None:
        runs.append(time.monotonic())
        await asyncio.sleep(30)

    options = {"handler_timeout": 0.2, "max_attempts": 2, "retry_delay": 0.1}
    async with running_worker(redis, [slow], **client_options(fake), **options):
        await follow(redis, execution_id, on_terminal="slow")
        await eventually(lambda: letters(redis, 1), timeout=5)
    assert len(runs) == 2
    assert runs[1] - runs[0] >= 0.3  # its time, then the retry's delay
    [letter] = await dead_letters(redis)
    assert (letter["id"], letter["attempt"], letter["reason"]) == (execution_id, 2, "timed out")
    assert "recorded as a dead letter" in caplog.text


async def test_a_handler_cancelled_by_the_job_timeout_counts_as_a_failed_attempt(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    """arq cancels a job past its own timeout: the handler's attempt failed, and is retried."""
    execution_id = await start(fake, fake.add_definition(statuses=["COMPLETED"]))
    runs: list[int] = []

    async def slow_once(ctx: dict[str, Any], outcome: Outcome) -> None:
        runs.append(outcome.attempt)
        if outcome.attempt == 1:
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:  # a handler that ignores its own time limit
                await asyncio.sleep(30)

    # The handler ignores its own limit: arq's timeout of the job (its function's) cuts it.
    async with running_worker(
        redis, [slow_once], **client_options(fake), handler_timeout=0.2, retry_delay=0.05
    ) as worker:
        worker.functions["aiotlink_sweep"].timeout_s = 0.5
        await follow(redis, execution_id, on_terminal="slow_once")
        await eventually(lambda: runs == [1, 2], timeout=5)


async def test_an_unknown_handler_is_dead_lettered_not_dropped(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    execution_id = await start(fake, fake.add_definition(statuses=["COMPLETED"]))
    async with running_worker(redis, [], **client_options(fake), max_attempts=1):
        await follow(redis, execution_id, on_terminal="nobody")
        await eventually(lambda: letters(redis, 1), timeout=5)
    [letter] = await dead_letters(redis)
    assert "LookupError" in letter["reason"]
    assert "'nobody'" in letter["reason"]


# Defect 6: replay goes to the follow's queue, once.


async def test_replay_is_atomic_and_goes_back_to_the_follows_queue(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    execution_id = await start(fake, fake.add_definition(statuses=["COMPLETED"]))
    failing = True
    handled: list[Outcome] = []

    async def fragile(ctx: dict[str, Any], outcome: Outcome) -> None:
        if failing:
            raise RuntimeError("not yet")
        handled.append(outcome)

    queue = "tenant-7:queue"
    async with running_worker(
        redis, [fragile], **client_options(fake), max_attempts=1, queue_name=queue
    ):
        await follow(redis, execution_id, on_terminal="fragile", queue_name=queue)
        await eventually(lambda: letters(redis, 1), timeout=5)
    [letter] = await dead_letters(redis)
    # Five operators replay at once: one wins, one job is queued, on the follow's queue.
    results = await asyncio.gather(*(replay(redis, letter["entry"]) for _ in range(5)))
    assert results.count(True) == 1
    assert await redis.zcard(queue) == 1  # its shard's sweep
    assert await redis.zcard("arq:queue") == 0
    [due] = await redis.keys("aiotlink:due:*")
    assert due.startswith(f"aiotlink:due:{queue}:".encode())
    assert await redis.zcard(due) == 1
    failing = False
    async with running_worker(
        redis, [fragile], **client_options(fake), max_attempts=1, queue_name=queue
    ):
        await eventually(lambda: len(handled) == 1, timeout=5)
    assert handled[0].key == f"{execution_id}:1"
    assert not await redis.hgetall(DEAD_LETTERS_KEY)


# Point 6 and defect 4: nudges.


async def test_a_nudge_with_a_status_that_is_not_terminal_costs_no_lookup(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    definition = fake.add_definition(statuses=["INITIALISED", "CREATED", "RUNNING", "COMPLETED"])
    execution_id = await start(fake, definition)
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        await follow(redis, execution_id, on_terminal="Handled", poll_interval=30)
        await eventually(lambda: len(finds(fake, execution_id)) == 1)
        assert await nudge(redis, execution_id, status="RUNNING")
        assert await nudge(redis, execution_id, status=WorkflowStatus.AWAITING)
        await asyncio.sleep(0.5)
        assert len(finds(fake, execution_id)) == 1
        assert await nudge(redis, execution_id)  # no status: maybe the end
        await eventually(lambda: len(finds(fake, execution_id)) == 2, timeout=2)
        assert await nudge(redis, execution_id, status="COMPLETED")
        [outcome] = await handled.wait_for(1, timeout=2)
        await eventually(partial(gone, redis, execution_id))  # written back
    assert outcome.kind is OutcomeKind.TERMINAL
    assert not await nudge(redis, str(uuid.uuid4()))  # nobody follows it: nothing at all
    assert not await nudge(redis, execution_id)


async def test_a_burst_of_nudges_costs_one_lookup_after_the_minimum_gap(
    redis: ArqRedis, fake: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shared minimum gap, made long enough to measure: the durable follow keeps it.
    monkeypatch.setattr(polling, "NUDGE_MIN_GAP", 0.6)
    execution_id = await start(
        fake, fake.add_definition(statuses=["INITIALISED", "RUNNING"], step_seconds=3600)
    )
    async with running_worker(redis, [Handled()], **client_options(fake)):
        await follow(redis, execution_id, on_terminal="Handled", poll_interval=30)
        await eventually(lambda: len(finds(fake, execution_id)) == 1)
        await asyncio.sleep(0.05)
        results = await asyncio.gather(*(nudge(redis, execution_id) for _ in range(20)))
        assert all(results)
        await asyncio.sleep(1.2)
    first, second = finds(fake, execution_id)  # one lookup for the burst
    assert 0.6 <= second.at - first.at < 1.0  # the gap, not the 30 s schedule


async def test_a_nudge_never_polls_before_the_last_retry_after(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    execution_id = await start(
        fake, fake.add_definition(statuses=["INITIALISED", "RUNNING"], step_seconds=3600)
    )
    fake.fail_next("find", 429, retry_after=1)
    async with running_worker(redis, [Handled()], **client_options(fake, max_retries=0)):
        await follow(redis, execution_id, on_terminal="Handled", poll_interval=30)
        await eventually(lambda: len(finds(fake, execution_id)) == 1)
        await asyncio.sleep(0.05)
        assert await nudge(redis, execution_id)
        await eventually(lambda: len(finds(fake, execution_id)) == 2, timeout=3)
    first, second = finds(fake, execution_id)
    assert 0.99 <= second.at - first.at <= 1.5


async def test_a_nudge_during_a_lookup_is_followed_by_another_lookup_at_once(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    execution_id = await start(
        fake, fake.add_definition(statuses=["INITIALISED", "RUNNING"], step_seconds=3600)
    )
    fake.slow_next("find", 0.5)
    async with running_worker(redis, [Handled()], **client_options(fake)):
        await follow(redis, execution_id, on_terminal="Handled", poll_interval=30)
        await eventually(lambda: len(finds(fake, execution_id)) == 1)
        await asyncio.sleep(0.1)
        assert await nudge(redis, execution_id)  # while the slow lookup is in flight
        await eventually(lambda: len(finds(fake, execution_id)) == 2, timeout=2)
    first, second = finds(fake, execution_id)
    assert second.at - first.at < 0.8


# Point 6 and defect 5: webhook receivers nudge durable follows, without waiting on Redis.


async def serve_receiver(handler: Any) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/hooks", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}/hooks"


async def test_a_webhook_nudges_the_durable_follow(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    execution_id = await start(
        fake, fake.add_definition(statuses=["RUNNING", "COMPLETED"], step_seconds=0.5)
    )
    events: list[Any] = []
    async with TransactionLinkClient(fake.token, base_url=fake.url) as receiving:
        runner, url = await serve_receiver(
            receiving.webhooks.aiohttp_handler(events.append, arq_redis=redis)
        )
        fake.set_webhook_url(url)
        handled = Handled()
        try:
            async with running_worker(redis, [handled], **client_options(fake)):
                await follow(redis, execution_id, on_terminal="Handled", poll_interval=30)
                began = time.monotonic()
                [outcome] = await handled.wait_for(1, timeout=5)
                took = time.monotonic() - began
        finally:
            await runner.cleanup()
    assert outcome.kind is OutcomeKind.TERMINAL
    assert took < 2  # the webhook, not the 30 s poll
    assert len(finds(fake, execution_id)) == 2
    assert events


async def test_a_slow_redis_never_holds_the_webhook_answer(
    fake: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    # A "Redis" that accepts connections and never answers.
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda reader, writer: held.append(writer), "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    stuck = ArqRedis(host="127.0.0.1", port=port)
    called: list[float] = []
    definition = fake.add_definition(statuses=["RUNNING", "COMPLETED"], step_seconds=0.2)
    async with TransactionLinkClient(fake.token, base_url=fake.url) as receiving:
        runner, url = await serve_receiver(
            receiving.webhooks.aiohttp_handler(
                lambda event: called.append(time.monotonic()), arq_redis=stuck
            )
        )
        try:
            fake.set_webhook_url(url)
            await start(fake, definition)
            await asyncio.sleep(0.3)  # the fake announces COMPLETED
            await fake.webhooks_settled(timeout=5)
            await asyncio.sleep(0.7)  # the nudge gives up meanwhile
        finally:
            await runner.cleanup()
            await stuck.aclose()
            for writer in held:
                writer.close()
            silent.close()
            await silent.wait_closed()
    [delivery, *_] = fake.webhook_deliveries
    assert delivery.attempts[0].status == 204
    assert called[0] - delivery.attempts[0].at < 0.3  # on_event did not wait for Redis
    assert "took over 0.5 s" in caplog.text


def test_a_receiver_with_arq_redis_wants_an_arq_pool(fake: FakeTransactionLink) -> None:
    client = TransactionLinkClient(fake.token, base_url=fake.url)
    a_url: Any = "redis://localhost"  # wrong on purpose: a URL, not a pool
    with pytest.raises(TypeError, match="ArqRedis"):
        client.webhooks.asgi_app(print, arq_redis=a_url)


# Arguments, and secrets.


async def test_bad_arguments_are_refused_before_redis_is_asked(redis: ArqRedis) -> None:
    good = str(uuid.uuid4())
    with pytest.raises(ValueError, match="on_terminal"):
        await follow(redis, good, on_terminal="")
    with pytest.raises(ValueError, match="timeout"):
        await follow(redis, good, on_terminal="h", timeout=-1)
    with pytest.raises(ValueError, match="poll_interval"):
        await follow(redis, good, on_terminal="h", poll_interval=0)
    with pytest.raises(ValueError, match="execution_id"):
        await follow(redis, "../x", on_terminal="h")
    a_url: Any = "redis://"  # wrong on purpose: a URL, not a pool
    with pytest.raises(TypeError, match="ArqRedis"):
        await follow(a_url, good, on_terminal="h")
    with pytest.raises(ValueError, match="status"):
        await nudge(redis, good, status="")
    with pytest.raises(ValueError, match="download_to"):
        await follow(redis, good, on_terminal="h", download_to="a\0b")
    assert not await redis.keys("aiotlink:*")


def test_configure_checks_its_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from aiotlink.arq import configure

    monkeypatch.delenv("TRANSACTIONLINK_TOKEN", raising=False)
    with pytest.raises(ValueError, match="token"):
        configure([])
    with pytest.raises(ValueError, match="handler_timeout"):
        configure([], token="tot_x", handler_timeout=0)
    with pytest.raises(ValueError, match="max_attempts"):
        configure([], token="tot_x", max_attempts=0)
    not_functions: Any = [42]  # wrong on purpose
    with pytest.raises(TypeError, match="functions"):
        configure(not_functions, token="tot_x")


async def test_no_secret_reaches_redis_the_logs_or_the_dead_letter_listing(
    redis: ArqRedis,
    redis_server: RedisServer,
    fake: FakeTransactionLink,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    caplog.set_level(logging.DEBUG)
    interactive = fake.add_definition(statuses=["RUNNING", "COMPLETED"], interactive=True)
    execution_id = await start(fake, interactive)
    execution_token = fake._execution(execution_id).token
    assert execution_token
    blind = fake.add_token(can_view_workspace=False)

    async def failing(ctx: dict[str, Any], outcome: Outcome) -> None:
        raise RuntimeError(f"could not store {outcome.execution_id}")

    fake.fail_next("find", 503)  # a transient failure, logged
    async with running_worker(
        redis, [failing], token=fake.token, base_url=fake.url, max_attempts=1, max_retries=0
    ):
        await follow(redis, execution_id, on_terminal="failing", poll_interval=0.05)
        await eventually(lambda: letters(redis, 1), timeout=5)
    async with running_worker(redis, [failing], token=blind, base_url=fake.url, max_attempts=1):
        await follow(redis, str(uuid.uuid4()), on_terminal="failing")
        await eventually(lambda: letters(redis, 2), timeout=5)
    assert await asyncio.to_thread(main, ["list", "--redis", redis_server.url]) == 0
    listing = capsys.readouterr().out
    assert execution_id in listing
    # Every value Redis holds now, of every type.
    stored = b""
    for key in await redis.keys("*"):
        kind = (await redis.type(key)).decode()
        if kind == "string":
            stored += await redis.get(key) or b""
        elif kind == "hash":
            for field, value in (await redis.hgetall(key)).items():
                stored += field + value
        elif kind == "zset":
            stored += b"".join(await redis.zrange(key, 0, -1))
    assert execution_id.encode() in stored  # the scan saw the dead letters
    for secret in (fake.token, blind):
        assert secret.encode() not in stored
        assert secret not in caplog.text
        assert secret not in listing
    assert execution_token not in caplog.text
    assert execution_token not in listing


def test_importing_without_the_extra_names_it() -> None:
    code = (
        "import sys; sys.modules['arq'] = None\n"
        "try:\n    import aiotlink.arq\n"
        "except ImportError as e:\n    print(e)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert 'pip install "aiotlink[arq]"' in result.stdout


async def test_a_completed_result_is_downloaded_for_the_handler(
    redis: ArqRedis, fake: FakeTransactionLink, tmp_path: Any
) -> None:
    definition = fake.add_definition(statuses=["COMPLETED"], result={"decision": "APPROVED"})
    execution_id = await start(fake, definition)
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        await follow(redis, execution_id, on_terminal="Handled", download_to=tmp_path)
        [outcome] = await handled.wait_for(1)
    assert outcome.result_path == tmp_path / f"{execution_id}.json"
    assert b"APPROVED" in outcome.result_path.read_bytes()


async def test_cli_replay_all_and_unknown_entries(
    redis: ArqRedis, redis_server: RedisServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await asyncio.to_thread(main, ["replay", "--redis", redis_server.url, "nothing:1"]) == 1
    assert "no dead letter" in capsys.readouterr().err
    assert await asyncio.to_thread(main, ["replay", "--redis", redis_server.url, "--all"]) == 0
    assert await asyncio.to_thread(main, ["list", "--redis", redis_server.url]) == 0
    assert "no dead letters" in capsys.readouterr().out


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """The client instrumented, spans and metrics in memory (tests/test_otel.py)."""
    yield from instrumented()


async def test_each_poll_links_to_the_trace_that_started_the_follow(
    redis: ArqRedis, fake: FakeTransactionLink, telemetry: Telemetry
) -> None:
    """follow() inside a traced request: every poll job's span links to that request."""
    definition = fake.add_definition(statuses=["INITIALISED", "RUNNING", "COMPLETED"])
    execution_id = await start(fake, definition)
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        with telemetry.caller():
            assert await follow(redis, execution_id, on_terminal="Handled", poll_interval=0.05)
        await handled.wait_for(1)
    caller = telemetry.one("caller")
    assert caller.context is not None
    polls = telemetry.named("aiotlink.follow")
    assert len(polls) == len(finds(fake, execution_id)) == 2
    for span in polls:
        (link,) = span.links
        assert (link.context.trace_id, link.context.span_id) == (
            caller.context.trace_id,
            caller.context.span_id,
        )
        assert (span.attributes or {})["aiotlink.execution.id"] == execution_id
        assert [child.name for child in telemetry.children(span)] == ["aiotlink.find"]


async def test_a_follow_started_untraced_keeps_no_trace_context(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    """Without tracing, nothing of a trace is stored with the follow."""
    definition = fake.add_definition(statuses=["INITIALISED", "RUNNING"], step_seconds=3600)
    execution_id = await start(fake, definition)
    assert await follow(redis, execution_id, on_terminal="later", poll_interval=30)
    assert (await redis.hgetall(follow_key(execution_id)))[b"trace"] == b""


# Review of issue 18: Redis failures, shutdowns and lost jobs lose no outcome.


Script = Callable[..., Awaitable[Any]]


def wrap_script(
    monkeypatch: pytest.MonkeyPatch, script: str, wrap: Callable[[Script], Script]
) -> None:
    """Run one of the scripts through ``wrap(original)``, on every client from now on."""
    from aiotlink.arq import _state

    real = _state.Scripts.__init__

    def patched(self: _state.Scripts, redis: ArqRedis) -> None:
        real(self, redis)
        monkeypatch.setattr(self, script, wrap(getattr(self, script)))

    monkeypatch.setattr(_state.Scripts, "__init__", patched)
    _state._SCRIPTS.clear()


def _failing_once(monkeypatch: pytest.MonkeyPatch, script: str, marker: str = "") -> list[int]:
    """Make the first run of one of the scripts (with ``marker`` in an argument) fail.

    As a dropped connection would.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError

    failed: list[int] = []

    def wrap(original: Script) -> Script:
        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if not failed and any(marker in str(arg) for arg in kwargs["args"]):
                failed.append(1)
                raise RedisConnectionError("Connection reset by peer")
            return await original(*args, **kwargs)

        return flaky

    wrap_script(monkeypatch, script, wrap)
    return failed


async def test_a_redis_error_as_a_sweep_claims_makes_arq_run_the_sweep_again(
    redis: ArqRedis, fake: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution_id = await start(fake, fake.add_definition(statuses=["RUNNING", "COMPLETED"]))
    failed = _failing_once(monkeypatch, "claim")
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        assert await follow(redis, execution_id, on_terminal="Handled", poll_interval=0.05)
        [outcome] = await handled.wait_for(1, timeout=5)
    assert failed == [1]
    assert outcome.kind is OutcomeKind.TERMINAL


async def armed_sweep(redis: ArqRedis, execution_id: str) -> str | None:
    """The sweep job armed for the shard of ``execution_id``, if it is stored and queued."""
    from aiotlink.arq._state import armed_key, shard_of

    queue = redis.default_queue_name
    job = await redis.hget(armed_key(queue, shard_of(execution_id)), "job")
    if job is None or await redis.zscore(queue, job) is None:
        return None
    return job.decode() if await redis.exists(f"arq:job:{job.decode()}") else None


async def lose_sweep(redis: ArqRedis, execution_id: str) -> None:
    """Lose the shard's armed sweep job, as a Redis failure would."""
    job = await armed_sweep(redis, execution_id)
    assert job is not None
    await redis.delete(f"arq:job:{job}")
    await redis.zrem(redis.default_queue_name, job)


async def test_a_lost_sweep_or_due_entry_comes_back_by_follow_nudge_or_a_worker_start(
    redis: ArqRedis, fake: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    from aiotlink.arq._state import due_key, shard_of

    execution_id = await start(fake, fake.add_definition(statuses=["COMPLETED"]))
    assert await follow(redis, execution_id, on_terminal="Handled")
    due = due_key(redis.default_queue_name, shard_of(execution_id))
    first = await armed_sweep(redis, execution_id)
    assert first is not None
    # The sweep lost: a follow of the execution arms another.
    await lose_sweep(redis, execution_id)
    assert not await follow(redis, execution_id, on_terminal="Handled")
    assert await armed_sweep(redis, execution_id) not in (None, first)
    # The due entry lost: a follow makes it due again, and says so.
    await redis.zrem(due, execution_id)
    with caplog.at_level(logging.WARNING, logger="aiotlink"):
        assert not await follow(redis, execution_id, on_terminal="Handled")
    assert "lost its due entry" in caplog.text
    assert await redis.zscore(due, execution_id) is not None
    armed = await armed_sweep(redis, execution_id)
    assert not await follow(redis, execution_id, on_terminal="Handled")  # nothing more
    assert await armed_sweep(redis, execution_id) == armed
    # Both lost: a nudge brings both back.
    await lose_sweep(redis, execution_id)
    await redis.zrem(due, execution_id)
    assert await nudge(redis, execution_id)
    assert await redis.zscore(due, execution_id) is not None
    assert await armed_sweep(redis, execution_id) is not None
    assert await redis.hget(follow_key(execution_id), "gen") == b"1"
    # The sweep lost again, and nobody follows or nudges: a worker's start arms it.
    await lose_sweep(redis, execution_id)
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        [outcome] = await handled.wait_for(1, timeout=5)
        await eventually(partial(gone, redis, execution_id))
    assert outcome.key == f"{execution_id}:1"
    assert not await redis.keys("arq:job:*")


async def test_a_shutdown_during_a_handler_is_no_failed_attempt(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    """SIGTERM (a deploy) cancels a running handler: arq runs the same attempt again."""
    import signal

    execution_id = await start(fake, fake.add_definition(statuses=["COMPLETED"]))
    runs: list[int] = []
    done: list[int] = []

    async def slow(ctx: dict[str, Any], outcome: Outcome) -> None:
        runs.append(outcome.attempt)
        await asyncio.sleep(0.4)
        done.append(outcome.attempt)

    async with running_worker(redis, [slow], **client_options(fake), retry_delay=0.05) as first:
        await follow(redis, execution_id, on_terminal="slow")
        await eventually(lambda: runs == [1])
        first.handle_sig(signal.SIGTERM)
        await asyncio.gather(*first.tasks.values(), return_exceptions=True)
    async with running_worker(redis, [slow], **client_options(fake), retry_delay=0.05):
        await eventually(lambda: done == [1])
        await asyncio.sleep(0.6)  # no second attempt comes
    assert (runs, done) == ([1, 1], [1])
    assert not await redis.hlen(DEAD_LETTERS_KEY)


async def test_a_redis_error_while_writing_back_is_ridden_out(
    redis: ArqRedis, fake: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution_id = await start(fake, fake.add_definition(statuses=["COMPLETED"]))
    failed = _failing_once(monkeypatch, "write_back")
    runs: list[int] = []

    async def failing(ctx: dict[str, Any], outcome: Outcome) -> None:
        runs.append(outcome.attempt)
        raise ValueError("db down")

    options = client_options(fake, retry_delay=0.05, max_attempts=2)
    async with running_worker(redis, [failing], **options):
        await follow(redis, execution_id, on_terminal="failing")
        await eventually(lambda: letters(redis, 1), timeout=8)
    assert failed == [1]
    assert runs == [1, 2]
    [letter] = await dead_letters(redis)
    assert letter["id"] == execution_id


async def test_a_redis_error_while_recording_a_dead_letter_is_retried(
    redis: ArqRedis, fake: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    execution_id = await start(fake, fake.add_definition(statuses=["COMPLETED"]))
    failed = _failing_once(monkeypatch, "write_back", marker='"dead"')
    runs: list[int] = []

    async def failing(ctx: dict[str, Any], outcome: Outcome) -> None:
        runs.append(outcome.attempt)
        raise ValueError("db down")

    async with running_worker(redis, [failing], **client_options(fake, max_attempts=1)):
        await follow(redis, execution_id, on_terminal="failing")
        await eventually(lambda: gone(redis, execution_id) if runs else False, timeout=8)
    assert failed == [1]
    assert runs == [1]
    [letter] = await dead_letters(redis)
    assert letter["id"] == execution_id


async def plant_delivery(redis: ArqRedis, member: str, payload: str) -> None:
    """A delivery whose payload is ``payload``, due now (as if Redis held garbage)."""
    from aiotlink.arq._state import armed_key, due_key, shard_args, shard_of

    queue, shard = redis.default_queue_name, shard_of(member)
    mapping = {"phase": "deliver", "claim": "", "queue": queue, "payload": payload}
    await redis.hset(follow_key(member), mapping=mapping)
    await redis.zadd(due_key(queue, shard), {member: time.time()})
    await scripts(redis).heal(
        keys=[due_key(queue, shard), armed_key(queue, shard)],
        args=[*shard_args(redis, queue, shard), repr(time.time())],
    )


async def test_an_undecodable_delivery_payload_is_dead_lettered_raw_and_capped(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    from aiotlink.arq._worker import RAW_LETTER_CHARS

    garbage = "{not json" + "x" * (2 * RAW_LETTER_CHARS)
    async with running_worker(redis, [], **client_options(fake)):
        await plant_delivery(redis, "broken", garbage)
        await plant_delivery(redis, "missing", '{"id": "x"}')
        await plant_delivery(redis, "mangled", "")
        await redis.hset(follow_key("mangled"), mapping={"phase": "poll", "gen": "x"})
        await eventually(lambda: letters(redis, 3), timeout=5)
    assert not await redis.keys("aiotlink:follow:*")
    stored = {key.decode(): value for key, value in (await redis.hgetall(DEAD_LETTERS_KEY)).items()}
    import json

    assert json.loads(json.loads(stored["undecodable:mangled"])["raw"])["gen"] == "x"
    broken = json.loads(stored["undecodable:broken"])
    assert broken["raw"] == garbage[:RAW_LETTER_CHARS]
    assert broken["reason"].startswith("undecodable payload")
    assert json.loads(stored["undecodable:missing"])["raw"] == '{"id": "x"}'


async def recorded(redis: ArqRedis, entry: str) -> bool:
    """Whether the dead letter ``entry`` is recorded."""
    return bool(await redis.hexists(DEAD_LETTERS_KEY, entry))


async def test_dead_letters_are_capped_oldest_dropped_and_purged(
    redis: ArqRedis,
    fake: FakeTransactionLink,
    redis_server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from aiotlink.arq import _worker

    monkeypatch.setattr(_worker, "MAX_DEAD_LETTERS", 2)
    ids = [await start(fake, fake.add_definition(statuses=["COMPLETED"])) for _ in range(3)]

    async def failing(ctx: dict[str, Any], outcome: Outcome) -> None:
        raise ValueError("db down")

    with caplog.at_level(logging.WARNING, logger="aiotlink"):
        async with running_worker(redis, [failing], **client_options(fake, max_attempts=1)):
            for execution_id in ids:
                await follow(redis, execution_id, on_terminal="failing")
                await eventually(partial(recorded, redis, f"{execution_id}:1"), timeout=5)
            await plant_delivery(redis, "broken", "not json")
            await eventually(partial(recorded, redis, "undecodable:broken"), timeout=5)
    assert [letter["entry"] for letter in await dead_letters(redis)] == [
        f"{ids[2]}:1",
        "undecodable:broken",
    ]
    assert f"dropped the oldest, {ids[0]}:1" in caplog.text
    assert f"dropped the oldest, {ids[1]}:1" in caplog.text
    url = redis_server.url
    assert await asyncio.to_thread(main, ["list", "--redis", url]) == 0
    assert "undecodable:broken" in capsys.readouterr().out
    # An undecodable payload is not replayed; it is purged.
    assert await asyncio.to_thread(main, ["replay", "--redis", url, "undecodable:broken"]) == 1
    assert await asyncio.to_thread(main, ["purge", "--redis", url, "undecodable:broken"]) == 0
    assert await asyncio.to_thread(main, ["purge", "--redis", url, "undecodable:broken"]) == 1
    assert await asyncio.to_thread(main, ["purge", "--redis", url, "--all"]) == 0
    assert f"purged {ids[2]}:1" in capsys.readouterr().out
    assert not await redis.exists(DEAD_LETTERS_KEY, DEAD_LETTER_ORDER_KEY)
    with pytest.raises(SystemExit):
        main(["purge", "--redis", url])


async def test_a_timeout_shorter_than_the_interval_ends_the_follow_at_its_deadline(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    """The next poll is never scheduled past the deadline: the TIMEOUT comes on time."""
    endless = await start(fake, fake.add_definition(statuses=["RUNNING"], step_seconds=3600))
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        began = time.monotonic()
        await follow(redis, endless, on_terminal="Handled", poll_interval=3, timeout=0.4)
        [outcome] = await handled.wait_for(1, timeout=5)
        took = time.monotonic() - began
    assert outcome.kind is OutcomeKind.TIMEOUT
    assert 0.4 <= took < 0.9, took  # not the interval's 2.4 s or more
    assert len(finds(fake, endless)) == 1


async def test_the_generation_counter_lives_on_while_the_follow_does(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    """Its TTL is refreshed as the follow goes on: a later follow never reuses a key."""
    from aiotlink.arq._state import GENERATION_TTL_SECONDS

    endless = await start(fake, fake.add_definition(statuses=["RUNNING"], step_seconds=3600))
    assert await follow(redis, endless, on_terminal="Handled", poll_interval=0.05)
    await redis.expire(generation_key(endless), 100)  # as if the follow were 30 days old

    async def refreshed() -> bool:
        return bool(await redis.ttl(generation_key(endless)) > GENERATION_TTL_SECONDS - 60)

    async with running_worker(redis, [Handled()], **client_options(fake)):
        await eventually(refreshed, timeout=5)
    assert len(finds(fake, endless)) >= 1


# Issue 18, point 9: batched sweeps. Their own failure modes.


async def in_one_shard(fake: FakeTransactionLink, count: int) -> list[str]:
    """``count`` executions (completed at once) whose ids fall in one shard."""
    from aiotlink.arq._state import shard_of

    done = fake.add_definition(statuses=["COMPLETED"])
    by_shard: dict[int, list[str]] = {}
    while True:
        execution_id = await start(fake, done)
        ids = by_shard.setdefault(shard_of(execution_id), [])
        ids.append(execution_id)
        if len(ids) == count:
            return ids


async def test_one_lookup_of_a_batch_failing_transiently_leaves_the_others_their_outcome(
    redis: ArqRedis, fake: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In one claimed batch, a 503-like failure reschedules that member only."""
    from aiotlink import APIConnectionError

    failing, ending = await in_one_shard(fake, 2)
    for execution_id in (failing, ending):  # due together, before any worker looks
        assert await follow(redis, execution_id, on_terminal="Handled", poll_interval=0.3)
    lookups: list[tuple[str, float]] = []

    async def flaky_lookups(ctx: dict[str, Any]) -> None:  # before the first sweep
        workflows = ctx["aiotlink"].client.workflows
        real = workflows._find

        async def flaky(key: str) -> Any:
            lookups.append((key, time.monotonic()))
            if key == failing and len([k for k, _ in lookups if k == failing]) == 1:
                raise APIConnectionError("reset", method="GET", url="x", request_sent=True)
            return await real(key)

        monkeypatch.setattr(workflows, "_find", flaky)

    handled = Handled()
    options = client_options(fake, on_startup=flaky_lookups)
    async with running_worker(redis, [handled], **options):
        first, second = await handled.wait_for(2)
    assert [first.execution_id, second.execution_id] == [ending, failing]
    assert first.kind is second.kind is OutcomeKind.TERMINAL
    (_, ended_at), (_, failed_at), (_, again_at) = sorted(lookups, key=lambda lookup: lookup[1])
    assert abs(ended_at - failed_at) < 0.1  # one batch
    assert again_at - failed_at >= 0.3 * (1 - JITTER) * 1.5 - 0.01  # the grown interval


async def test_a_killed_workers_claims_come_due_again_after_their_lease(
    redis: ArqRedis, fake: FakeTransactionLink
) -> None:
    """A poll and a delivery claimed by a worker that died run once their lease ends."""
    from aiotlink.arq._state import armed_key, due_key, shard_args, shard_of
    from aiotlink.arq._worker import BATCH

    polled, delivered = await in_one_shard(fake, 2)
    queue, shard = redis.default_queue_name, shard_of(polled)
    assert await follow(redis, polled, on_terminal="Handled")
    payload = {
        "id": delivered,
        "gen": 1,
        "kind": "terminal",
        "handler": "Handled",
        "queue": queue,
        "download": "",
        "attempt": 1,
        "body": None,
    }
    await plant_delivery(redis, delivered, json.dumps(payload))
    # The dead worker's claim, as a sweep makes it: then nothing more of it.
    _, claimed = await scripts(redis).claim(
        keys=[due_key(queue, shard), armed_key(queue, shard)],
        args=[
            *shard_args(redis, queue, shard),
            repr(time.time()),
            BATCH,
            "dead",
            0.6,
            0.6,
            "x",
            "0",
        ],
    )
    assert sorted(member for member, _, _ in claimed) == sorted(
        [polled.encode(), delivered.encode()]
    )
    claimed_at = time.monotonic()
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        outcomes = await handled.wait_for(2, timeout=5)
        took = time.monotonic() - claimed_at
        await eventually(partial(gone, redis, polled))
        await eventually(partial(gone, redis, delivered))
    assert sorted(outcome.execution_id for outcome in outcomes) == sorted([polled, delivered])
    assert took >= 0.6  # not before the lease ended
    assert len(finds(fake, polled)) == 1
    assert not await redis.keys("arq:job:*")


def counted_claims(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """Every claim the sweeps make from now on: (the sweep's job id, members claimed)."""
    claims: list[tuple[str, int]] = []

    def wrap(claim: Script) -> Script:
        async def counted(*args: Any, **kwargs: Any) -> Any:
            reply = await claim(*args, **kwargs)
            claims.append((kwargs["args"][-2], len(reply[1])))
            return reply

        return counted

    wrap_script(monkeypatch, "claim", wrap)
    return claims


async def test_a_backlog_is_worked_off_by_many_sweeps_each_within_its_budget(
    redis: ArqRedis, fake: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sweep claims again only within its time budget: a backlog never holds one job."""
    from aiotlink.arq import _worker

    monkeypatch.setattr(_worker, "BATCH", 4)
    monkeypatch.setattr(_worker, "SWEEP_BUDGET", 0.0)  # one claim per sweep
    claims = counted_claims(monkeypatch)
    done = fake.add_definition(statuses=["COMPLETED"])
    executions = [await start(fake, done) for _ in range(60)]
    for execution_id in executions:
        await follow(redis, execution_id, on_terminal="Handled")
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        await handled.wait_for(60, timeout=20)
    assert {outcome.execution_id for outcome in handled.outcomes} == set(executions)
    per_job: dict[str, int] = {}
    for job, _ in claims:
        per_job[job] = per_job.get(job, 0) + 1
    assert set(per_job.values()) == {1}, per_job  # each sweep claimed once, then ended
    assert max(count for _, count in claims) == 4  # a batch at most
    assert len(per_job) >= 2 * 60 / 4  # polls, then deliveries: many short sweeps


async def test_a_sweep_claims_again_while_members_are_due_within_its_budget(
    redis: ArqRedis, fake: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Within its budget, one sweep goes on claiming full batches of a shard."""
    from aiotlink.arq import _worker

    monkeypatch.setattr(_worker, "BATCH", 3)
    claims = counted_claims(monkeypatch)
    executions = await in_one_shard(fake, 7)
    for execution_id in executions:  # one shard, all due before the worker starts
        await follow(redis, execution_id, on_terminal="Handled")
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        await handled.wait_for(7)
    first_job = claims[0][0]
    # A full batch, then another (the rest may go to the sweep armed meanwhile).
    assert [count for job, count in claims if job == first_job][:2] == [3, 3]


async def test_a_write_back_that_redis_keeps_refusing_leaves_the_claims_to_expire(
    redis: ArqRedis,
    fake: FakeTransactionLink,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retried, then given up with an ERROR: the member is due again after its lease."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from aiotlink.arq import _worker

    monkeypatch.setattr(_worker, "WRITE_BACK_DELAYS", (0.01,))
    monkeypatch.setattr(_worker, "LEASE_MARGIN", 0.3)
    refused: list[float] = []

    def wrap(write_back: Script) -> Script:
        async def flaky(*args: Any, **kwargs: Any) -> Any:
            if len(refused) < 2:  # the first write-back and its one retry
                refused.append(time.monotonic())
                raise RedisConnectionError("Connection reset by peer")
            return await write_back(*args, **kwargs)

        return flaky

    wrap_script(monkeypatch, "write_back", wrap)
    execution_id = await start(fake, fake.add_definition(statuses=["COMPLETED"]))
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake), poll_timeout=0.4):
        await follow(redis, execution_id, on_terminal="Handled")
        [outcome] = await handled.wait_for(1, timeout=5)
    assert "due again when their claims expire" in caplog.text
    lookups = finds(fake, execution_id)
    assert len(lookups) == 2  # the first answer was lost with its write-back
    assert lookups[1].at - lookups[0].at >= 0.4 + 0.3 - 0.05  # after the lease
    assert outcome.kind is OutcomeKind.TERMINAL


async def test_a_worker_starts_whatever_redis_holds_or_says(
    redis: ArqRedis,
    fake: FakeTransactionLink,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A stray key under the due sets' prefix is skipped; a Redis error is only logged."""
    from aiotlink.arq import _worker

    await redis.zadd("aiotlink:due:no-shard", {"x": 1})
    async with running_worker(redis, [], **client_options(fake)) as worker:
        await eventually(lambda: "aiotlink" in worker.ctx)
    assert await redis.zcard("aiotlink:due:no-shard") == 1  # not ours: left alone
    assert not await redis.keys("aiotlink:armed:*")
    monkeypatch.setattr(_worker, "parse_due_key", lambda key: ("q", 1))
    _failing_once(monkeypatch, "heal")
    async with running_worker(redis, [], **client_options(fake)) as worker:
        await eventually(lambda: "aiotlink" in worker.ctx)
    assert "could not arm the sweeps of durable following at startup" in caplog.text


async def test_a_sweep_stays_for_what_comes_due_soon_instead_of_another_job(
    redis: ArqRedis, fake: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shard due every ~0.1 s is polled by few sweeps that stay, not one job per poll."""
    from aiotlink.arq._state import shard_of

    claims = counted_claims(monkeypatch)
    endless = fake.add_definition(statuses=["RUNNING"], step_seconds=3600)
    running: list[str] = []  # in one shard
    while len(running) < 3:
        execution_id = await start(fake, endless)
        if not running or shard_of(execution_id) == shard_of(running[0]):
            running.append(execution_id)
    handled = Handled()
    async with running_worker(redis, [handled], **client_options(fake)):
        for execution_id in running:
            await follow(
                redis, execution_id, on_terminal="Handled", poll_interval=0.1, max_poll_interval=0.1
            )
            await asyncio.sleep(0.03)
        await asyncio.sleep(1.5)
    polls = sum(len(finds(fake, execution_id)) for execution_id in running)
    jobs = {job for job, count in claims if count}
    assert polls >= 20
    assert len(jobs) <= polls / 8, (len(jobs), polls)  # sweeps stayed for several polls


async def test_follows_made_at_once_go_to_redis_together_each_with_its_own_answer(
    redis: ArqRedis,
) -> None:
    """A burst of follow() calls is one pipeline on one connection; errors stay their own."""
    from redis.exceptions import ResponseError

    ids = [str(uuid.uuid4()) for _ in range(200)]
    await redis.hset(generation_key(ids[7]), "not", "a counter")  # its INCR fails
    before = (await redis.info("stats"))["total_connections_received"]
    results = await asyncio.gather(
        *(follow(redis, execution_id, on_terminal="later") for execution_id in ids),
        return_exceptions=True,
    )
    connections = (await redis.info("stats"))["total_connections_received"] - before
    assert isinstance(results[7], ResponseError)
    assert "WRONGTYPE" in str(results[7])
    assert results[:7] + results[8:] == [True] * 199
    assert connections <= 2  # one round trip for the burst, not a connection per call
    assert len(await redis.keys("aiotlink:follow:*")) == 199
    # A caller cancelled while its follow waits for the burst's answer leaves the others
    # theirs (its own follow may still be made, as a request cut after it was sent).
    more = [str(uuid.uuid4()) for _ in range(20)]
    calls = [asyncio.create_task(follow(redis, key, on_terminal="later")) for key in more]
    await asyncio.sleep(0)
    calls[0].cancel()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(answers[0], asyncio.CancelledError)
    assert answers[1:] == [True] * 19


async def test_a_burst_of_follows_fails_together_when_redis_does_and_never_hangs() -> None:
    """No Redis: each caller gets the error. A batch cut off (the loop closing): cancelled."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    from aiotlink.arq._follow import _batch

    with socket.socket() as unused:  # a port nothing listens on
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    nobody = ArqRedis(host="127.0.0.1", port=port)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    results = await asyncio.gather(
        *(follow(nobody, key, on_terminal="later") for key in ids), return_exceptions=True
    )
    assert all(isinstance(result, RedisConnectionError) for result in results), results
    await nobody.aclose()
    # A "Redis" that never answers: the callers wait on the batch until it is cut off.
    held: list[asyncio.StreamWriter] = []
    silent = await asyncio.start_server(lambda reader, writer: held.append(writer), "127.0.0.1", 0)
    stuck = ArqRedis(host="127.0.0.1", port=silent.sockets[0].getsockname()[1])
    calls = [asyncio.create_task(follow(stuck, key, on_terminal="later")) for key in ids]
    await eventually(lambda: bool(held))
    sender = _batch(stuck).sender
    assert sender is not None
    sender.cancel()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(answer, asyncio.CancelledError) for answer in answers), answers
    for writer in held:
        writer.close()
    silent.close()
    await silent.wait_closed()
    await stuck.aclose()
