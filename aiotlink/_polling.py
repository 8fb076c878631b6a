"""Polling executions until they end: the schedule, and one shared poll loop per id.

Many waiters may follow the same execution (or thousands of different ones). Each
execution id has one :class:`_SharedPoll`, started from one timeline of due polls
rather than by a sleeping task per waiter, and every waiter is a small
:class:`Subscription` woken by a future. At 10,000 waiters this keeps the number of
long-lived, GC-tracked objects (and so the pauses of CPython's cyclic collector) low;
see the team's design notes, design/PERFORMANCE.md. Waits started together come in
by turns, a batch per event-loop iteration (:meth:`Poller.admission`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NamedTuple, Protocol, TypeVar

import attrs

from ._arguments import check_seconds, shown
from ._converter import decode_execution
from ._errors import APIConnectionError, APIError, TransactionLinkError, WaitTimeoutError
from ._models import WorkflowExecution, WorkflowStatus
from ._retry import MAX_RETRY_AFTER, RETRYABLE_STATUSES
from ._transport import parse_json

logger = logging.getLogger("aiotlink")

# Each gap is shortened by up to this fraction at random, so that waiters started
# together drift apart instead of polling in bursts.
JITTER = 0.2
# Lookups that nudges bring forward start at least this long after the one before, so
# that a flood of nudges (a caller's loop, a provider's burst) costs at most a few
# lookups a second per execution.
NUDGE_MIN_GAP = 0.25
# Waits started in one loop iteration are let in at most this many per later iteration
# (a few milliseconds of work), so that starting 10,000 at once never stalls the event
# loop for long; see Poller.admission.
ADMITTED_PER_ITERATION = 1000


class Lookup(NamedTuple):
    """One answer of a poll: the execution, the body it was decoded from, its Retry-After.

    ``retry_after`` is in seconds, or ``None``.
    """

    execution: WorkflowExecution
    body: bytes
    retry_after: float | None

    def __repr__(self) -> str:
        # The body holds the execution's token: only its length goes into a repr (and so
        # into tracebacks that show locals).
        return (
            f"Lookup(execution={self.execution!r}, body={len(self.body)} bytes, "
            f"retry_after={self.retry_after!r})"
        )


Fetch = Callable[[str], Awaitable[Lookup]]


DEFAULT_POLL_INTERVAL = 1.0  # seconds
DEFAULT_MAX_POLL_INTERVAL = 15.0  # seconds
DEFAULT_POLL_FACTOR = 1.5


@attrs.frozen
class PollSchedule:
    """How often to poll: seconds, growing by ``factor`` per unchanged poll.

    A ``max_poll_interval`` below ``poll_interval`` is raised to it, so that
    ``poll_interval=60`` alone means "every minute".
    """

    poll_interval: float = DEFAULT_POLL_INTERVAL
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL
    factor: float = DEFAULT_POLL_FACTOR

    def __attrs_post_init__(self) -> None:
        check_seconds("poll_interval", self.poll_interval)
        check_seconds("max_poll_interval", self.max_poll_interval)
        if self.max_poll_interval < self.poll_interval:
            object.__setattr__(self, "max_poll_interval", self.poll_interval)
        if isinstance(self.factor, bool) or not isinstance(self.factor, int | float):
            raise ValueError(f"poll_factor must be a number, got {shown(self.factor)}")
        try:
            factor = float(self.factor)
        except OverflowError:  # an int beyond a float's range
            factor = math.inf
        if not 1 <= factor < math.inf:  # also refuses NaN
            raise ValueError(f"poll_factor must be a finite number >= 1, got {shown(self.factor)}")
        object.__setattr__(self, "factor", factor)

    def next_interval(self, interval: float) -> float:
        """The interval after an unchanged poll: grown by ``factor``, capped."""
        return min(self.max_poll_interval, interval * self.factor)

    @staticmethod
    def merge(schedules: list[PollSchedule]) -> PollSchedule:
        """The most eager of several waiters' schedules, for their shared poll loop."""
        if len(schedules) == 1:
            return schedules[0]
        return PollSchedule(
            min(schedule.poll_interval for schedule in schedules),
            min(schedule.max_poll_interval for schedule in schedules),
            min(schedule.factor for schedule in schedules),
        )


