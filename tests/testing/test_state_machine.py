"""The status walk: per poll, per elapsed time, expiry and cancellation."""

from __future__ import annotations

import asyncio
import enum
import math
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from aiotlink.testing import FakeTransactionLink, ManualClock
from aiotlink.testing._executions import (
    STATUSES,
    TERMINAL_STATUSES,
    Definition,
    scheduled_status,
    status_at,
)

from .helpers import auth, error_codes, find, initialise

WALK = ["INITIALISED", "CREATED", "RUNNING", "AWAITING", "PAUSED", "RUNNING", "COMPLETED"]


def definition(statuses: list[str], step_seconds: float = 0.0) -> Definition:
    """A bare definition for the pure rules."""
    return Definition("d", tuple(statuses), None, step_seconds, False, "d", "1", {})


@pytest.mark.parametrize(
    ("polls", "expected"), [(0, "INITIALISED"), (1, "RUNNING"), (2, "COMPLETED"), (9, "COMPLETED")]
)
def test_scheduled_status_moves_one_status_per_poll(polls: int, expected: str) -> None:
    """With step_seconds 0, polls n shows statuses[min(n, last)], whatever the time."""
    walk = ["INITIALISED", "RUNNING", "COMPLETED"]
    assert scheduled_status(walk, 0.0, polls, elapsed=1e9) == expected


@pytest.mark.parametrize(
    ("elapsed", "expected"),
    [
        (-1.0, "INITIALISED"),
        (0.0, "INITIALISED"),
        (0.049, "INITIALISED"),
        (0.05, "RUNNING"),
        (0.1, "COMPLETED"),
        (60.0, "COMPLETED"),
    ],
)
def test_scheduled_status_moves_one_status_per_step(elapsed: float, expected: str) -> None:
    """With step_seconds > 0, the walk moves one status per step of time; polls don't count."""
    walk = ["INITIALISED", "RUNNING", "COMPLETED"]
    assert scheduled_status(walk, 0.05, polls=100, elapsed=elapsed) == expected


def test_status_at_expires_only_what_is_not_terminal_at_expiry() -> None:
    """An execution not terminal at its expiry instant is EXPIRED; one already finished is not."""
    by_time = definition(["RUNNING", "COMPLETED"], step_seconds=10)
    assert status_at(by_time, polls=0, created_at=0, expires_at=5, now=4) == "RUNNING"
    assert status_at(by_time, polls=0, created_at=0, expires_at=5, now=20) == "EXPIRED"
    assert status_at(by_time, polls=0, created_at=0, expires_at=15, now=20) == "COMPLETED"
    by_poll = definition(["RUNNING", "COMPLETED"])
    assert status_at(by_poll, polls=0, created_at=0, expires_at=5, now=5) == "EXPIRED"
    assert status_at(by_poll, polls=1, created_at=0, expires_at=5, now=5) == "COMPLETED"


