"""Waiting for executions: watch, wait_for_completion and run, against the fake server."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import inspect
import itertools
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from aiotlink import (
    NotFoundError,
    PermissionDeniedError,
    RunResult,
    TransactionLinkClient,
    WaitTimeoutError,
    WorkflowExecution,
    WorkflowFailedError,
    WorkflowStatus,
)
from aiotlink._arguments import UUID_PATTERN
from aiotlink._converter import decode_execution
from aiotlink._polling import (
    ADMITTED_PER_ITERATION,
    Lookup,
    Poller,
    PollSchedule,
    Subscription,
    _Timeline,
    poll_delay,
)
from aiotlink.testing import FakeTransactionLink, ManualClock

from .conftest import EXECUTION_ID, execution_body
from .servers import ScriptedServer, eventually, reply, stall

FAST = {"poll_interval": 0.01, "max_poll_interval": 0.02}
WALK = ["INITIALISED", "CREATED", "RUNNING", "AWAITING", "PAUSED", "RUNNING", "COMPLETED"]
FAILURES = ["FAILED", "TIMEOUT", "TERMINATED", "EXPIRED", "CANCELLED"]


@pytest.fixture
def client(transactionlink_client: TransactionLinkClient) -> TransactionLinkClient:
    """The plugin's client of the fake, retrying without sleeps."""
    return transactionlink_client.with_options(retry_backoff=False)


async def start(fake: FakeTransactionLink, client: TransactionLinkClient, **definition: Any) -> str:
    """Add a definition and initialise one execution of it; return the execution id."""
    definition_id = fake.add_definition(**definition)
    return (await client.workflows.initialise(definition_id)).id


async def next_change(subscription: Subscription) -> WorkflowExecution:
    """Wait for a subscription's next change, as watch does."""
    while (change := subscription.take()) is None:
        await subscription.changed()
    return change


def client_tasks() -> list[asyncio.Task[Any]]:
    """The running tasks executing the client's own code (not the fake server's)."""
    return [
        task for task in asyncio.all_tasks() if "/aiotlink/_" in task.get_coro().cr_code.co_filename
    ]


def lookup(**changes: Any) -> Lookup:
    """A poll's answer: the execution body with ``changes``, decoded, and no Retry-After.

    The poller's keys here are short names (``id-7``); the body's id must be a UUID
    (decode_execution refuses others), so a name becomes a UUID made from it.
    """
    key = changes.get("id")
    if isinstance(key, str) and not UUID_PATTERN.fullmatch(key):
        changes["id"] = str(uuid.uuid5(uuid.NAMESPACE_URL, key))
    body = json.dumps(execution_body(**changes)).encode()
    return Lookup(decode_execution(json.loads(body)), body, None)


async def never_answers(execution_id: str) -> Lookup:
    """A fetch whose request never ends (until cancelled)."""
    await asyncio.get_running_loop().create_future()
    raise AssertionError("unreachable")


def finds_of(fake: FakeTransactionLink, execution_id: str) -> int:
    """How many finds of ``execution_id`` the fake has answered."""
    return sum(r.path == f"/workflows/{execution_id}" for r in fake.requests_for("find"))


async def while_a_live_wait_polls(
    fake: FakeTransactionLink, client: TransactionLinkClient, polls: int = 5
) -> None:
    """Let another wait on the FAST schedule poll ``polls`` times, then cancel it.

    Long enough for a poll loop left behind on the same schedule to have polled too.
    """
    other = await start(fake, client, statuses=["RUNNING", "AWAITING"])
    before = finds_of(fake, other)
    live = asyncio.create_task(client.workflows.wait_for_completion(other, **FAST))
    await eventually(lambda: finds_of(fake, other) >= before + polls)
    live.cancel()
    with pytest.raises(asyncio.CancelledError):
        await live


async def settle() -> None:
    """Let cancelled tasks and closed generators finish their last step."""
    for _ in range(5):
        await asyncio.sleep(0)


# --- the schedule (pure) ------------------------------------------------------


def test_schedule_grows_by_the_factor_up_to_the_cap() -> None:
    """Unchanged polls grow the interval by the factor, capped at max_poll_interval."""
    schedule = PollSchedule(1.0, 4.0, 1.5)
    intervals = [1.0]
    for _ in range(5):
        intervals.append(schedule.next_interval(intervals[-1]))
    assert intervals == [1.0, 1.5, 2.25, 3.375, 4.0, 4.0]


def test_jitter_only_shortens_and_retry_after_is_a_floor() -> None:
    """Jitter takes off up to 20%; a Retry-After longer than the gap wins."""
    assert poll_delay(10.0, retry_after=None, random_fraction=0.0) == 10.0
    assert poll_delay(10.0, retry_after=None, random_fraction=1.0) == 8.0
    assert poll_delay(10.0, retry_after=30.0, random_fraction=0.5) == 30.0
    assert poll_delay(10.0, retry_after=1.0, random_fraction=0.0) == 10.0


def test_cap_below_the_interval_is_raised_to_it() -> None:
    """poll_interval=60 with the default cap of 15 s means every 60 s."""
    assert PollSchedule(60.0).max_poll_interval == 60.0


def test_merged_schedule_is_the_most_eager() -> None:
    """Waiters sharing a poll loop get the smallest interval, cap and factor among them."""
    merged = PollSchedule.merge([PollSchedule(2.0, 10.0, 2.0), PollSchedule(1.0, 20.0, 1.2)])
    assert merged == PollSchedule(1.0, 10.0, 1.2)


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"poll_interval": 0}, "poll_interval"),
        ({"poll_interval": True}, "poll_interval"),
        ({"max_poll_interval": -1}, "max_poll_interval"),
        ({"factor": 0.5}, "poll_factor"),
        ({"factor": "2"}, "poll_factor"),
    ],
)
def test_bad_schedules_name_the_argument(kwargs: dict[str, Any], named: str) -> None:
    """A malformed schedule raises ValueError naming the argument."""
    with pytest.raises(ValueError, match=named):
        PollSchedule(**kwargs)


# --- watch ----------------------------------------------------------------------