def poll_delay(interval: float, *, retry_after: float | None, random_fraction: float) -> float:
    """Seconds until the next poll: ``interval`` less jitter, but never before ``retry_after``.

    ``retry_after`` is honoured up to MAX_RETRY_AFTER (60 s): a server that asks for a
    year still gets polled, and the wait's own timeout decides when to stop.
    """
    return max(interval * (1 - JITTER * random_fraction), honoured(retry_after))


def honoured(retry_after: float | None) -> float:
    """Seconds of a ``Retry-After`` a poll waits for: all of it, up to MAX_RETRY_AFTER."""
    return 0.0 if retry_after is None else min(retry_after, MAX_RETRY_AFTER)


class DeadlinePassed(Exception):
    """A waiter's deadline passed before the execution ended (internal signal)."""


class _Timed(Protocol):
    """What a :class:`_Timeline` holds: ``when``, a time of the loop's clock.

    ``__lt__`` must order items by ``when``: the heap orders by one, the timer by the
    other.
    """

    @property
    def when(self) -> float: ...

    def __lt__(self, other: Any, /) -> bool: ...


_TimedT = TypeVar("_TimedT", bound=_Timed)


class _Timeline(Generic[_TimedT]):
    """Items that fall due at times of the event loop's clock: one heap, one timer.

    A timer handle per item would be three more long-lived objects (handle, arguments,
    bound method) for each of thousands of waiters or polls, made anew at every poll,
    for CPython's cyclic collector to walk (the team's design/PERFORMANCE.md). An item
    that is no longer wanted (``is_live`` says so) stays until it comes up and is
    skipped, or until the heap outgrows twice the owner's count of live items
    (``live_count()``).
    """

    def __init__(
        self,
        fire: Callable[[_TimedT], None],
        *,
        is_live: Callable[[_TimedT], bool],
        live_count: Callable[[], int],
        context: contextvars.Context,
    ) -> None:
        self._fire = fire
        self._is_live = is_live
        self._live_count = live_count
        self._context = context
        self._heap: list[_TimedT] = []
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, item: _TimedT) -> None:
        """Fire ``item`` once the loop's clock reaches ``item.when``, if still live then.

        An item must not be added again while it is in the timeline.
        """
        if len(self._heap) > 2 * self._live_count() + 64:
            self._heap = [queued for queued in self._heap if self._is_live(queued)]
            heapq.heapify(self._heap)
        heapq.heappush(self._heap, item)
        if self._heap[0] is item:
            self._arm()

    def move_earlier(self, item: _TimedT, set_when: Callable[[], None]) -> None:
        """Re-key ``item``, already in the timeline, by ``set_when()`` to fall due earlier.

        Costs a pass over the heap: for the rare waiter that joins a poll loop with a
        more eager schedule, never on the path of every poll.
        """
        self._heap.remove(item)
        set_when()
        heapq.heapify(self._heap)
        heapq.heappush(self._heap, item)
        if self._heap[0] is item:
            self._arm()

    def clear(self) -> None:
        """Forget every item, and the timer."""
        self._heap.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._heap:
            loop = asyncio.get_running_loop()
            when = self._heap[0].when
            self._timer = loop.call_at(when, self._due, when, context=self._context)

    def _due(self, armed_for: float) -> None:
        # The loop runs a timer up to its clock's resolution early: what the timer was
        # armed for is due even if the clock reads a hair less.
        now = max(asyncio.get_running_loop().time(), armed_for)
        self._timer = None
        try:
            while self._heap and self._heap[0].when <= now:
                item = heapq.heappop(self._heap)
                if self._is_live(item):
                    self._fire(item)
        finally:
            # Re-armed even if firing one item failed, or the others would wait forever.
            # A fired item may have added an earlier one and armed for it already.
            if self._timer is None:
                self._arm()


