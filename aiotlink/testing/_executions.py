"""Workflow definitions, executions, and the rules that move an execution's status.

The rules are pure functions over counts and times, so tests can reason about them
exactly: see ``scheduled_status`` and ``status_at``. ``changes_since`` and
``next_change_at`` derive from the same rules when each status was entered, for the
webhooks the fake sends on every change.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

import attrs

from aiotlink.testing._results import ResultBody

STATUSES = (
    "INITIALISED",
    "CREATED",
    "RUNNING",
    "COMPLETED",
    "AWAITING",
    "FAILED",
    "TIMEOUT",
    "TERMINATED",
    "EXPIRED",
    "CANCELLED",
    "PAUSED",
)
"""The eleven statuses of the reference, in its order."""

TERMINAL_STATUSES = frozenset(
    {"COMPLETED", "FAILED", "TIMEOUT", "TERMINATED", "EXPIRED", "CANCELLED"}
)
"""Statuses an execution never leaves."""

DEFAULT_STATUSES = ("INITIALISED", "RUNNING", "COMPLETED")
"""The walk of a definition added without ``statuses``."""

TIME_TOLERANCE = 1e-6
"""Seconds by which a step or an expiry may be reached early. Float clocks near the
present have a resolution of about 0.2 µs and datetimes one of 1 µs, so an instant
reached exactly may otherwise compute a hair short."""

CancelOutcome = Literal["cancelled", "already_cancelled", "already_finished"]


def check_statuses(statuses: Sequence[str]) -> tuple[str, ...]:
    """Validate a definition's walk and return it as a tuple of plain strings.

    Statuses may be strings or members of a string enum (``aiotlink.WorkflowStatus``).
    Raises ``TypeError`` for a single string, and ``ValueError`` when the walk is
    empty, names an unknown status, or has a terminal status anywhere but last (an
    execution never leaves a terminal status).
    """
    if isinstance(statuses, str):
        raise TypeError("statuses must be a sequence of statuses, not one string")
    walk = tuple(
        str(status.value) if isinstance(status, enum.Enum) else str(status) for status in statuses
    )
    if not walk:
        raise ValueError("statuses must name at least one status")
    unknown = [status for status in walk if status not in STATUSES]
    if unknown:
        raise ValueError(f"unknown statuses {unknown}; known: {', '.join(STATUSES)}")
    if any(status in TERMINAL_STATUSES for status in walk[:-1]):
        raise ValueError("a terminal status may only come last in statuses")
    return walk


def check_step_seconds(step_seconds: float) -> float:
    """Validate a step duration in seconds: finite and not negative."""
    if not math.isfinite(step_seconds) or step_seconds < 0:
        raise ValueError("step_seconds must be a finite number of seconds, 0 or more")
    return float(step_seconds)


@attrs.frozen
class Definition:
    """A workflow definition of the fake: its status walk and its result.

    ``result`` is ``None`` for the default result, an echo of the execution.
    ``step_seconds`` 0 advances one status per find; more advances by elapsed time.
    """

    definition_id: str
    statuses: tuple[str, ...]
    result: ResultBody | None
    step_seconds: float
    interactive: bool
    name: str
    revision: str
    ui_options: Mapping[str, Any]


def scheduled_index(length: int, step_seconds: float, polls: int, elapsed: float) -> int:
    """Return where a walk of ``length`` statuses stands, as an index (see ``scheduled_status``)."""
    if step_seconds == 0:
        index = polls
    else:
        index = math.floor(max(elapsed + TIME_TOLERANCE, 0.0) / step_seconds)
    return min(index, length - 1)


def scheduled_status(
    statuses: Sequence[str], step_seconds: float, polls: int, elapsed: float
) -> str:
    """Return where the walk stands, ignoring expiry and cancellation.

    With ``step_seconds`` 0 the walk moves one status per poll (``polls`` finds so
    far); otherwise one status per ``step_seconds`` of ``elapsed`` seconds since the
    execution began. It stays at the last status.
    """
    return statuses[scheduled_index(len(statuses), step_seconds, polls, elapsed)]


def status_at(
    definition: Definition,
    *,
    polls: int,
    created_at: float,
    expires_at: float | None,
    now: float,
) -> str:
    """Return an execution's status at ``now`` (seconds since the epoch).

    An execution that is not in a terminal status at its expiry instant is
    ``EXPIRED`` from then on. In poll mode the status at that instant is the one
    after ``polls`` finds.
    """
    statuses, step = definition.statuses, definition.step_seconds
    if expires_at is not None and now + TIME_TOLERANCE >= expires_at:
        at_expiry = scheduled_status(statuses, step, polls, expires_at - created_at)
        if at_expiry not in TERMINAL_STATUSES:
            return "EXPIRED"
    return scheduled_status(statuses, step, polls, now - created_at)


@attrs.define
class Execution:
    """One execution: what initialise was given, and how far its walk has come.

    Times are seconds since the epoch. ``settled`` holds a terminal status once it
    has been seen (or set by cancel), so the walk never moves again.
    """

    id: str
    definition: Definition
    created_at: float
    parameters: dict[str, Any]
    locale: str
    expires_at: datetime | None
    record_id: str | None
    token: str | None
    link: str | None
    origin: dict[str, Any]
    polls: int = 0
    settled: str | None = None

    def status(self, now: float) -> str:
        """Return the status at ``now`` without counting a poll."""
        if self.settled is not None:
            return self.settled
        status = status_at(
            self.definition,
            polls=self.polls,
            created_at=self.created_at,
            expires_at=None if self.expires_at is None else self.expires_at.timestamp(),
            now=now,
        )
        if status in TERMINAL_STATUSES:
            self.settled = status
        return status

    def poll(self, now: float) -> str:
        """Count one find at ``now`` and return the status it shows."""
        if self.status(now) in TERMINAL_STATUSES:
            return self.status(now)
        self.polls += 1
        return self.status(now)

    def cancel(self, now: float) -> CancelOutcome:
        """Cancel at ``now``: a non-terminal execution becomes ``CANCELLED``."""
        status = self.status(now)
        if status == "CANCELLED":
            return "already_cancelled"
        if status in TERMINAL_STATUSES:
            return "already_finished"
        self.settled = "CANCELLED"
        return "cancelled"


@attrs.frozen
class StatusChange:
    """An execution entering ``status`` at ``at`` (seconds since the epoch).

    ``index`` is where the walk stands after it: for ``EXPIRED``, where it stood at
    the expiry instant.
    """

    status: str
    at: float
    index: int


def changes_since(execution: Execution, index: int, now: float) -> list[StatusChange]:
    """Return the statuses ``execution`` entered after walk index ``index``, up to ``now``.

    ``index`` -1 means none was seen yet, so the first status comes first. With time
    steps each status is dated by its step, so a clock that jumps over several steps
    still yields every one of them; in poll mode a status is dated ``now`` (the find
    that moved it), the first one by the creation. An expiry comes last, dated by
    ``expiresAt``. Cancellation is not a rule of the walk: the caller announces it.
    Statuses repeated in the walk come once per step; the caller skips repeats.
    """
    definition = execution.definition
    statuses, step = definition.statuses, definition.step_seconds
    created_at = execution.created_at
    expires_at = None if execution.expires_at is None else execution.expires_at.timestamp()
    end, expired = now, False
    if expires_at is not None and now + TIME_TOLERANCE >= expires_at:
        at_expiry = scheduled_index(len(statuses), step, execution.polls, expires_at - created_at)
        if statuses[at_expiry] not in TERMINAL_STATUSES:
            end, expired = expires_at, True
    reached = scheduled_index(len(statuses), step, execution.polls, end - created_at)
    changes = [
        StatusChange(
            statuses[entered],
            created_at if entered == 0 else (created_at + entered * step if step else now),
            entered,
        )
        for entered in range(index + 1, reached + 1)
    ]
    if expired and expires_at is not None:
        changes.append(StatusChange("EXPIRED", expires_at, reached))
    return changes


def next_change_at(execution: Execution, index: int) -> float | None:
    """Return when time alone next changes an execution standing at walk ``index``.

    That is its next time step or its expiry, whichever comes first (seconds since
    the epoch), or ``None`` when only a find can move it, or nothing will.
    """
    definition = execution.definition
    statuses, step = definition.statuses, definition.step_seconds
    if index >= 0 and statuses[index] in TERMINAL_STATUSES:
        return None
    candidates = []
    if step and index + 1 < len(statuses):
        candidates.append(execution.created_at + (index + 1) * step)
    if execution.expires_at is not None:
        candidates.append(execution.expires_at.timestamp())
    return min(candidates, default=None)