async def test_watch_yields_each_change_through_awaiting_and_paused(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """watch yields the first status and each change (AWAITING, PAUSED too), then ends."""
    execution_id = await start(fake_transactionlink, client, statuses=WALK)
    seen = [e.status async for e in client.workflows.watch(execution_id, **FAST)]
    # initialise showed INITIALISED; the fake moves one status per find.
    assert seen == [WorkflowStatus(s) for s in WALK[1:]]
    assert len(fake_transactionlink.requests_for("find")) == len(WALK) - 1


async def test_watch_yields_only_changes(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Polls that see the same status yield nothing."""
    walk = ["RUNNING", "RUNNING", "RUNNING", "AWAITING", "AWAITING", "COMPLETED"]
    execution_id = await start(fake_transactionlink, client, statuses=walk)
    seen = [e.status.value async for e in client.workflows.watch(execution_id, **FAST)]
    assert seen == ["RUNNING", "AWAITING", "COMPLETED"]


async def test_already_terminal_takes_one_request(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """An execution that has already ended is returned after one lookup, without waiting."""
    execution_id = await start(fake_transactionlink, client, statuses=["COMPLETED"])
    before = len(fake_transactionlink.requests)
    execution = await client.workflows.wait_for_completion(execution_id, poll_interval=60.0)
    assert execution.status is WorkflowStatus.COMPLETED
    assert len(fake_transactionlink.requests) == before + 1


async def test_watch_timeout_raises_with_the_last_execution(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """watch's timeout raises WaitTimeoutError carrying the last execution seen."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "AWAITING"])
    watching = client.workflows.watch(execution_id, timeout=0.2, **FAST)
    first = await anext(watching)  # AWAITING: the fake's first find moves one status on
    with pytest.raises(WaitTimeoutError) as caught:
        await anext(watching)
    assert caught.value.execution == first  # the same answer, decoded again
    assert first.status is WorkflowStatus.AWAITING


# --- wait_for_completion --------------------------------------------------------


async def test_wait_returns_the_completed_execution_and_calls_on_status(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """wait_for_completion returns COMPLETED; a sync on_status sees every change once."""
    execution_id = await start(fake_transactionlink, client, statuses=WALK)
    seen: list[str] = []
    execution = await client.workflows.wait_for_completion(
        execution_id, on_status=lambda e: seen.append(e.status.value), **FAST
    )
    assert execution.status is WorkflowStatus.COMPLETED
    assert seen == WALK[1:]


async def test_async_on_status_is_awaited(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A coroutine function as on_status is awaited once per change."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "COMPLETED"])
    seen: list[str] = []

    async def record(execution: WorkflowExecution) -> None:
        await asyncio.sleep(0)
        seen.append(execution.status.value)

    await client.workflows.wait_for_completion(execution_id, on_status=record, **FAST)
    assert seen == ["COMPLETED"]


@pytest.mark.parametrize("failure", FAILURES)
async def test_each_failure_status_raises(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient, failure: str
) -> None:
    """Every terminal status but COMPLETED raises WorkflowFailedError with the execution."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", failure])
    with pytest.raises(WorkflowFailedError) as caught:
        await client.workflows.wait_for_completion(execution_id, **FAST)
    assert caught.value.status == failure
    assert caught.value.execution.id == execution_id


@pytest.mark.parametrize("failure", FAILURES)
async def test_failures_returned_when_asked(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient, failure: str
) -> None:
    """raise_on_failure=False returns the failed execution instead."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", failure])
    execution = await client.workflows.wait_for_completion(
        execution_id, raise_on_failure=False, **FAST
    )
    assert execution.status == failure


async def test_timeout_leaves_the_remote_execution_running(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Past timeout: WaitTimeoutError with the last execution; no cancel is sent."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "AWAITING"])
    with pytest.raises(WaitTimeoutError) as caught:
        await client.workflows.wait_for_completion(execution_id, timeout=0.2, **FAST)
    assert caught.value.execution is not None
    assert caught.value.execution.status is WorkflowStatus.AWAITING
    assert fake_transactionlink.requests_for("cancel") == []
    assert fake_transactionlink.status_of(execution_id) == "AWAITING"


async def test_timeout_cancels_the_remote_execution_when_asked(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """cancel_on_timeout=True cancels the remote execution before raising."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "AWAITING"])
    with pytest.raises(WaitTimeoutError):
        await client.workflows.wait_for_completion(
            execution_id, timeout=0.1, cancel_on_timeout=True, **FAST
        )
    assert fake_transactionlink.status_of(execution_id) == "CANCELLED"


async def test_deadline_holds_with_retries_in_flight(
    fake_transactionlink: FakeTransactionLink, transactionlink_client: TransactionLinkClient
) -> None:
    """The deadline covers retries: a wait stuck sleeping between retries ends on time."""
    client = transactionlink_client.with_options(retry_backoff=True)
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "COMPLETED"])
    fake_transactionlink.fail_next("find", 503, times=10, retry_after=1)
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError) as caught:
        await client.workflows.wait_for_completion(execution_id, timeout=0.3)
    assert time.monotonic() - started < 1.0  # did not sleep through the Retry-After
    assert caught.value.execution is None
    assert caught.value.timeout == 0.3


async def test_transient_errors_do_not_end_the_wait(
    fake_transactionlink: FakeTransactionLink, transactionlink_client: TransactionLinkClient
) -> None:
    """503s beyond the session layer's retries skip polls; the wait goes on and completes."""
    client = transactionlink_client.with_options(max_retries=1, retry_backoff=False)
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "COMPLETED"])
    fake_transactionlink.fail_next("find", 503, times=5, body="html")
    execution = await client.workflows.wait_for_completion(execution_id, **FAST)
    assert execution.status is WorkflowStatus.COMPLETED
    assert len(fake_transactionlink.requests_for("find")) == 6


@pytest.mark.parametrize(("status", "error"), [(403, PermissionDeniedError), (404, NotFoundError)])
async def test_permanent_errors_end_the_wait_at_once(
    fake_transactionlink: FakeTransactionLink,
    client: TransactionLinkClient,
    status: int,
    error: type[Exception],
) -> None:
    """403 and 404 on a poll end the wait with their error, without further polls."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "COMPLETED"])
    fake_transactionlink.fail_next("find", status)
    with pytest.raises(error):
        await client.workflows.wait_for_completion(execution_id, **FAST)
    assert len(fake_transactionlink.requests_for("find")) == 1


async def test_unknown_execution_ends_with_not_found(client: TransactionLinkClient) -> None:
    """Waiting on an id the API does not know raises NotFoundError."""
    with pytest.raises(NotFoundError):
        await client.workflows.wait_for_completion(EXECUTION_ID, **FAST)


async def test_long_rate_limit_on_a_poll_is_waited_out(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A 429 with a Retry-After too long for the session layer delays the next poll."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "COMPLETED"])
    fake_transactionlink.fail_next("find", 429, retry_after=120)
    with pytest.raises(WaitTimeoutError):
        await client.workflows.wait_for_completion(execution_id, timeout=0.3, **FAST)
    assert len(fake_transactionlink.requests_for("find")) == 1


async def test_retry_after_on_a_poll_answer_is_honoured(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Retry-After on a 200 poll answer sets a floor under the next gap."""
    server.script(
        "GET",
        f"/workflows/{EXECUTION_ID}",
        reply(200, execution_body(status="RUNNING"), headers={"Retry-After": "0.25"}),
        reply(200, execution_body(status="COMPLETED")),
    )
    floors: list[float | None] = []

    def recording_delay(
        interval: float, *, retry_after: float | None, random_fraction: float
    ) -> float:
        floors.append(retry_after)
        return poll_delay(interval, retry_after=retry_after, random_fraction=random_fraction)

    monkeypatch.setattr("aiotlink._polling.poll_delay", recording_delay)
    async with TransactionLinkClient("tot_x", base_url=server.url) as client:
        started = time.monotonic()
        await client.workflows.wait_for_completion(EXECUTION_ID, **FAST)
        assert time.monotonic() - started >= 0.25
    assert floors == [0.25]


async def test_other_timeout_errors_pass_through_unchanged(
    client: TransactionLinkClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A TimeoutError from polling that is not the wait's deadline is raised as it is."""

    async def timing_out(execution_id: str) -> Lookup:
        raise TimeoutError("from somewhere else")

    monkeypatch.setattr(client.workflows, "_find", timing_out)
    with pytest.raises(TimeoutError, match="from somewhere else") as caught:
        await client.workflows.wait_for_completion(EXECUTION_ID, timeout=30)
    assert not isinstance(caught.value, WaitTimeoutError)


async def test_bad_arguments_raise_before_any_request(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Malformed ids, schedules or timeouts raise ValueError naming them; nothing is sent."""
    for call, named in [
        (client.workflows.wait_for_completion("a/b"), "execution_id"),
        (client.workflows.wait_for_completion(EXECUTION_ID, timeout=0), "timeout"),
        (client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=-1), "poll_interval"),
        (client.workflows.run("kyc", timeout=-5), "timeout"),
    ]:
        with pytest.raises(ValueError, match=named):
            await call
    watching = client.workflows.watch("a/b")  # an async generator: checked when it runs
    assert inspect.isasyncgen(watching)
    with pytest.raises(ValueError, match="execution_id"):
        await anext(watching)
    # Checked before the wait takes its turn: even cancelled while it would be queued,
    # a bad wait asked to cancel the remote execution raises and sends nothing.
    bad = asyncio.create_task(
        client.workflows.wait_for_completion(
            EXECUTION_ID, poll_interval=-1, cancel_remote_on_cancel=True
        )
    )
    await asyncio.sleep(0)
    bad.cancel()
    with pytest.raises(ValueError, match="poll_interval"):
        await bad
    assert fake_transactionlink.requests == []


# --- cancellation ---------------------------------------------------------------


@pytest.mark.parametrize("moment", ["mid-sleep", "mid-request"])
async def test_cancelling_the_waiter_stops_polling_at_once(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient, moment: str
) -> None:
    """Cancelling the waiting task re-raises CancelledError and leaves no task or poll."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "AWAITING"])
    if moment == "mid-request":
        fake_transactionlink.slow_next("find", 30.0, times=5)
    waiter = asyncio.create_task(
        client.workflows.wait_for_completion(execution_id, poll_interval=30.0)
    )
    await eventually(lambda: len(fake_transactionlink.requests_for("find")) == 1)
    poller = client.workflows._poller
    if moment == "mid-sleep":
        # The answer is in and the next poll is 30 s away.
        await eventually(lambda: poller._in_flight == 0 and len(poller._due_polls) == 1)
    else:
        assert poller._in_flight == 1  # the fake has the request and holds it for 30 s
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await settle()
    assert client_tasks() == []
    assert client.workflows._poller is not None
    assert client.workflows._poller.active_polls == 0
    assert fake_transactionlink.requests_for("cancel") == []


async def test_asyncio_timeout_around_a_wait(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """asyncio.timeout() around wait_for_completion ends it with TimeoutError, cleanly."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "AWAITING"])
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await client.workflows.wait_for_completion(execution_id, **FAST)
    await settle()
    assert client_tasks() == []
    polls = finds_of(fake_transactionlink, execution_id)
    await while_a_live_wait_polls(fake_transactionlink, client)
    assert finds_of(fake_transactionlink, execution_id) == polls


async def test_cancel_remote_on_cancel(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """cancel_remote_on_cancel=True sends the remote cancel before re-raising."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "AWAITING"])
    waiter = asyncio.create_task(
        client.workflows.wait_for_completion(
            execution_id, cancel_remote_on_cancel=True, poll_interval=30.0
        )
    )
    await eventually(lambda: len(fake_transactionlink.requests_for("find")) == 1)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert fake_transactionlink.status_of(execution_id) == "CANCELLED"


async def test_failed_remote_cancel_is_logged_not_raised(
    fake_transactionlink: FakeTransactionLink,
    client: TransactionLinkClient,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """If the remote cancel fails, the timeout is still what the caller gets."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "AWAITING"])
    fake_transactionlink.fail_next("cancel", 500, times=5)
    with pytest.raises(WaitTimeoutError):
        await client.workflows.wait_for_completion(
            execution_id, timeout=0.1, cancel_on_timeout=True, **FAST
        )
    assert "could not cancel execution" in caplog.text


# --- sharing and scale ----------------------------------------------------------


async def test_waiters_on_one_id_share_one_poll_loop(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Ten concurrent waits on the same execution poll it as often as one would."""
    execution_id = await start(fake_transactionlink, client, statuses=WALK)
    results = await asyncio.gather(
        *(client.workflows.wait_for_completion(execution_id, **FAST) for _ in range(10))
    )
    assert {r.status for r in results} == {WorkflowStatus.COMPLETED}
    assert len(fake_transactionlink.requests_for("find")) == len(WALK) - 1


async def test_late_waiter_gets_the_latest_status_at_once(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A waiter joining a running poll loop starts from the latest status seen."""
    walk = ["RUNNING", "AWAITING", "AWAITING", "AWAITING", "COMPLETED"]
    execution_id = await start(fake_transactionlink, client, statuses=walk)
    first = client.workflows.watch(execution_id, poll_interval=0.05, max_poll_interval=0.05)
    assert (await anext(first)).status is WorkflowStatus.AWAITING
    second = client.workflows.watch(execution_id, poll_interval=0.05, max_poll_interval=0.05)
    assert (await anext(second)).status is WorkflowStatus.AWAITING
    assert [e.status async for e in second] == [WorkflowStatus.COMPLETED]
    assert [e.status async for e in first] == [WorkflowStatus.COMPLETED]


async def test_waiters_hold_no_decoded_execution_between_changes() -> None:
    """While waits wait, no decoded execution stays alive: the poll keeps the answer's bytes.

    At 10,000 waiters, decoded executions kept alive were a fifth of what every full
    collection of CPython's garbage collector walked (benchmarks/NOTES.md).
    """
    clock = ManualClock()
    seen: list[str] = []

    def on_status(execution: WorkflowExecution) -> None:
        seen.append(execution.status.value)

    async with FakeTransactionLink(clock=clock) as fake:
        client = TransactionLinkClient(fake.token, base_url=fake.url)
        async with client:
            definition = fake.add_definition(statuses=["RUNNING", "COMPLETED"], step_seconds=1)
            ids = [(await client.workflows.initialise(definition)).id for _ in range(10)]
            waits = [client.workflows.wait_for_completion(i, **FAST) for i in ids[:5]]
            waits += [
                client.workflows.wait_for_completion(i, on_status=on_status, **FAST)
                for i in ids[5:]
            ]
            waiting = asyncio.gather(*waits)
            await eventually(lambda: len(seen) == 5)  # each has seen its first status
            # A few unchanged polls on each: the clock stands still.
            polled = {i: finds_of(fake, i) for i in ids}
            await eventually(lambda: all(finds_of(fake, i) >= polled[i] + 3 for i in ids))
            gc.collect()
            alive = sum(isinstance(o, WorkflowExecution) for o in gc.get_objects())
            clock.advance(10)
            finished = await waiting
    assert alive == 0
    assert {e.status for e in finished} == {WorkflowStatus.COMPLETED}


async def test_a_wait_without_on_status_sleeps_from_start_to_end(
    fake_transactionlink: FakeTransactionLink,
    client: TransactionLinkClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without on_status a wait is woken once, by the end, however many changes come first."""
    wake_ups = 0
    changed = Subscription.changed

    def counted(subscription: Subscription) -> asyncio.Future[None]:
        nonlocal wake_ups
        wake_ups += 1
        return changed(subscription)

    monkeypatch.setattr(Subscription, "changed", counted)
    execution_id = await start(fake_transactionlink, client, statuses=WALK)
    assert (await client.workflows.wait_for_completion(execution_id, **FAST)).is_terminal
    assert wake_ups == 1
    statuses: list[str] = []
    execution_id = await start(fake_transactionlink, client, statuses=WALK)
    await client.workflows.wait_for_completion(
        execution_id, on_status=lambda e: statuses.append(e.status.value), **FAST
    )
    assert len(statuses) == len(WALK) - 1  # the first status seen is WALK[1]
    assert wake_ups == 1 + len(statuses)


@pytest.mark.parametrize("with_on_status", [False, True])
async def test_a_timeout_after_several_changes_carries_the_latest(
    fake_transactionlink: FakeTransactionLink,
    client: TransactionLinkClient,
    with_on_status: bool,
) -> None:
    """WaitTimeoutError carries the latest status seen, whether or not the wait took each."""
    walk = ["RUNNING", "AWAITING", "PAUSED"]
    execution_id = await start(fake_transactionlink, client, statuses=walk)
    seen: list[str] = []
    on_status = (lambda e: seen.append(e.status.value)) if with_on_status else None
    with pytest.raises(WaitTimeoutError) as caught:
        await client.workflows.wait_for_completion(
            execution_id, timeout=0.3, on_status=on_status, **FAST
        )
    assert caught.value.execution is not None
    assert caught.value.execution.status is WorkflowStatus.PAUSED
    assert seen == (walk[1:] if with_on_status else [])


async def test_a_late_watcher_after_several_changes_starts_from_the_latest(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A watcher joining after two changes gets the second at once, not the first."""
    walk = ["RUNNING", "AWAITING", "PAUSED", "PAUSED", "PAUSED", "COMPLETED"]
    execution_id = await start(fake_transactionlink, client, statuses=walk)
    first = client.workflows.watch(execution_id, poll_interval=0.05, max_poll_interval=0.05)
    assert (await anext(first)).status is WorkflowStatus.AWAITING
    assert (await anext(first)).status is WorkflowStatus.PAUSED
    second = client.workflows.watch(execution_id, poll_interval=0.05, max_poll_interval=0.05)
    assert (await anext(second)).status is WorkflowStatus.PAUSED
    assert [e.status async for e in second] == [WorkflowStatus.COMPLETED]
    assert [e.status async for e in first] == [WorkflowStatus.COMPLETED]


async def test_mixed_waiters_on_one_id_each_get_what_they_asked_for(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A plain wait, a wait with on_status and a late watch share one poll, each served."""
    walk = ["RUNNING", "AWAITING", "PAUSED", "PAUSED", "PAUSED", "COMPLETED"]
    execution_id = await start(fake_transactionlink, client, statuses=walk)
    schedule = {"poll_interval": 0.05, "max_poll_interval": 0.05}
    seen: list[str] = []
    plain = asyncio.create_task(client.workflows.wait_for_completion(execution_id, **schedule))
    await eventually(lambda: client.workflows._poller.active_polls == 1)  # plain's poll loop
    reported = asyncio.create_task(
        client.workflows.wait_for_completion(
            execution_id, on_status=lambda e: seen.append(e.status.value), **schedule
        )
    )
    await eventually(lambda: "PAUSED" in seen)
    late = client.workflows.watch(execution_id, **schedule)
    assert (await anext(late)).status is WorkflowStatus.PAUSED
    assert [e.status async for e in late] == [WorkflowStatus.COMPLETED]
    assert (await plain).status is (await reported).status is WorkflowStatus.COMPLETED
    assert seen == ["AWAITING", "PAUSED", "COMPLETED"]
    assert len(fake_transactionlink.requests_for("find")) == len(walk) - 1


async def test_the_last_of_several_waiters_to_leave_stops_the_poll(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Two waits on one id, both cancelled: no poll, task or request is left behind."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING"] * 3)
    waits = [
        asyncio.create_task(client.workflows.wait_for_completion(execution_id, **FAST))
        for _ in range(2)
    ]
    await eventually(lambda: len(fake_transactionlink.requests_for("find")) >= 2)
    for wait in waits:
        wait.cancel()
    for wait in waits:
        with pytest.raises(asyncio.CancelledError):
            await wait
    await settle()
    assert client.workflows._poller.active_polls == 0
    assert client_tasks() == []
    finds = finds_of(fake_transactionlink, execution_id)
    await while_a_live_wait_polls(fake_transactionlink, client)
    assert finds_of(fake_transactionlink, execution_id) == finds


async def test_shared_waiters_poll_on_the_most_eager_schedule() -> None:
    """A slow waiter and a fast one on one id: polls come as often as the fast one asks."""
    async with FakeTransactionLink(clock=ManualClock()) as fake:
        client = TransactionLinkClient(fake.token, base_url=fake.url)
        async with client:
            definition = fake.add_definition(statuses=["RUNNING"], step_seconds=1)
            execution_id = (await client.workflows.initialise(definition)).id
            fake.slow_next("find", 0.1)
            slow = asyncio.create_task(
                client.workflows.wait_for_completion(execution_id, poll_interval=60)
            )
            # The slow waiter's first lookup is out, held by the fake: the fast one joins.
            await eventually(lambda: len(fake.requests_for("find")) == 1)
            with pytest.raises(WaitTimeoutError):
                await client.workflows.wait_for_completion(execution_id, timeout=0.3, **FAST)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            assert len(fake.requests_for("find")) >= 5


async def test_a_fast_waiter_joining_a_poll_loop_in_a_long_gap_is_polled_as_it_asks() -> None:
    """A fast waiter joining a loop whose next poll is a minute away gets polls as it asks."""
    async with FakeTransactionLink(clock=ManualClock()) as fake:
        client = TransactionLinkClient(fake.token, base_url=fake.url)
        async with client:
            definition = fake.add_definition(statuses=["RUNNING"], step_seconds=1)
            execution_id = (await client.workflows.initialise(definition)).id
            slow = asyncio.create_task(
                client.workflows.wait_for_completion(execution_id, poll_interval=60)
            )
            poller = client.workflows._poller
            # The slow waiter's first answer is in: its next poll is a minute away.
            await eventually(lambda: fake.requests_for("find") and poller._in_flight == 0)
            with pytest.raises(WaitTimeoutError):
                await client.workflows.wait_for_completion(execution_id, timeout=0.3, **FAST)
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow
            assert len(fake.requests_for("find")) >= 5


def test_a_lookups_repr_keeps_the_token_out() -> None:
    """The answer's bytes hold the execution's token: a Lookup's repr shows their length."""
    secret = "tot_secret_token_that_must_not_leak"
    answer = lookup(token=secret)
    assert secret in answer.body.decode()
    assert secret not in repr(answer)
    assert f"{len(answer.body)} bytes" in repr(answer)


async def test_requests_in_flight_are_bounded() -> None:
    """The poller never has more requests in flight than its limit, however many waiters."""
    in_flight = 0
    peak = 0
    polls: dict[str, int] = {}

    async def fetch(execution_id: str) -> Lookup:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.001)
        in_flight -= 1
        polls[execution_id] = polls.get(execution_id, 0) + 1
        status = "COMPLETED" if polls[execution_id] == 3 else "RUNNING"
        return lookup(id=execution_id, status=status)

    poller = Poller(fetch, max_in_flight=5)
    schedule = PollSchedule(0.001, 0.002)

    async def wait(execution_id: str) -> WorkflowStatus:
        subscription = poller.subscribe(execution_id, schedule)
        try:
            while True:
                execution = await next_change(subscription)
                if execution.is_terminal:
                    return execution.status
        finally:
            poller.unsubscribe(subscription)

    statuses = await asyncio.gather(*(wait(f"id-{n}") for n in range(200)))
    assert set(statuses) == {WorkflowStatus.COMPLETED}
    assert peak == 5
    assert set(polls.values()) == {3}
    assert poller.active_polls == 0


async def test_a_waiter_leaving_while_queued_frees_its_place() -> None:
    """A poll queued behind the in-flight limit is dropped when its waiter leaves."""
    release = asyncio.Event()
    fetched: list[str] = []

    async def fetch(execution_id: str) -> Lookup:
        fetched.append(execution_id)
        await release.wait()
        return lookup(id=execution_id, status="COMPLETED")

    poller = Poller(fetch, max_in_flight=1)
    first = poller.subscribe("first", PollSchedule())
    queued = poller.subscribe("queued", PollSchedule())
    await settle()
    poller.unsubscribe(queued)
    release.set()
    assert (await next_change(first)).status is WorkflowStatus.COMPLETED
    await settle()
    assert fetched == ["first"]
    assert poller.active_polls == 0


async def test_a_bug_in_fetch_ends_the_wait_instead_of_hanging() -> None:
    """An unexpected exception while polling reaches every waiter; nobody hangs."""

    async def broken(execution_id: str) -> Lookup:
        raise KeyError(execution_id)

    poller = Poller(broken, max_in_flight=2)
    first = poller.subscribe("x", PollSchedule())
    second = poller.subscribe("x", PollSchedule())
    for subscription in (first, second):
        with pytest.raises(KeyError):
            await next_change(subscription)
    poller.unsubscribe(first)
    poller.unsubscribe(second)
    assert poller.active_polls == 0


async def test_waits_started_together_are_let_in_a_batch_per_loop_iteration() -> None:
    """Turns are granted in order, at most ADMITTED_PER_ITERATION per loop iteration."""
    poller = Poller(never_answers, max_in_flight=10)
    count = 2 * ADMITTED_PER_ITERATION + 5
    turns = [poller.admission() for _ in range(count)]
    turns[1].cancel()  # a wait cancelled while queued is skipped, taking no place
    granted = []
    for _ in range(4):
        await asyncio.sleep(0)  # one loop iteration
        granted.append([n for n, turn in enumerate(turns) if turn.done() and not turn.cancelled()])
    first, second, third, fourth = granted
    assert first == [0, *range(2, ADMITTED_PER_ITERATION + 1)]  # in order
    assert len(second) == 2 * ADMITTED_PER_ITERATION
    assert len(third) == len(fourth) == count - 1


async def test_first_lookups_wait_until_every_queued_wait_is_in() -> None:
    """No poll starts while waits are queued: their objects are all made before any answer."""
    admitted_at_first_fetch: list[int] = []
    turns: list[asyncio.Future[None]] = []

    async def fetch(execution_id: str) -> Lookup:
        admitted_at_first_fetch.append(sum(turn.done() for turn in turns))
        return lookup(id=execution_id, status="COMPLETED")

    poller = Poller(fetch, max_in_flight=10)

    async def wait(execution_id: str) -> WorkflowStatus:
        turn = poller.admission()
        turns.append(turn)
        await turn
        subscription = poller.subscribe(execution_id, PollSchedule(), every_change=False)
        try:
            return (await next_change(subscription)).status
        finally:
            poller.unsubscribe(subscription)

    count = 3 * ADMITTED_PER_ITERATION
    async with asyncio.timeout(10):  # a lookup held for good would hang the waits
        statuses = await asyncio.gather(*(wait(f"id-{n}") for n in range(count)))
    assert set(statuses) == {WorkflowStatus.COMPLETED}
    assert admitted_at_first_fetch[0] == count
    assert poller.active_polls == 0


@pytest.mark.parametrize("on_status", [None, print], ids=["end-only", "each-change"])
async def test_waits_come_in_by_turns(
    fake_transactionlink: FakeTransactionLink,
    client: TransactionLinkClient,
    on_status: Callable[[WorkflowExecution], None] | None,
) -> None:
    """Waits started together subscribe at most ADMITTED_PER_ITERATION per loop iteration."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "COMPLETED"])
    started = ADMITTED_PER_ITERATION + 1
    waits = [
        asyncio.create_task(
            client.workflows.wait_for_completion(execution_id, on_status=on_status, **FAST)
        )
        for _ in range(started)
    ]
    poller = client.workflows._poller
    subscribed = [0]
    while subscribed[-1] < started and len(subscribed) < 20:
        await asyncio.sleep(0)  # one loop iteration
        subscribed.append(poller._waiting)
    steps = [after - before for before, after in itertools.pairwise(subscribed)]
    assert max(steps) <= ADMITTED_PER_ITERATION
    assert subscribed[-1] == started
    finished = await asyncio.gather(*waits)
    assert {execution.status for execution in finished} == {WorkflowStatus.COMPLETED}


async def test_a_turn_counts_against_the_timeout_and_a_late_one_sends_nothing(
    fake_transactionlink: FakeTransactionLink,
    client: TransactionLinkClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The deadline runs from the call; a wait whose turn came after it never looks up."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "AWAITING"])
    lookups: list[str] = []
    find = client.workflows._find

    async def recording_find(execution_id: str) -> Lookup:
        lookups.append(execution_id)
        return await find(execution_id)

    monkeypatch.setattr(client.workflows, "_find", recording_find)
    waiting = asyncio.create_task(client.workflows.wait_for_completion(execution_id, timeout=0.01))
    # Runs right after the wait's first step, before its turn: the loop is held up past
    # the wait's whole timeout.
    asyncio.get_running_loop().call_soon(time.sleep, 0.05)
    with pytest.raises(WaitTimeoutError) as raised:
        await waiting
    assert raised.value.execution is None
    assert lookups == []
    assert fake_transactionlink.requests_for("find") == []
    assert client.workflows._poller.active_polls == 0


async def test_held_first_lookups_wait_for_the_last_turn_while_other_polls_run() -> None:
    """Polls already running go on during admission; new ones start only once all are in."""
    queued_at_first_fetch: dict[str, int] = {}
    running_polls_while_queued = 0
    poller: Poller

    async def fetch(execution_id: str) -> Lookup:
        nonlocal running_polls_while_queued
        queued_at_first_fetch.setdefault(execution_id, len(poller._queued))
        if execution_id == "running":
            running_polls_while_queued += bool(poller._queued)
            await asyncio.sleep(0)  # its answers land while turns are still queued
            return lookup(id=execution_id, status="RUNNING")
        return lookup(id=execution_id, status="COMPLETED")

    poller = Poller(fetch, max_in_flight=10)
    running = poller.subscribe("running", PollSchedule(0.0001, 0.0001))
    await next_change(running)

    async def wait(execution_id: str) -> None:
        await poller.admission()
        subscription = poller.subscribe(execution_id, PollSchedule())
        try:
            await next_change(subscription)
        finally:
            poller.unsubscribe(subscription)

    count = 5 * ADMITTED_PER_ITERATION
    async with asyncio.timeout(10):  # a lookup held for good would hang here
        await asyncio.gather(*(wait(f"id-{n}") for n in range(count)))
    poller.unsubscribe(running)
    assert running_polls_while_queued > 0
    assert len(queued_at_first_fetch) == count + 1
    assert {at for name, at in queued_at_first_fetch.items() if name != "running"} == {0}


def test_turns_left_by_a_closed_loop_do_not_hold_up_the_next_loop() -> None:
    """A loop closed with turns queued leaves them behind; the next loop's waits go on."""
    poller = Poller(never_answers, max_in_flight=1)

    async def queue_turns_and_leave() -> None:
        # One batch is granted before the loop stops; the last turn is left queued.
        for _ in range(ADMITTED_PER_ITERATION + 1):
            poller.admission()

    first = asyncio.new_event_loop()
    first.run_until_complete(queue_turns_and_leave())
    first.close()
    assert len(poller._queued) == 1

    async def take_a_turn() -> None:
        await asyncio.wait_for(poller.admission(), timeout=1)

    asyncio.run(take_a_turn())


async def test_a_wait_cancelled_before_its_turn_leaves_nothing_behind(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Cancelled while queued behind other waits: CancelledError, no poll, others go on."""
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "COMPLETED"])
    queued = ADMITTED_PER_ITERATION + 1  # the last one waits at least one more iteration
    waits = [
        asyncio.create_task(client.workflows.wait_for_completion(execution_id, **FAST))
        for _ in range(queued)
    ]
    await asyncio.sleep(0)  # every wait has taken its turn; the first batch is not in yet
    waits[-1].cancel()
    with pytest.raises(asyncio.CancelledError):
        await waits[-1]
    async with asyncio.timeout(10):  # a turn left ungranted would hang the others
        finished = await asyncio.gather(*waits[:-1])
    assert {execution.status for execution in finished} == {WorkflowStatus.COMPLETED}
    await settle()
    assert client_tasks() == []
    assert client.workflows._poller.active_polls == 0


# --- run ------------------------------------------------------------------------


async def test_run_initialises_waits_and_fetches(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """run returns the completed execution and its result."""
    definition = fake_transactionlink.add_definition(statuses=WALK, result={"decision": "OK"})
    outcome = await client.workflows.run(definition, parameters={"a": 1}, timeout=10, **FAST)
    assert isinstance(outcome, RunResult)
    assert outcome.execution.status is WorkflowStatus.COMPLETED
    assert outcome.result == {"decision": "OK"}


async def test_run_of_a_failing_workflow(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """run raises WorkflowFailedError, or returns no result with raise_on_failure=False."""
    definition = fake_transactionlink.add_definition(statuses=["RUNNING", "FAILED"])
    with pytest.raises(WorkflowFailedError):
        await client.workflows.run(definition, **FAST)
    outcome = await client.workflows.run(definition, raise_on_failure=False, **FAST)
    assert (outcome.execution.status, outcome.result) == (WorkflowStatus.FAILED, None)


@pytest.mark.parametrize("phase", ["initialise", "wait", "result"])
async def test_run_has_one_deadline(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient, phase: str
) -> None:
    """run's timeout covers initialise, the wait and the result fetch alike."""
    walk = ["RUNNING", "AWAITING"] if phase == "wait" else ["RUNNING", "COMPLETED"]
    definition = fake_transactionlink.add_definition(statuses=walk)
    route = {"initialise": "initialise", "wait": "find", "result": "result"}[phase]
    if phase != "wait":
        fake_transactionlink.slow_next(route, 5.0)
    with pytest.raises(WaitTimeoutError) as caught:
        await client.workflows.run(definition, timeout=0.3, **FAST)
    if phase == "initialise":
        assert caught.value.execution is None
    else:
        assert caught.value.execution is not None


async def test_run_passes_other_timeouts_through(
    fake_transactionlink: FakeTransactionLink, transactionlink_client: TransactionLinkClient
) -> None:
    """An APITimeoutError inside run is not mistaken for run's own deadline."""
    client = transactionlink_client.with_options(timeout=0.05, max_retries=0)
    definition = fake_transactionlink.add_definition(statuses=["COMPLETED"])
    fake_transactionlink.slow_next("initialise", 1.0)
    with pytest.raises(TimeoutError) as caught:
        await client.workflows.run(definition, timeout=30)
    assert not isinstance(caught.value, WaitTimeoutError)


def test_closing_the_loop_with_polls_pending_starts_nothing_new(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A loop closed while polls are in flight and queued ends them without errors."""
    loop = asyncio.new_event_loop()
    poller = Poller(never_answers, max_in_flight=1)

    async def subscribe_two(poller: Poller) -> None:
        poller.subscribe("in-flight", PollSchedule())
        poller.subscribe("queued", PollSchedule())
        await asyncio.sleep(0)

    loop.run_until_complete(subscribe_two(poller))
    loop.close()
    del poller
    import gc

    gc.collect()  # the pending poll task is destroyed, and its coroutine closed, here
    assert "Task was destroyed but it is pending" in caplog.text  # asyncio's own notice
    assert "no running event loop" not in caplog.text


async def test_changes_queue_up_in_order_for_a_slow_waiter() -> None:
    """Changes pushed faster than a waiter takes them are all kept, in order."""
    poller = Poller(never_answers, max_in_flight=1)
    subscription = Subscription(poller, "x", PollSchedule(), None)
    for status in ("RUNNING", "AWAITING", "COMPLETED"):
        subscription.push(decode_execution(execution_body(status=status)))
    taken = [subscription.take(), subscription.take(), subscription.take(), subscription.take()]
    assert [e.status.value if e else None for e in taken] == [
        "RUNNING",
        "AWAITING",
        "COMPLETED",
        None,
    ]


async def test_a_subscription_to_the_end_keeps_and_wakes_only_for_the_end() -> None:
    """Without every_change, changes before the terminal one are dropped and wake nobody."""
    poller = Poller(never_answers, max_in_flight=1)
    subscription = Subscription(poller, "x", PollSchedule(), None, every_change=False)
    woken = subscription.changed()
    for status in ("RUNNING", "AWAITING"):
        subscription.push(decode_execution(execution_body(status=status)))
    assert not woken.done()
    assert subscription.take() is None
    subscription.push(decode_execution(execution_body(status="COMPLETED")))
    assert woken.done()
    end = subscription.take()
    assert end is not None
    assert end.status is WorkflowStatus.COMPLETED


async def test_deadlines_fire_in_order_and_skip_waiters_that_left() -> None:
    """One timer serves every deadline: earliest first, re-armed, skipping those gone."""
    poller = Poller(never_answers, max_in_flight=10)
    late = poller.subscribe("late", PollSchedule(), timeout=0.10)
    early = poller.subscribe("early", PollSchedule(), timeout=0.05)  # re-arms the timer
    gone = poller.subscribe("gone", PollSchedule(), timeout=0.06)
    poller.unsubscribe(gone)
    for subscription in (early, late):
        with pytest.raises(WaitTimeoutError):
            await next_change(subscription)
        poller.unsubscribe(subscription)
    assert gone.take() is None  # left before its deadline: never told
    assert poller.active_polls == 0


async def test_a_change_after_the_deadline_fired_is_the_last_one_seen() -> None:
    """A change that lands after the deadline fired is taken first and is the last seen."""
    answer = asyncio.Event()

    async def fetch(execution_id: str) -> Lookup:
        await answer.wait()
        return lookup(id=execution_id, status="RUNNING")

    poller = Poller(fetch, max_in_flight=1)
    subscription = poller.subscribe("x", PollSchedule(), timeout=0.01)
    # Woken by the deadline firing, while the first answer is still out.
    await asyncio.wait_for(subscription.changed(), timeout=5)
    assert subscription.last_seen() is None
    answer.set()
    await settle()  # the answer lands: one change pushed after the deadline's signal
    assert (await next_change(subscription)).status is WorkflowStatus.RUNNING
    with pytest.raises(WaitTimeoutError) as raised:
        await next_change(subscription)
    last = raised.value.execution
    assert last is not None
    assert (last.id, last.status) == (lookup(id="x").execution.id, WorkflowStatus.RUNNING)
    poller.unsubscribe(subscription)


async def test_deadlines_fire_earliest_first() -> None:
    """The earlier deadline fires while the later waiter is still waiting."""
    poller = Poller(never_answers, max_in_flight=10)
    now = asyncio.get_running_loop().time()
    late = poller.subscribe("late", PollSchedule(), timeout=0.2)
    early = poller.subscribe("early", PollSchedule(), timeout=0.02)
    with pytest.raises(WaitTimeoutError):
        await next_change(early)
    assert late.take() is None  # not yet
    with pytest.raises(WaitTimeoutError):
        await next_change(late)
    assert asyncio.get_running_loop().time() >= now + 0.2
    for subscription in (early, late):
        poller.unsubscribe(subscription)


async def test_a_poll_due_sooner_is_not_held_up_by_a_later_one() -> None:
    """Polls on different schedules each come when due: one timer, re-armed for the sooner."""
    polls: dict[str, int] = {}

    async def fetch(execution_id: str) -> Lookup:
        polls[execution_id] = polls.get(execution_id, 0) + 1
        status = "COMPLETED" if polls[execution_id] == 4 else "RUNNING"
        return lookup(id=execution_id, status=status)

    poller = Poller(fetch, max_in_flight=10)
    slow = poller.subscribe("slow", PollSchedule(30.0))
    await next_change(slow)  # its next poll is 24 to 30 s away
    quick = poller.subscribe("quick", PollSchedule(0.01, 0.01))
    started = asyncio.get_running_loop().time()
    while not (await next_change(quick)).is_terminal:
        pass
    assert asyncio.get_running_loop().time() - started < 5
    assert polls == {"slow": 1, "quick": 4}
    poller.unsubscribe(quick)
    poller.unsubscribe(slow)
    assert poller.active_polls == 0


async def test_polls_of_departed_waiters_are_compacted() -> None:
    """Scheduled polls of executions nobody waits on any more do not pile up."""

    async def fetch(execution_id: str) -> Lookup:
        return lookup(id=execution_id, status="RUNNING")

    poller = Poller(fetch, max_in_flight=10)
    for number in range(200):
        subscription = poller.subscribe(f"id-{number}", PollSchedule(60.0))
        await next_change(subscription)  # answered: its next poll is scheduled
        poller.unsubscribe(subscription)
    staying = poller.subscribe("staying", PollSchedule(60.0))
    await next_change(staying)
    assert len(poller._due_polls) <= 2 * poller.active_polls + 64 + 1
    poller.unsubscribe(staying)


class Item:
    """Something to put in a timeline: a name, and when it is due."""

    def __init__(self, name: str, when: float) -> None:
        self.name, self.when = name, when


def add(timeline: _Timeline[Item], item: Item) -> None:
    timeline.add(item.when, item)


async def test_the_timeline_fires_what_is_due_once_in_order() -> None:
    """Items come in time order, once each; one added while firing comes too, in its turn."""
    fired: list[str] = []
    loop = asyncio.get_running_loop()
    all_fired = loop.create_future()

    def fire(item: Item) -> None:
        fired.append(item.name)
        if item.name == "first":  # adds one already due and one for later
            add(timeline, Item("added due", loop.time()))
            add(timeline, Item("added later", loop.time() + 0.02))
        if item.name == "added later":
            all_fired.set_result(None)

    timeline: _Timeline[Item] = _Timeline(
        fire, is_live=lambda when, item: True, live_count=lambda: 4, context=contextvars.Context()
    )
    now = loop.time()
    add(timeline, Item("second", now + 0.02))
    add(timeline, Item("first", now + 0.01))
    await asyncio.wait_for(all_fired, timeout=5)
    assert fired == ["first", "added due", "second", "added later"]
    assert len(timeline) == 0
    assert timeline._timer is None  # nothing left: no timer either


async def test_the_timeline_fires_an_item_when_its_timer_runs_a_little_early() -> None:
    """asyncio runs timers up to its clock's resolution early: the item is due then."""
    fired: list[Item] = []
    timeline: _Timeline[Item] = _Timeline(
        fired.append,
        is_live=lambda when, item: True,
        live_count=lambda: 1,
        context=contextvars.Context(),
    )
    item = Item("in ten seconds", asyncio.get_running_loop().time() + 10)
    add(timeline, item)
    assert timeline._timer is not None
    timeline._timer.cancel()  # this test runs the timer's callback itself:
    timeline._due(item.when)  # as the loop would, a hair before the clock reads `when`
    assert fired == [item]
    assert len(timeline) == 0


async def test_the_timeline_goes_on_after_an_item_fails_to_fire() -> None:
    """One failing item does not stop the timer for the items after it."""
    loop = asyncio.get_running_loop()
    later_fired = loop.create_future()

    def fire(item: Item) -> None:
        if item.name == "broken":
            raise RuntimeError("boom")
        later_fired.set_result(item.name)

    timeline: _Timeline[Item] = _Timeline(
        fire, is_live=lambda when, item: True, live_count=lambda: 2, context=contextvars.Context()
    )
    add(timeline, Item("broken", loop.time()))
    add(timeline, Item("later", loop.time() + 0.02))
    assert timeline._timer is not None
    timeline._timer.cancel()  # this test runs the timer's callback itself
    with pytest.raises(RuntimeError, match="boom"):
        timeline._due(loop.time())
    assert await asyncio.wait_for(later_fired, timeout=5) == "later"


async def test_deadline_entries_of_departed_waiters_are_compacted() -> None:
    """Deadlines of waiters who left do not pile up for as long as their timeout."""
    poller = Poller(never_answers, max_in_flight=10)
    for number in range(200):
        poller.unsubscribe(poller.subscribe(f"id-{number}", PollSchedule(), timeout=3600))
    staying = poller.subscribe("staying", PollSchedule(), timeout=3600)
    assert len(poller._deadlines) <= 2 * 1 + 64 + 1
    poller.unsubscribe(staying)
    poller.unsubscribe(staying)  # leaving twice is harmless
    assert poller._waiting == 0
    await settle()


async def test_intervals_grow_while_unchanged_and_reset_on_change(
    fake_transactionlink: FakeTransactionLink,
    client: TransactionLinkClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Gaps grow by the factor to the cap while the status stays, and reset on a change."""
    intervals: list[float] = []

    def recording_delay(
        interval: float, *, retry_after: float | None, random_fraction: float
    ) -> float:
        intervals.append(interval)
        return 0.001

    monkeypatch.setattr("aiotlink._polling.poll_delay", recording_delay)
    walk = ["INITIALISED"] + ["RUNNING"] * 5 + ["AWAITING", "AWAITING", "COMPLETED"]
    execution_id = await start(fake_transactionlink, client, statuses=walk)
    await client.workflows.wait_for_completion(
        execution_id, poll_interval=1.0, max_poll_interval=4.0, poll_factor=2.0
    )
    # RUNNING seen first (1), unchanged 4 times (2, 4, 4, 4), AWAITING (1), unchanged (2).
    assert intervals == [1.0, 2.0, 4.0, 4.0, 4.0, 1.0, 2.0]


async def test_remote_cancel_survives_a_second_cancellation(
    fake_transactionlink: FakeTransactionLink,
) -> None:
    """The remote cancel is shielded: cancelling the waiter again does not abort it."""
    fake = fake_transactionlink
    # One connection, held by a slow request: the remote cancel has to queue for it.
    async with TransactionLinkClient(
        fake.token, base_url=fake.url, connection_limit=1, retry_backoff=False
    ) as client:
        execution_id = await start(fake, client, statuses=["RUNNING", "AWAITING"])
        waiter = asyncio.create_task(
            client.workflows.wait_for_completion(
                execution_id, cancel_remote_on_cancel=True, poll_interval=30.0
            )
        )
        await eventually(lambda: len(fake.requests_for("find")) == 1)
        fake.slow_next("find", 0.3)
        blocker = asyncio.create_task(client.workflows.find(execution_id))
        await eventually(lambda: len(fake.requests_for("find")) == 2)
        waiter.cancel()
        connector = client._sessions.api().connector
        assert connector is not None
        # The remote cancel now waits for the connection...
        await eventually(lambda: any(connector._waiters.values()))
        waiter.cancel()  # ...when the waiter is cancelled again
        with pytest.raises(asyncio.CancelledError):
            await waiter
        await blocker
        await eventually(lambda: fake.status_of(execution_id) == "CANCELLED")


async def test_remote_cancel_is_bounded_in_time(
    fake_transactionlink: FakeTransactionLink,
    client: TransactionLinkClient,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A remote cancel that hangs is given up after REMOTE_CANCEL_TIMEOUT seconds."""
    monkeypatch.setattr("aiotlink._workflows.REMOTE_CANCEL_TIMEOUT", 0.2)
    execution_id = await start(fake_transactionlink, client, statuses=["RUNNING", "AWAITING"])
    fake_transactionlink.slow_next("cancel", 30.0)
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError):
        await client.workflows.wait_for_completion(
            execution_id, timeout=0.1, cancel_on_timeout=True, **FAST
        )
    assert time.monotonic() - started < 5.0
    assert "could not cancel execution" in caplog.text


async def test_cancelling_a_wait_during_the_remote_cancel_of_its_timeout_raises_cancelled(
    server: ScriptedServer,
) -> None:
    """A wait cancelled while its timeout's remote cancel is in flight raises CancelledError."""
    cancel_route = ("POST", f"/workflows/{EXECUTION_ID}/cancel")
    server.script("GET", f"/workflows/{EXECUTION_ID}", reply(200, execution_body()))
    server.script(*cancel_route, stall(30.0, reply(200)))
    async with TransactionLinkClient("tot_x", base_url=server.url, retry_backoff=False) as client:
        waiter = asyncio.create_task(
            client.workflows.wait_for_completion(
                EXECUTION_ID, timeout=0.05, cancel_on_timeout=True, **FAST
            )
        )
        await eventually(lambda: server.requests_to(*cancel_route))  # the timeout has passed
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter


async def test_polls_in_flight_never_exceed_the_connection_limit(server: ScriptedServer) -> None:
    """With connection_limit=3, twenty waiters never have more than three polls in flight."""
    in_flight = peak = 0
    polls: dict[str, int] = {}

    async def slow_find(request: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        in_flight -= 1
        execution_id = request.path.rsplit("/", 1)[1]
        polls[execution_id] = polls.get(execution_id, 0) + 1
        status = "COMPLETED" if polls[execution_id] >= 2 else "RUNNING"
        return await reply(200, execution_body(id=execution_id, status=status))(request)

    ids = [f"7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e{n:04d}" for n in range(20)]
    for execution_id in ids:
        server.script("GET", f"/workflows/{execution_id}", slow_find)
    async with TransactionLinkClient("tot_x", base_url=server.url, connection_limit=3) as client:
        results = await asyncio.gather(
            *(client.workflows.wait_for_completion(i, **FAST) for i in ids)
        )
        assert client._sessions.api().connector is not None
        assert client._sessions.api().connector.limit == 3
    assert {r.status for r in results} == {WorkflowStatus.COMPLETED}
    assert peak == 3


async def test_a_cancelled_poll_frees_its_connection_slot(server: ScriptedServer) -> None:
    """With connection_limit=1, cancelling a wait whose poll hangs lets the next wait poll."""
    other_id = "7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a11"
    stuck_route = ("GET", f"/workflows/{EXECUTION_ID}")
    server.script(*stuck_route, stall(30.0, reply(200, execution_body())))
    server.script(
        "GET", f"/workflows/{other_id}", reply(200, execution_body(id=other_id, status="COMPLETED"))
    )
    async with TransactionLinkClient("tot_x", base_url=server.url, connection_limit=1) as client:
        stuck = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID))
        await eventually(lambda: server.requests_to(*stuck_route))  # the only slot is taken
        stuck.cancel()
        with pytest.raises(asyncio.CancelledError):
            await stuck
        async with asyncio.timeout(2):  # not queued behind the cancelled poll for good
            execution = await client.workflows.wait_for_completion(other_id)
    assert (execution.id, execution.status) == (other_id, WorkflowStatus.COMPLETED)


async def test_views_with_the_same_settings_share_poll_loops(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Waiters through with_options views (same settings) still share one poll loop."""
    execution_id = await start(fake_transactionlink, client, statuses=WALK)
    await asyncio.gather(
        *(
            client.with_options(timeout=10).workflows.wait_for_completion(execution_id, **FAST)
            for _ in range(5)
        )
    )
    assert len(fake_transactionlink.requests_for("find")) == len(WALK) - 1


async def test_run_checks_every_argument_before_starting(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Any
) -> None:
    """A bad polling, callback or path argument to run starts no execution."""
    definition = fake_transactionlink.add_definition(statuses=["COMPLETED"])
    for kwargs, named in [
        ({"poll_interval": 0}, "poll_interval"),
        ({"max_poll_interval": -1}, "max_poll_interval"),
        ({"poll_factor": 0.5}, "poll_factor"),
        ({"on_status": 5}, "on_status"),
        ({"on_progress": "x"}, "on_progress"),
        ({"max_bytes": 0}, "max_bytes"),
        ({"download_to": tmp_path / "missing" / "r.json"}, "folder does not exist"),
        ({"parameters": {1: "a"}}, "string keys"),
    ]:
        with pytest.raises(ValueError, match=named):
            await client.workflows.run(definition, **kwargs)
    assert fake_transactionlink.requests == []


async def test_run_timeout_error_names_the_callers_timeout(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """WaitTimeoutError from run carries the timeout the caller gave, not what was left."""
    definition = fake_transactionlink.add_definition(statuses=["RUNNING", "AWAITING"])
    with pytest.raises(WaitTimeoutError) as caught:
        await client.workflows.run(definition, timeout=0.3, **FAST)
    assert caught.value.timeout == 0.3
    assert "within 0.3 s" in str(caught.value)


@pytest.mark.parametrize(
    ("initialise_seconds", "find_seconds", "result_seconds", "result_requests"),
    [(0.4, 0.75, 0.05, 0), (0.25, 0.25, 0.75, 1)],
    ids=["ends-in-the-wait", "ends-in-get_result"],
)
async def test_run_timeout_is_one_deadline_in_elapsed_time(
    server: ScriptedServer,
    initialise_seconds: float,
    find_seconds: float,
    result_seconds: float,
    result_requests: int,
) -> None:
    """Phases that each fit in run's timeout, but not together, end run after timeout seconds."""
    timeout = 0.8
    result_route = ("GET", f"/workflows/{EXECUTION_ID}/result")
    server.script(
        "POST",
        "/workflows",
        stall(initialise_seconds, reply(200, execution_body(status="INITIALISED"))),
    )
    server.script(
        "GET",
        f"/workflows/{EXECUTION_ID}",
        stall(find_seconds, reply(200, execution_body(status="COMPLETED"))),
    )
    server.script(*result_route, stall(result_seconds, reply(200, {"approved": True})))
    async with TransactionLinkClient("tot_x", base_url=server.url) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(WaitTimeoutError) as caught:
            await client.workflows.run("kyc", timeout=timeout)
        elapsed = loop.time() - started
    assert timeout * 0.9 <= elapsed < timeout + 0.25  # not the sum of the phases' times
    assert caught.value.timeout == timeout
    assert len(server.requests_to(*result_route)) == result_requests


async def test_polls_do_not_see_a_waiters_context_variables(
    client: TransactionLinkClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A shared poll runs in its own empty context: no waiter's context leaks into it."""
    import contextvars

    request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
    seen: list[str] = []

    async def find(execution_id: str) -> Lookup:
        seen.append(request_id.get())
        return lookup(id=execution_id, status="COMPLETED")

    monkeypatch.setattr(client.workflows, "_find", find)
    request_id.set("waiter-a")
    await client.workflows.wait_for_completion(EXECUTION_ID)
    assert seen == [""]