class Subscription:
    """One waiter's view of a shared poll loop: the changes it has not consumed yet.

    Waiting costs one future at a time: no task, coroutine or timer of its own (the
    poller keeps every deadline in one heap with one timer). A waiter mostly has one
    change pending at most, so a queue for more is made only when needed.
    """

    __slots__ = (
        "_error",
        "_more",
        "_next",
        "_poll",
        "_waiter",
        "active",
        "deadline",
        "every_change",
        "schedule",
        "timeout",
    )

    def __init__(
        self,
        poll: _SharedPoll,
        schedule: PollSchedule,
        deadline: float | None = None,
        timeout: float | None = None,
        *,
        every_change: bool = True,
    ) -> None:
        self._poll = poll
        # False: only a terminal change is kept and wakes the waiter.
        self.every_change = every_change
        self.active = True
        self.schedule = schedule
        # Loop time after which the waiter stops waiting; infinity for none. The
        # timeout in seconds it came from is for the error's message.
        self.deadline = math.inf if deadline is None else deadline
        self.timeout = timeout
        self._next: WorkflowExecution | None = None
        self._more: deque[WorkflowExecution] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None

    @property
    def when(self) -> float:
        return self.deadline

    def __lt__(self, other: Subscription) -> bool:
        # Ordered by deadline, for the poller's timeline of waiters that have one.
        return self.deadline < other.deadline

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def push(self, execution: WorkflowExecution, execution_id: str = "") -> None:
        if not (self.every_change or execution.is_terminal):
            return
        if self._next is None:
            self._next = execution
        else:
            if self._more is None:
                self._more = deque()
            self._more.append(execution)
        self._wake()

    def fail(self, error: BaseException, execution_id: str = "") -> None:
        if self._error is None:  # the first reason to stop is the one given
            self._error = error
        self._wake()

    def take(self) -> WorkflowExecution | None:
        """The next status change seen, or ``None`` when there is none yet.

        Raises the poll loop's error, or :class:`WaitTimeoutError` past the deadline,
        once the changes that came before it are consumed.
        """
        change = self._next
        if change is not None:
            self._next = self._more.popleft() if self._more else None
            return change
        if isinstance(self._error, DeadlinePassed):
            # Made now, not when the deadline fired: a change that landed since then
            # is the last one seen.
            assert self.timeout is not None  # only a waiter with a timeout has a deadline
            raise WaitTimeoutError(self.last_seen(), self.timeout)
        if self._error is not None:
            # Several waiters may raise the one error: start its traceback afresh.
            raise self._error.with_traceback(None)
        return None

    def last_seen(self) -> WorkflowExecution | None:
        """The execution as of the last change its poll loop saw (``None`` before any).

        Asked once :meth:`take` has returned every change it was given, this is the
        last one the waiter took (or, without ``every_change``, skipped).
        """
        return self._poll.last_seen()

    def changed(self) -> asyncio.Future[None]:
        """A future done when there is something new to :meth:`take`."""
        self._waiter = asyncio.get_running_loop().create_future()
        return self._waiter


Outcome = WorkflowExecution | TransactionLinkError


