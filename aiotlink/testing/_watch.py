"""Which status each execution last announced, and when time will next change it.

Statuses are computed lazily from the clock, so nothing happens when a time step or
an expiry is reached. For webhooks the fake must notice: it keeps, per execution,
the walk index and status it last announced, and one heap of the instants at which
time alone will change an execution next. One timer (or a ``ManualClock``'s
advance) looks at the top of the heap, so a thousand running executions cost a
heap entry each, not a task or a timer each. Pure bookkeeping: no asyncio here.
"""

from __future__ import annotations

import heapq
import itertools

import attrs

from aiotlink.testing._executions import (
    TERMINAL_STATUSES,
    Execution,
    StatusChange,
    changes_since,
    next_change_at,
)


@attrs.define
class _Progress:
    index: int = -1
    status: str | None = None
    due: float | None = None
    done: bool = False


class StatusWatch:
    """The announced progress of every watched execution, and a heap of their next changes."""

    def __init__(self) -> None:
        """Watch nothing yet."""
        self._progress: dict[str, _Progress] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._order = itertools.count()

    def changes(self, execution: Execution, now: float) -> list[StatusChange]:
        """Return the changes of ``execution`` not yet announced, up to ``now``, in order.

        The first call for an execution includes its first status. A status repeated
        by consecutive steps of the walk is one change, not two. Once a terminal
        status is announced, the execution has no more changes.
        """
        progress = self._progress.setdefault(execution.id, _Progress())
        if progress.done:
            return []
        announced = []
        for change in changes_since(execution, progress.index, now):
            progress.index = change.index
            if change.status != progress.status:
                progress.status = change.status
                announced.append(change)
        if progress.status in TERMINAL_STATUSES:
            progress.done = True
            progress.due = None
        else:
            self._schedule(execution.id, progress, next_change_at(execution, progress.index))
        return announced

    def finish(self, execution_id: str, status: str) -> None:
        """Record that ``status`` (a terminal one, e.g. ``CANCELLED``) was announced."""
        progress = self._progress.setdefault(execution_id, _Progress())
        progress.status, progress.due, progress.done = status, None, True

    def pop_due(self, now: float) -> list[str]:
        """Remove and return the ids of the executions whose next change is at ``now`` or before."""
        due_ids = []
        while self._heap and self._heap[0][0] <= now:
            due, _, execution_id = heapq.heappop(self._heap)
            progress = self._progress.get(execution_id)
            if progress is not None and not progress.done and progress.due == due:
                progress.due = None
                due_ids.append(execution_id)
        return due_ids

    def next_due(self) -> float | None:
        """Return the earliest instant at which time alone changes a watched execution."""
        while self._heap:
            due, _, execution_id = self._heap[0]
            progress = self._progress.get(execution_id)
            if progress is not None and not progress.done and progress.due == due:
                return due
            heapq.heappop(self._heap)  # stale: announced, rescheduled, or finished since
        return None

    def _schedule(self, execution_id: str, progress: _Progress, due: float | None) -> None:
        if due == progress.due:
            return
        progress.due = due
        if due is not None:
            heapq.heappush(self._heap, (due, next(self._order), execution_id))