async def test_each_find_moves_one_status_and_the_walk_stays_at_its_end(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Initialise shows the first status, the n-th find the n-th next, then the last forever."""
    fake.add_definition("walk", statuses=WALK)
    execution = await initialise(session, fake, "walk")
    seen = [execution["status"]]
    for _ in range(len(WALK) + 1):
        found = await find(session, fake, execution["id"])
        seen.append(found["status"])
    assert seen == [*WALK, "COMPLETED", "COMPLETED"]


async def test_only_find_counts_as_a_poll(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Result, cancel attempts and status_of do not move a per-poll walk."""
    fake.add_definition("walk", statuses=["INITIALISED", "RUNNING", "COMPLETED"])
    execution = await initialise(session, fake, "walk")
    async with session.get(
        f"{fake.url}/workflows/{execution['id']}/result", headers=auth(fake.token)
    ) as response:
        assert response.status == 404
    assert fake.status_of(execution["id"]) == "INITIALISED"
    assert (await find(session, fake, execution["id"]))["status"] == "RUNNING"


async def test_executions_walk_independently(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Polls of one execution do not move another."""
    fake.add_definition("walk", statuses=["INITIALISED", "RUNNING", "COMPLETED"])
    first = await initialise(session, fake, "walk")
    second = await initialise(session, fake, "walk")
    await find(session, fake, first["id"])
    await find(session, fake, first["id"])
    assert (await find(session, fake, second["id"]))["status"] == "RUNNING"


async def test_step_seconds_moves_with_the_clock(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """With step_seconds, the status follows elapsed time and finds do not move it."""
    fake.add_definition(
        "timed", statuses=["INITIALISED", "AWAITING", "PAUSED", "COMPLETED"], step_seconds=0.05
    )
    execution = await initialise(session, fake, "timed")
    assert (await find(session, fake, execution["id"]))["status"] == "INITIALISED"
    assert (await find(session, fake, execution["id"]))["status"] == "INITIALISED"
    seen = []
    for _ in range(4):
        clock.advance(0.05)
        seen.append((await find(session, fake, execution["id"]))["status"])
    assert seen == ["AWAITING", "PAUSED", "COMPLETED", "COMPLETED"]


async def test_step_seconds_moves_with_real_time(session: aiohttp.ClientSession) -> None:
    """On the real clock, a walk with a small step reaches its end by itself."""
    async with FakeTransactionLink() as fake:
        fake.add_definition("timed", statuses=["RUNNING", "COMPLETED"], step_seconds=0.05)
        execution = await initialise(session, fake, "timed")
        seen = {execution["status"]}
        async with asyncio.timeout(5):  # far beyond one step
            while "COMPLETED" not in seen:
                seen.add((await find(session, fake, execution["id"]))["status"])
        assert seen == {"RUNNING", "COMPLETED"}


async def test_expire_makes_a_running_execution_expired_for_good(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """After expire(), a non-terminal execution shows EXPIRED and never moves again."""
    fake.add_definition("walk", statuses=["INITIALISED", "RUNNING", "COMPLETED"])
    execution = await initialise(session, fake, "walk")
    fake.expire(execution["id"])
    for _ in range(3):
        found = await find(session, fake, execution["id"])
        assert found["status"] == "EXPIRED"
    assert found["expiresAt"] is not None


async def test_expire_leaves_a_finished_execution_alone(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """expire() on a COMPLETED execution keeps it COMPLETED, with its result."""
    fake.add_definition("done", statuses=["COMPLETED"], result={"ok": True})
    execution = await initialise(session, fake, "done")
    fake.expire(execution["id"])
    assert (await find(session, fake, execution["id"]))["status"] == "COMPLETED"
    async with session.get(
        f"{fake.url}/workflows/{execution['id']}/result", headers=auth(fake.token)
    ) as response:
        assert await response.json() == {"ok": True}


async def test_expires_at_passing_on_the_clock_expires(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """An execution still running when its expiresAt passes becomes EXPIRED."""
    fake.add_definition("slow", statuses=["RUNNING", "COMPLETED"], step_seconds=7200)
    expires_at = datetime.fromtimestamp(clock.now, UTC) + timedelta(hours=1)
    execution = await initialise(session, fake, "slow", expiresAt=expires_at.isoformat())
    clock.advance(3599)
    assert (await find(session, fake, execution["id"]))["status"] == "RUNNING"
    clock.advance(1)
    assert (await find(session, fake, execution["id"]))["status"] == "EXPIRED"
    clock.advance(7200)
    assert (await find(session, fake, execution["id"]))["status"] == "EXPIRED"


async def test_cancel_cancels_a_running_execution(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Cancel makes a non-terminal execution CANCELLED, and again answers 200."""
    fake.add_definition("walk", statuses=["INITIALISED", "AWAITING", "COMPLETED"])
    execution = await initialise(session, fake, "walk")
    await find(session, fake, execution["id"])
    for _ in range(2):
        async with session.post(
            f"{fake.url}/workflows/{execution['id']}/cancel", headers=auth(fake.token)
        ) as response:
            assert response.status == 200
    assert (await find(session, fake, execution["id"]))["status"] == "CANCELLED"
    assert fake.status_of(execution["id"]) == "CANCELLED"


@pytest.mark.parametrize("final", sorted(TERMINAL_STATUSES - {"CANCELLED"}))
async def test_cancel_of_a_finished_execution_answers_400(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, final: str
) -> None:
    """Cancel in a terminal status other than CANCELLED is 400 WORKFLOW_ALREADY_FINISHED."""
    fake.add_definition("ended", statuses=["RUNNING"] if final == "EXPIRED" else [final])
    execution = await initialise(session, fake, "ended")
    if final == "EXPIRED":
        fake.expire(execution["id"])
    async with session.post(
        f"{fake.url}/workflows/{execution['id']}/cancel", headers=auth(fake.token)
    ) as response:
        assert response.status == 400
        assert await error_codes(response) == ["WORKFLOW_ALREADY_FINISHED"]
    assert fake.status_of(execution["id"]) == final


async def test_unknown_executions_are_404_and_key_errors(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Find and cancel of unknown ids answer 404; expire and status_of raise KeyError."""
    for url in (f"{fake.url}/workflows/nope", f"{fake.url}/workflows/nope/cancel"):
        method = "POST" if url.endswith("cancel") else "GET"
        async with session.request(method, url, headers=auth(fake.token)) as response:
            assert response.status == 404
            assert await error_codes(response) == ["WORKFLOW_NOT_FOUND"]
    with pytest.raises(KeyError):
        fake.expire("nope")
    with pytest.raises(KeyError):
        fake.status_of("nope")


async def test_ids_are_found_in_any_case(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """An execution id in upper case finds the same execution."""
    fake.add_definition("walk")
    execution = await initialise(session, fake, "walk")
    assert (await find(session, fake, execution["id"].upper()))["id"] == execution["id"]


@pytest.mark.parametrize(
    ("statuses", "message"),
    [
        ([], "at least one"),
        (["RUNNING", "DONE"], "unknown statuses"),
        (["COMPLETED", "RUNNING"], "only come last"),
    ],
)
def test_add_definition_refuses_bad_walks(
    fake: FakeTransactionLink, statuses: list[str], message: str
) -> None:
    """An empty walk, an unknown status, or a terminal status before the end raise ValueError."""
    with pytest.raises(ValueError, match=message):
        fake.add_definition("bad", statuses=statuses)


def test_add_definition_takes_enum_statuses(fake: FakeTransactionLink) -> None:
    """Statuses may be members of a str enum, not only of a StrEnum like WorkflowStatus."""
    # A str mixin, not a StrEnum: its str() is "Status.RUNNING", not the value.
    Status = enum.Enum("Status", {"RUNNING": "RUNNING", "COMPLETED": "COMPLETED"}, type=str)

    fake.add_definition("enum", statuses=[Status.RUNNING, Status.COMPLETED])
    assert fake._definitions["enum"].statuses == ("RUNNING", "COMPLETED")


def test_add_definition_refuses_a_single_string(fake: FakeTransactionLink) -> None:
    """A bare string for statuses raises TypeError rather than walking its letters."""
    with pytest.raises(TypeError, match="not one string"):
        fake.add_definition("bad", statuses="RUNNING")


@pytest.mark.parametrize("step", [-0.1, math.nan, math.inf])
def test_add_definition_refuses_bad_steps(fake: FakeTransactionLink, step: float) -> None:
    """A negative or non-finite step_seconds raises ValueError."""
    with pytest.raises(ValueError, match="step_seconds"):
        fake.add_definition("bad", step_seconds=step)


def test_add_definition_refuses_results_json_cannot_hold(fake: FakeTransactionLink) -> None:
    """A result that is not JSON raises TypeError, NaN raises ValueError, at once."""
    with pytest.raises(TypeError):
        fake.add_definition("bad", result={"when": datetime.now(UTC)})
    with pytest.raises(ValueError, match="JSON"):
        fake.add_definition("bad", result=math.nan)


def test_add_definition_returns_its_id(fake: FakeTransactionLink) -> None:
    """add_definition returns the given id, or a fresh UUID when none is given."""
    assert fake.add_definition("given") == "given"
    fresh = fake.add_definition()
    assert len(fresh) == 36
    assert fresh != fake.add_definition()


def test_the_eleven_statuses_are_known() -> None:
    """The fake knows the eleven statuses of the reference, six of them terminal."""
    assert len(STATUSES) == 11
    assert len(TERMINAL_STATUSES) == 6
    assert set(STATUSES) >= TERMINAL_STATUSES


def test_the_default_result_reads_well_in_help() -> None:
    """The default of add_definition's result shows as an echo, not as an enum member."""
    import inspect

    signature = inspect.signature(FakeTransactionLink.add_definition)
    assert str(signature.parameters["result"]).endswith(" = <echo of the execution>")