class Batch:
    """Many executions followed for one consumer (``as_completed``): one subscriber for all.

    Registered on each execution's shared poll like a :class:`Subscription`, the same
    object on every poll, so that following 100,000 executions adds one object, not
    100,000. Per execution it keeps one entry in :attr:`following`, a dict of ids to
    counts: str keys and int values, which CPython's cyclic collector does not track
    (benchmarks/NOTES.md, "as_completed"). Outcomes wait in a queue until consumed;
    one future at a time wakes the consumer.
    """

    __slots__ = (
        "_waiter",
        "closed",
        "every_change",
        "expired",
        "following",
        "outcomes",
        "schedule",
    )

    def __init__(self, schedule: PollSchedule) -> None:
        self.schedule = schedule
        self.every_change = False  # only the end of each execution
        # Each execution followed, with how many times it was given and not yet yielded.
        self.following: dict[str, int] = {}
        self.outcomes: deque[tuple[Outcome, int]] = deque()
        # Raised to the consumer, ending the batch: the client closed (or, a bug, an error
        # that is not a TransactionLinkError ended a poll).
        self.closed: BaseException | None = None
        self.expired = False  # its deadline has passed: everything left times out
        self._waiter: asyncio.Future[None] | None = None

    def push(self, execution: WorkflowExecution, execution_id: str = "") -> None:
        if execution.is_terminal:
            self.settle(execution_id, execution)

    def fail(self, error: BaseException, execution_id: str = "") -> None:
        if not isinstance(error, TransactionLinkError):
            self.end(error)  # not an outcome of one execution: everyone must hear of it
            return
        error.execution_id = execution_id
        self.settle(execution_id, error)

    def settle(self, execution_id: str, outcome: Outcome) -> None:
        """Queue ``outcome`` once for every time ``execution_id`` was given."""
        count = self.following.pop(execution_id, 0)
        if count:
            self.outcomes.append((outcome, count))
            self._wake()

    def end(self, error: BaseException) -> None:
        """Stop everything: ``error`` (the client closed) is raised to the consumer."""
        if self.closed is None:
            self.closed = error
        self._wake()

    def changed(self) -> asyncio.Future[None]:
        """A future done when there is an outcome to take, or the batch has ended."""
        self._waiter = asyncio.get_running_loop().create_future()
        if self.outcomes or self.closed is not None or self.expired:
            self._waiter.set_result(None)
        return self._waiter

    def expire(self) -> None:
        """The batch's deadline has come: wake the consumer to time the rest out."""
        self.expired = True
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


Subscriber = Subscription | Batch


class _SharedPoll:
    """The poll loop of one execution id, shared by every waiter on it.

    It keeps the last change it saw as the answer's bytes, decoded again only when
    needed (a waiter joining late, a deadline): a decoded execution is two objects,
    pointing to some fifteen more, for CPython's full collections to visit, for each
    of thousands of executions, at every collection (benchmarks/NOTES.md, "10,000
    waiters").
    """

    __slots__ = (
        "_subscribers",
        "due",
        "execution_id",
        "interval",
        "last_body",
        "last_status",
        "not_before",
        "nudged",
        "scheduled",
        "started_at",
        "stopped",
        "task",
        "waiting",
    )

    def __init__(self, execution_id: str) -> None:
        self.execution_id = execution_id
        # Mostly one waiter, kept as it is: a list would be one more object per
        # execution for the full collections to walk. Once a list, always a list.
        self._subscribers: Subscriber | list[Subscriber] | None = None
        self.last_status: WorkflowStatus | None = None
        self.last_body: bytes | None = None
        self.interval = 0.0
        # Loop time of the next poll. Set only while the poll is out of the poller's
        # timeline (in flight or new), or by the timeline itself: a heap item's key must
        # not change under it. ``scheduled``: in the timeline now. ``not_before``: the
        # loop time before which the last answer's Retry-After asked not to poll.
        self.due = 0.0
        self.scheduled = False
        self.not_before = 0.0
        # Nudged since its last lookup started: while in flight, that answer may predate
        # what the nudge announced, so the next lookup follows it at once; while queued
        # for a connection, it is first in line.
        self.nudged = False
        self.task: asyncio.Task[None] | None = None
        self.started_at = -math.inf  # loop time the last lookup started
        self.stopped = False
        # In the poller's queue for a connection (_ready): a nudge may start it from
        # the urgent queue first, and its entry in _ready is then skipped.
        self.waiting = False

    @property
    def when(self) -> float:
        return self.due

    def __lt__(self, other: _SharedPoll) -> bool:
        # Ordered by the time of the next poll, for the poller's timeline of polls.
        return self.due < other.due

    def subscribers(self) -> list[Subscriber]:
        """The waiters on this id."""
        subscribers = self._subscribers
        if subscribers is None:
            return []
        return subscribers if isinstance(subscribers, list) else [subscribers]

    def add(self, subscription: Subscriber) -> None:
        subscribers = self._subscribers
        if subscribers is None:
            self._subscribers = subscription
        elif isinstance(subscribers, list):
            subscribers.append(subscription)
        else:
            self._subscribers = [subscribers, subscription]

    def remove(self, subscription: Subscriber) -> bool:
        """Take a waiter off; whether any are left."""
        subscribers = self._subscribers
        if isinstance(subscribers, list):
            subscribers.remove(subscription)
            return bool(subscribers)
        assert subscribers is subscription
        self._subscribers = None
        return False

    def last_seen(self) -> WorkflowExecution | None:
        """The execution as of the last change seen, or ``None`` before the first answer."""
        if self.last_body is None:
            return None
        # It decoded without error when it came, so decoding it again cannot fail.
        return decode_execution(parse_json(self.last_body))


