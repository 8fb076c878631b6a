"""client.workflows.as_completed: one outcome per execution as it ends, on the shared polls.

Against the fake TransactionLink server and scripted servers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import types
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from aiotlink import (
    ClientClosedError,
    NotFoundError,
    PermissionDeniedError,
    TransactionLinkClient,
    TransactionLinkError,
    WaitTimeoutError,
    WorkflowExecution,
    WorkflowStatus,
)
from aiotlink._polling import DEFAULT_SCHEDULE, Batch, Subscription
from aiotlink.testing import FakeTransactionLink

from .conftest import EXECUTION_ID, execution_body
from .servers import ScriptedServer, eventually, reply, settled, stall

FAST = {"poll_interval": 0.01, "max_poll_interval": 0.01}


@pytest.fixture
async def fake() -> AsyncIterator[FakeTransactionLink]:
    async with FakeTransactionLink() as running:
        yield running


@pytest.fixture
async def fake_client(fake: FakeTransactionLink) -> AsyncIterator[TransactionLinkClient]:
    async with TransactionLinkClient(fake.token, base_url=fake.url, retry_backoff=False) as client:
        yield client


async def started(
    client: TransactionLinkClient, definition: str, count: int
) -> list[WorkflowExecution]:
    return list(
        await asyncio.gather(*(client.workflows.initialise(definition) for _ in range(count)))
    )


async def started_ids(client: TransactionLinkClient, definition: str, count: int) -> list[str]:
    return [execution.id for execution in await started(client, definition, count)]


def script_statuses(server: ScriptedServer, *statuses: str) -> str:
    """Answer lookups of EXECUTION_ID with ``statuses`` in turn; the path looked up."""
    path = f"/workflows/{EXECUTION_ID}"
    server.script("GET", path, *(reply(200, execution_body(status=status)) for status in statuses))
    return path


def status_of(outcome: WorkflowExecution | TransactionLinkError) -> WorkflowStatus:
    assert isinstance(outcome, WorkflowExecution), outcome
    return outcome.status


def outcome_id(outcome: WorkflowExecution | TransactionLinkError) -> str | None:
    return outcome.id if isinstance(outcome, WorkflowExecution) else outcome.execution_id


async def collected(
    client: TransactionLinkClient, ids: Any, **options: Any
) -> list[WorkflowExecution | TransactionLinkError]:
    async with asyncio.timeout(30):
        return [outcome async for outcome in client.workflows.as_completed(ids, **options)]


async def test_every_kind_of_outcome_is_yielded_as_a_value(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient
) -> None:
    done = fake.add_definition("done", statuses=["RUNNING", "COMPLETED"])
    failing = fake.add_definition("failing", statuses=["RUNNING", "FAILED"])
    endless = fake.add_definition("endless", statuses=["RUNNING"])
    ok, failed, stuck = [
        (await started(fake_client, definition, 1))[0] for definition in (done, failing, endless)
    ]
    missing = "00000000-0000-4000-8000-000000000000"
    limited = fake.add_token(can_view_workspace=False)

    outcomes = await collected(
        fake_client, [ok.id, failed.id, missing, stuck.id], timeout=0.5, **FAST
    )

    by_id = {outcome_id(outcome): outcome for outcome in outcomes}
    assert len(outcomes) == 4
    assert status_of(by_id[ok.id]) is WorkflowStatus.COMPLETED
    assert status_of(by_id[failed.id]) is WorkflowStatus.FAILED  # a value, not raised
    assert isinstance(by_id[missing], NotFoundError)
    timed_out = by_id[stuck.id]
    assert isinstance(timed_out, WaitTimeoutError)
    assert timed_out.execution is not None
    assert timed_out.execution.status is WorkflowStatus.RUNNING  # the last one seen
    async with TransactionLinkClient(limited, base_url=fake.url) as other:
        (denied,) = await collected(other, [ok.id], **FAST)
    assert isinstance(denied, PermissionDeniedError)
    assert denied.execution_id == ok.id


async def test_each_id_is_yielded_once_per_time_it_was_given(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient
) -> None:
    done = fake.add_definition("done", statuses=["RUNNING", "AWAITING", "COMPLETED"])
    executions = await started(fake_client, done, 30)
    given = [execution.id for execution in executions] + [executions[0].id] * 2

    outcomes = await collected(fake_client, given, **FAST)

    assert Counter(outcome_id(outcome) for outcome in outcomes) == Counter(given)
    assert all(status_of(outcome) is WorkflowStatus.COMPLETED for outcome in outcomes)
    # Followed once: the duplicate id cost no more lookups than the others.
    lookups = Counter(request.path for request in fake.requests_for("find"))
    assert lookups[f"/workflows/{executions[0].id}"] == lookups[f"/workflows/{executions[1].id}"]


async def test_ids_are_read_and_followed_as_they_come(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient
) -> None:
    done = fake.add_definition("done", statuses=["RUNNING", "COMPLETED"])
    ids = await started_ids(fake_client, done, 50)
    followed_when_read: list[int] = []
    poller = fake_client.workflows._poller

    def lazily() -> Iterator[str]:
        for number in range(2500):
            if number % 1000 == 0:
                followed_when_read.append(poller.active_polls)
            yield ids[number % 50]

    outcomes = await collected(fake_client, lazily(), **FAST)

    assert len(outcomes) == 2500
    # The first thousand were being followed before the second thousand was read.
    assert followed_when_read[0] == 0
    assert followed_when_read[1] > 0


async def test_an_infinite_input_can_be_broken_out_of(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient
) -> None:
    done = fake.add_definition("done", statuses=["COMPLETED"])
    ids = await started_ids(fake_client, done, 5)

    def forever() -> Iterator[str]:
        while True:
            yield from ids

    got = []
    async with asyncio.timeout(10):
        async for outcome in fake_client.workflows.as_completed(forever(), **FAST):
            got.append(outcome)
            if len(got) == 3:
                break

    assert len(got) == 3
    await eventually(lambda: fake_client.workflows._poller.active_polls == 0)


async def test_breaking_out_stops_every_poll(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient
) -> None:
    quick = fake.add_definition("quick", statuses=["COMPLETED"])
    endless = fake.add_definition("endless", statuses=["RUNNING"])
    first = (await started(fake_client, quick, 1))[0]
    slow = await started_ids(fake_client, endless, 20)

    async with asyncio.timeout(10):
        async for outcome in fake_client.workflows.as_completed([first.id, *slow], **FAST):
            assert outcome_id(outcome) == first.id
            break

    poller = fake_client.workflows._poller
    await eventually(lambda: poller.active_polls == 0)
    # Lookups sent before the break may reach the fake (on this loop) a little later
    # on a busy machine: wait for its count to settle, which it never would if 20
    # executions were still polled every 10 ms, then check that it stays.
    lookups = await settled(lambda: len(fake.requests_for("find")))
    await asyncio.sleep(0.2)
    assert len(fake.requests_for("find")) == lookups  # nothing polled any more


async def test_cancelling_the_iterating_task_stops_every_poll(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient
) -> None:
    endless = fake.add_definition("endless", statuses=["RUNNING"])
    ids = await started_ids(fake_client, endless, 20)
    poller = fake_client.workflows._poller

    async def consume() -> None:
        async for _ in fake_client.workflows.as_completed(ids, **FAST):
            pass

    task = asyncio.create_task(consume())
    await eventually(lambda: poller.active_polls == 20)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

    assert poller.active_polls == 0
    assert not [t for t in asyncio.all_tasks() if "_poll_once" in repr(t)]


async def test_an_id_also_awaited_elsewhere_shares_its_poll(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    path = f"/workflows/{EXECUTION_ID}"
    server.script(
        "GET",
        path,
        reply(200, execution_body(status="RUNNING")),
        stall(0.2, reply(200, execution_body(status="COMPLETED"))),
    )

    waited, outcomes = await asyncio.gather(
        client.workflows.wait_for_completion(EXECUTION_ID, **FAST),
        collected(client, [EXECUTION_ID], **FAST),
    )

    assert waited.status is WorkflowStatus.COMPLETED
    assert [status_of(outcome) for outcome in outcomes] == [WorkflowStatus.COMPLETED]
    assert len(server.requests_to("GET", path)) == 2  # one poll loop for both


async def test_a_webhook_nudge_ends_it_at_once(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    path = script_statuses(server, "RUNNING", "COMPLETED")

    async def nudge_once_followed() -> None:
        await eventually(lambda: len(server.requests_to("GET", path)) == 1)
        await asyncio.sleep(0.05)
        assert client.workflows.nudge(EXECUTION_ID, status="AWAITING") is True  # wakes no one
        await asyncio.sleep(0.05)
        assert client.workflows.nudge(EXECUTION_ID, status="COMPLETED") is True

    async with asyncio.timeout(10):  # its next poll is a minute away
        outcomes, _ = await asyncio.gather(
            collected(client, [EXECUTION_ID], poll_interval=60), nudge_once_followed()
        )

    assert [status_of(outcome) for outcome in outcomes] == [WorkflowStatus.COMPLETED]
    assert len(server.requests_to("GET", path)) == 2


async def test_past_the_timeout_every_execution_left_times_out(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient
) -> None:
    endless = fake.add_definition("endless", statuses=["RUNNING"])
    ids = await started_ids(fake_client, endless, 10)

    def then_more() -> Iterator[str]:
        yield from ids
        yield ids[0]  # given twice: timed out twice

    outcomes = await collected(fake_client, then_more(), timeout=0.3, **FAST)

    assert len(outcomes) == 11
    assert all(isinstance(outcome, WaitTimeoutError) for outcome in outcomes)
    assert Counter(outcome_id(outcome) for outcome in outcomes)[ids[0]] == 2
    assert fake_client.workflows._poller.active_polls == 0


async def test_ids_read_after_the_deadline_time_out_at_once(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient
) -> None:
    endless = fake.add_definition("endless", statuses=["RUNNING"])
    ids = await started_ids(fake_client, endless, 3)

    def slowly() -> Iterator[str]:
        yield ids[0]
        time.sleep(0.3)  # a slow source: the batch's deadline passes meanwhile
        yield from ids[1:]

    outcomes = await collected(fake_client, slowly(), timeout=0.2, poll_interval=60)

    assert [type(outcome) for outcome in outcomes] == [WaitTimeoutError] * 3
    looked_up = {request.path for request in fake.requests_for("find")}
    assert not looked_up & {f"/workflows/{late}" for late in ids[1:]}  # never looked up


async def test_closing_the_client_ends_it_with_client_closed_error(
    fake: FakeTransactionLink,
) -> None:
    client = TransactionLinkClient(fake.token, base_url=fake.url)
    endless = fake.add_definition("endless", statuses=["RUNNING"])
    ids = await started_ids(client, endless, 5)

    async def consume() -> list[Any]:
        return [outcome async for outcome in client.workflows.as_completed(ids, **FAST)]

    task = asyncio.create_task(consume())
    await eventually(lambda: client.workflows._poller.active_polls == 5)
    await client.close()

    with pytest.raises(ClientClosedError):
        await task
    with pytest.raises(ClientClosedError):
        await collected(client, ids)


@pytest.mark.parametrize(
    ("ids", "error", "problem"),
    [
        (EXECUTION_ID, TypeError, "not a single str"),
        (42, TypeError, "iterable of ids"),
        ([EXECUTION_ID, "a/b"], ValueError, "execution_id"),
        ([None], ValueError, "execution_id"),
    ],
)
async def test_bad_input_is_refused(
    client: TransactionLinkClient, ids: Any, error: type[Exception], problem: str
) -> None:
    with pytest.raises(error, match=problem):
        await collected(client, ids)
    assert client.workflows._poller.active_polls == 0


@pytest.mark.parametrize("options", [{"timeout": -1}, {"poll_interval": 0}])
async def test_bad_options_are_refused(client: TransactionLinkClient, options: Any) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        await collected(client, [EXECUTION_ID], **options)


async def test_an_empty_input_yields_nothing(client: TransactionLinkClient) -> None:
    assert await collected(client, []) == []
    assert await collected(client, iter(())) == []


def futures_tasks_and_coroutines() -> int:
    """How many futures, tasks, coroutines and subscriptions are alive: per-wait objects."""
    kinds = (asyncio.Future, Subscription, types.CoroutineType)
    return sum(1 for alive in gc.get_objects() if isinstance(alive, kinds))


async def test_ten_thousand_executions_through_one_iterator(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient
) -> None:
    done = fake.add_definition("done", statuses=["RUNNING", "COMPLETED"])
    executions = await started(fake_client, done, 10_000)

    seen: Counter[str] = Counter()
    per_wait_objects = []
    async with asyncio.timeout(120):
        async for outcome in fake_client.workflows.as_completed(
            (execution.id for execution in executions), poll_interval=0.05
        ):
            seen[status_of(outcome).value] += 1
            if sum(seen.values()) in (1, 5000):
                per_wait_objects.append(futures_tasks_and_coroutines())

    assert seen == {"COMPLETED": 10_000}
    # No future, task, coroutine or subscription per execution: those in flight only
    # (at most the connection limit of polls, and the server's handlers).
    assert max(per_wait_objects) < 1_000
    assert len(fake.requests_for("find")) <= 3 * 10_000


# Where a walk of what the poller holds stops: code, classes and futures lead to the rest
# of the process, not to per-execution state.
NOT_STATE = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.MethodType,
    types.BuiltinFunctionType,
    asyncio.Future,
    asyncio.Handle,
)


def tracked_state_of(root: object) -> int:
    """How many objects the cyclic collector tracks among those ``root`` holds."""
    seen, stack, tracked = {id(root)}, list(gc.get_referents(root)), 1
    while stack:
        held = stack.pop()
        if id(held) in seen or isinstance(held, NOT_STATE):
            continue
        seen.add(id(held))
        tracked += gc.is_tracked(held)
        stack.extend(gc.get_referents(held))
    return tracked


async def test_executions_followed_add_nothing_for_the_collector_to_walk(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient
) -> None:
    """Per execution followed, no object CPython's cyclic collector tracks.

    Its state is entries in dicts the collector skips (issue 17: "a per-id record that
    the collector can skip"): what the poller holds for 2,000 executions waiting between
    polls is a few dozen tracked objects, as for one.
    """
    slow = fake.add_definition("slow", statuses=["RUNNING", "COMPLETED"], step_seconds=3600)
    ids = await started_ids(fake_client, slow, 2_000)
    poller = fake_client.workflows._poller
    held, looked_up = [], 0

    def all_answered() -> bool:
        return len(fake.requests_for("find")) == looked_up and not poller._in_flight

    for count in (1, 2_000):
        looked_up += count
        iterator = fake_client.workflows.as_completed(ids[:count], poll_interval=60)
        async with contextlib.aclosing(iterator):
            waiting = asyncio.ensure_future(anext(iterator))
            # Every execution answered once, none in flight: all wait for their next poll.
            await eventually(all_answered, timeout=30)
            assert poller.active_polls == count
            gc.collect()  # as the collector would: the tuples in the timeline untracked
            held.append(tracked_state_of(poller))
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
        assert poller.active_polls == 0
    assert held[1] - held[0] < 20, held


def test_a_batch_keeps_its_ids_where_the_collector_does_not_look() -> None:
    batch = Batch(DEFAULT_SCHEDULE)
    for number in range(1000):
        batch.following[f"id-{number}"] = 1
    assert not gc.is_tracked(batch.following)


async def test_a_deadline_timer_that_fires_a_hair_early_still_times_out(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    endless = fake.add_definition("endless", statuses=["RUNNING"])
    ids = await started_ids(fake_client, endless, 3)
    loop = asyncio.get_running_loop()
    call_at = loop.call_at
    # Timers may run up to the clock's resolution early; here, 50 ms early.
    monkeypatch.setattr(
        loop, "call_at", lambda when, *rest, **options: call_at(when - 0.05, *rest, **options)
    )

    outcomes = await collected(fake_client, ids, timeout=0.3, poll_interval=60)

    assert [type(outcome) for outcome in outcomes] == [WaitTimeoutError] * 3


async def test_an_error_that_is_not_ours_ends_the_iteration_rather_than_hang(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    done = fake.add_definition("done", statuses=["RUNNING", "COMPLETED"])
    ids = await started_ids(fake_client, done, 3)

    async def broken(execution_id: str) -> Any:
        raise KeyError(execution_id)  # a bug below the poller, say

    monkeypatch.setattr(fake_client.workflows._poller, "_fetch", broken)

    with pytest.raises(KeyError):
        await collected(fake_client, ids, **FAST)
    assert fake_client.workflows._poller.active_polls == 0


# What a review found: these hung, or no test caught their check.


async def test_a_deadline_passing_while_the_consumer_is_busy_still_times_out(
    fake: FakeTransactionLink, fake_client: TransactionLinkClient
) -> None:
    quick = fake.add_definition("quick", statuses=["COMPLETED"])
    endless = fake.add_definition("endless", statuses=["RUNNING"])
    ids = [*await started_ids(fake_client, quick, 1), *await started_ids(fake_client, endless, 2)]

    kinds = []
    async with asyncio.timeout(5):
        async for outcome in fake_client.workflows.as_completed(ids, timeout=0.3, **FAST):
            kinds.append(type(outcome))
            await asyncio.sleep(0.5)  # busy past the deadline, inside the loop body

    assert kinds == [WorkflowExecution, WaitTimeoutError, WaitTimeoutError]


async def test_an_id_read_late_that_a_wait_follows_times_out(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    path = script_statuses(server, "RUNNING")
    wait = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID, **FAST))
    await eventually(lambda: server.requests_to("GET", path))

    def late() -> Iterator[str]:
        time.sleep(0.25)  # past the deadline
        yield EXECUTION_ID

    outcomes = await collected(client, late(), timeout=0.2)

    assert [type(outcome) for outcome in outcomes] == [WaitTimeoutError]
    assert not wait.done()  # the wait's poll goes on
    wait.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await wait


async def test_joining_a_rare_poll_brings_its_next_lookup_forward(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    path = script_statuses(server, "RUNNING", "COMPLETED")
    wait = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60))
    await eventually(lambda: server.requests_to("GET", path))
    await asyncio.sleep(0.05)

    async with asyncio.timeout(5):  # its next poll was a minute away
        outcomes = await collected(client, [EXECUTION_ID], **FAST)
        await wait

    assert [status_of(outcome) for outcome in outcomes] == [WorkflowStatus.COMPLETED]


async def test_ids_read_after_the_deadline_start_no_poll(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    path = script_statuses(server, "RUNNING")
    late = [str(uuid.uuid4()) for _ in range(2500)]  # more than read in one turn

    def ids() -> Iterator[str]:
        yield EXECUTION_ID
        time.sleep(0.25)
        yield from late

    outcomes = await collected(client, ids(), timeout=0.2, poll_interval=60)

    assert len(outcomes) == 2501
    assert all(isinstance(outcome, WaitTimeoutError) for outcome in outcomes)
    assert {seen.path for seen in server.seen} <= {path}  # none of the late ones looked up