class Poller:
    """Polls executions for their waiters, at most ``max_in_flight`` requests at once.

    ``fetch(execution_id)`` returns a :class:`Lookup`: the execution, the answer's body
    and its ``Retry-After``. Transient failures (after the session layer's own retries)
    skip a poll and back off; any other error ends the wait of every waiter on that id.
    """

    def __init__(self, fetch: Fetch, *, max_in_flight: int) -> None:
        self._fetch = fetch
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._polls: dict[str, _SharedPoll] = {}
        self._ready: deque[_SharedPoll] = deque()
        # Nudged polls waiting for a connection: served before the others (a poll may
        # then also be in _ready, and is skipped there once started).
        self._urgent: deque[_SharedPoll] = deque()
        self._waiting = 0
        # The turns of waits not yet let in, and the first lookups held back meanwhile
        # (Poller.admission).
        self._queued: deque[asyncio.Future[None]] = deque()
        self._held: deque[_SharedPoll] = deque()
        # Timers run in an empty context of the poller's own, and each poll task in an
        # empty one of its own: a shared poll serves many waiters, so none of their
        # context variables may leak into it.
        self._context = contextvars.Context()
        # The loop the polls run on, from the first wait: nudges from elsewhere go to it.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set by close(): what a wait that comes later fails with.
        self.closed: Callable[[], TransactionLinkError] | None = None
        # The next poll of every execution, and the deadline of every waiter that has one.
        self._due_polls = _Timeline(
            self._poll_due,
            is_live=lambda poll: not poll.stopped,
            live_count=lambda: len(self._polls),
            context=self._context,
        )
        self._deadlines = _Timeline(
            self._deadline_passed,
            is_live=lambda subscription: subscription.active,
            live_count=lambda: self._waiting,
            context=self._context,
        )

    def admission(self) -> asyncio.Future[None]:
        """A future done when a new wait may subscribe: its turn among waits started together.

        Waits are let in, in order, at most ADMITTED_PER_ITERATION per loop iteration.
        ``asyncio.gather`` over 10,000 waits runs all of their first steps in one loop
        iteration, and the full collection that their objects set off inside it, with
        nothing else served meanwhile: the longest stall of that benchmark
        (benchmarks/NOTES.md, "10,000 waiters, fifth look"). A turn costs one future
        and a loop iteration or two. While turns are queued, new polls' first lookups
        are held back (see :meth:`subscribe`); the polls already running go on.
        """
        loop = asyncio.get_running_loop()
        if self._queued and self._queued[0].get_loop() is not loop:
            # Left by an event loop that stopped before their turn came: that loop's
            # _admit will never run, and this one's must.
            self._queued.clear()
            self._release_held()
        turn = loop.create_future()
        if not self._queued:
            loop.call_soon(self._admit, context=self._context)
        self._queued.append(turn)
        return turn

    def _admit(self) -> None:
        """Grant the next batch of turns; once none is left, start the held lookups."""
        queued, granted = self._queued, 0
        while queued and granted < ADMITTED_PER_ITERATION:
            turn = queued.popleft()
            if not turn.done():  # else cancelled while queued: no place taken
                turn.set_result(None)
                granted += 1
        if queued:
            asyncio.get_running_loop().call_soon(self._admit, context=self._context)
        else:
            self._release_held()

    def _release_held(self) -> None:
        """Queue the held first lookups for a connection, and start what fits."""
        for poll in self._held:
            poll.waiting = True
        self._ready.extend(self._held)
        self._held.clear()
        self._start_ready()

    def close(self, error: Callable[[], TransactionLinkError]) -> None:
        """End every wait at once with ``error()`` (the client is closing), and every poll.

        Waits still queued for their turn get the error too; nothing is polled again.
        """
        self.closed = error
        for turn in self._queued:
            if not turn.done():
                turn.set_exception(error())
        self._queued.clear()
        self._held.clear()
        self._ready.clear()
        self._urgent.clear()
        self._due_polls.clear()
        self._deadlines.clear()
        for poll in list(self._polls.values()):
            self._stop(poll)
            for subscription in poll.subscribers():
                if isinstance(subscription, Batch):
                    subscription.end(error())
                else:
                    subscription.fail(error())

    @property
    def active_polls(self) -> int:
        """How many executions are being polled now."""
        return len(self._polls)

    def subscribe(
        self,
        execution_id: str,
        schedule: PollSchedule,
        *,
        timeout: float | None = None,
        since: float | None = None,
        every_change: bool = True,
    ) -> Subscription:
        """Follow ``execution_id``: its first status comes at once (or with the next poll).

        Past ``timeout`` seconds from ``since`` (a time of the event loop's clock; now by
        default), the subscription raises :class:`WaitTimeoutError` instead of waiting
        on; at once, with no lookup, if that is already past. Without ``every_change``
        only the terminal execution is given.
        """
        if self.closed is not None:
            raise self.closed()
        poll = self._polls.get(execution_id)
        deadline = None
        if timeout is not None:
            now = asyncio.get_running_loop().time()
            deadline = (now if since is None else since) + timeout
            if deadline <= now:  # the wait's turn took all of its time
                raise WaitTimeoutError(None if poll is None else poll.last_seen(), timeout)
        new = poll is None
        if poll is None:
            poll = self._new_poll(execution_id, schedule)
        else:
            self._hasten(poll, schedule)
        subscription = Subscription(poll, schedule, deadline, timeout, every_change=every_change)
        poll.add(subscription)
        self._waiting += 1
        # Without every_change, the last change (never terminal: that ends the poll)
        # would only be dropped.
        last = poll.last_seen() if every_change else None
        if last is not None:
            subscription.push(last)
        if deadline is not None:
            self._deadlines.add(subscription)
        if new:
            self._first_lookup(poll)
        return subscription

    def _new_poll(self, execution_id: str, schedule: PollSchedule) -> _SharedPoll:
        """A poll loop for ``execution_id``, not started: see :meth:`_first_lookup`."""
        self._loop = asyncio.get_running_loop()
        poll = self._polls[execution_id] = _SharedPoll(execution_id)
        poll.interval = schedule.poll_interval
        return poll

    def _first_lookup(self, poll: _SharedPoll) -> None:
        """Start a new poll: its first lookup at once, or once waits are admitted.

        Called once its first waiter is on it: with an eager task factory the lookup
        may run, and fail, before this returns, and its outcome must reach the waiter.
        """
        if self._queued:
            # More waits are queued to come in: held until all are in, so that no
            # answer of theirs lands between them and their objects lie side by side in
            # memory. CPython's full collections walk those about twice as fast as
            # objects scattered among answers (benchmarks/NOTES.md, "10,000 waiters,
            # fourth look").
            self._held.append(poll)
        else:
            self._start(poll)

    def join(self, batch: Batch, execution_id: str) -> None:
        """Follow ``execution_id`` for ``batch`` too; its end goes to ``batch.settle``."""
        if self.closed is not None:
            raise self.closed()
        poll = self._polls.get(execution_id)
        if poll is None:
            poll = self._new_poll(execution_id, batch.schedule)
            poll.add(batch)
            self._first_lookup(poll)
        else:
            self._hasten(poll, batch.schedule)
            poll.add(batch)

    def leave(self, batch: Batch, execution_id: str) -> WorkflowExecution | None:
        """Stop following ``execution_id`` for ``batch``: the last execution seen, if any.

        The last follower to leave stops the poll loop and its request.
        """
        poll = self._polls.get(execution_id)
        if poll is None or batch not in poll.subscribers():
            return None
        if not poll.remove(batch) and not poll.stopped:
            self._stop(poll)
        return poll.last_seen()

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop following; the last waiter to leave stops the poll loop and its request."""
        if not subscription.active:
            return
        subscription.active = False
        self._waiting -= 1
        poll = subscription._poll
        if not poll.remove(subscription) and not poll.stopped:
            self._stop(poll)

    @staticmethod
    def _deadline_passed(subscription: Subscription) -> None:
        subscription.fail(DeadlinePassed())

    def _stop(self, poll: _SharedPoll) -> None:
        # Only a registered poll is ever not stopped, so this removes the right one. A
        # scheduled next poll stays in the timeline until it comes up and is skipped (or
        # the timeline is compacted): at most a max_poll_interval, bounded in number.
        poll.stopped = True
        del self._polls[poll.execution_id]
        if poll.task is not None:
            poll.task.cancel()

    def _start(self, poll: _SharedPoll) -> None:
        if poll.stopped:
            return
        if self._in_flight >= self._max_in_flight:
            poll.waiting = True
            self._ready.append(poll)
            return
        self._in_flight += 1
        poll.nudged = False  # this lookup answers every nudge so far
        poll.started_at = asyncio.get_running_loop().time()
        # Not the timers' context: this may run inside it (a timer, or a poll task
        # starting the next), and an eager task factory would enter it a second time.
        poll.task = asyncio.get_running_loop().create_task(
            self._poll_once(poll), context=contextvars.Context()
        )

    def _start_ready(self) -> None:
        while self._in_flight < self._max_in_flight:
            if self._urgent:
                poll = self._urgent.popleft()
            elif self._ready:
                poll = self._ready.popleft()
            else:
                return
            if poll.waiting:  # else started from the other queue already
                poll.waiting = False
                self._start(poll)

    def _schedule(self, poll: _SharedPoll, retry_after: float | None) -> None:
        delay = poll_delay(poll.interval, retry_after=retry_after, random_fraction=random.random())
        now = asyncio.get_running_loop().time()
        poll.not_before = now + honoured(retry_after)
        if poll.nudged:  # nudged while this lookup was in flight
            poll.nudged = False
            delay = max(honoured(retry_after), poll.started_at + NUDGE_MIN_GAP - now)
        poll.due = now + delay
        poll.scheduled = True
        self._due_polls.add(poll)

    def _poll_due(self, poll: _SharedPoll) -> None:
        poll.scheduled = False
        self._start(poll)

    def _hasten(self, poll: _SharedPoll, schedule: PollSchedule) -> None:
        """Bring ``poll``'s next poll forward to what a waiter joining with ``schedule`` asks.

        A waiter that joins a poll loop in a long gap (another waiter's minute) must not
        wait out that gap. Polls in flight or queued need nothing: the answer's merged
        schedule paces the next. The last answer's Retry-After is still honoured.
        """
        if not poll.scheduled or schedule.poll_interval >= poll.interval:
            return
        poll.interval = schedule.poll_interval
        delay = poll_delay(poll.interval, retry_after=None, random_fraction=random.random())
        due = max(asyncio.get_running_loop().time() + delay, poll.not_before)
        if due < poll.due:

            def set_due() -> None:
                poll.due = due

            self._due_polls.move_earlier(poll, set_due)

    def nudge(self, execution_id: str, status: WorkflowStatus | None = None) -> bool:
        """Look ``execution_id`` up now rather than at its next poll; whether it is waited on.

        ``status`` is what a webhook announced, if anything: a lookup is spent only where
        a waiter can learn from it, so a non-terminal status already seen, or one that
        no waiter wants (waits that only want the end), costs nothing. A burst of nudges
        costs one lookup: those that come while a lookup is in flight, one more right
        after it. The last answer's Retry-After is still honoured. From another thread
        or event loop (a receiver served elsewhere), the nudge is handed to the loop the
        polls run on.
        """
        loop = self._loop
        if loop is not None and not _running_in(loop):
            if execution_id not in self._polls:
                return False
            with contextlib.suppress(RuntimeError):  # that loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._nudge, execution_id, status, context=self._context)
            return True
        return self._nudge(execution_id, status)

    def _nudge(self, execution_id: str, status: WorkflowStatus | None) -> bool:
        poll = self._polls.get(execution_id)
        if poll is None:
            return False
        if status is not None and not status.is_terminal:
            wanted = any(subscription.every_change for subscription in poll.subscribers())
            if status == poll.last_status or not wanted:
                return True
        if poll.task is not None:
            poll.nudged = True
        elif poll.waiting:
            # Queued for a connection: first in line, once.
            if not poll.nudged:
                poll.nudged = True
                self._urgent.append(poll)
        elif not poll.scheduled:
            pass  # held for admission: its first lookup comes within a few iterations
        else:
            now = asyncio.get_running_loop().time()
            due = max(now, poll.not_before, poll.started_at + NUDGE_MIN_GAP)
            if due < poll.due:

                def set_due() -> None:
                    poll.due = due

                # A pass over the heap: fine for webhook rates, one per status change.
                self._due_polls.move_earlier(poll, set_due)
        return True

    async def _poll_once(self, poll: _SharedPoll) -> None:
        try:
            lookup = await self._fetch(poll.execution_id)
        except GeneratorExit:
            raise  # the event loop is closing with this poll pending: start nothing new
        except Exception as error:
            self._release(poll)
            self._failed(poll, error)
            return
        except BaseException:  # cancelled: its waiters have all left
            self._release(poll)
            raise
        self._release(poll)
        self._seen(poll, lookup)

    def _release(self, poll: _SharedPoll) -> None:
        """Give the finished request's place to the next poll that is due."""
        self._in_flight -= 1
        poll.task = None
        self._start_ready()

    # _failed and _seen run only for a poll that is not stopped: stopping one cancels
    # its request task, which then never gets past the await of its fetch.
    def _failed(self, poll: _SharedPoll, error: Exception) -> None:
        if not _is_transient(error):
            self._stop(poll)
            for subscription in poll.subscribers():
                subscription.fail(error, poll.execution_id)
            return
        # The session layer has already retried this poll: skip it and keep waiting.
        logger.warning("polling execution %s failed, will poll again: %s", poll.execution_id, error)
        schedule = PollSchedule.merge([s.schedule for s in poll.subscribers()])
        poll.interval = schedule.next_interval(poll.interval)
        self._schedule(poll, error.retry_after if isinstance(error, APIError) else None)

    def _seen(self, poll: _SharedPoll, lookup: Lookup) -> None:
        execution = lookup.execution
        schedule = PollSchedule.merge([s.schedule for s in poll.subscribers()])
        if execution.status != poll.last_status:
            logger.debug("execution %s is %s", poll.execution_id, execution.status.value)
            poll.last_status, poll.last_body = execution.status, lookup.body
            poll.interval = schedule.poll_interval
            for subscription in poll.subscribers():
                subscription.push(execution, poll.execution_id)
        else:
            poll.interval = schedule.next_interval(poll.interval)
        if execution.is_terminal:
            # Done: a later waiter on this id starts afresh with one lookup.
            poll.stopped = True
            del self._polls[poll.execution_id]
            return
        self._schedule(poll, lookup.retry_after)


def _running_in(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread is running ``loop`` now."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _is_transient(error: Exception) -> bool:
    """Whether a failed poll is worth another one later, whatever its ``Retry-After``.

    A wait outlives any one answer: a 503 that asks for ten minutes ends the session
    layer's retries of that poll, never the wait (README.md, "Waiting").
    """
    if isinstance(error, APIError):
        return error.status >= 500 or error.status in RETRYABLE_STATUSES
    return isinstance(error, APIConnectionError)


DEFAULT_SCHEDULE = PollSchedule()
