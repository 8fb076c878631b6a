"""Polling executions until they end: the schedule, and one shared poll loop per id.

Many waiters may follow the same execution (or thousands of different ones). Each
execution id has one poll loop, its state a few entries in the dicts of a
:class:`_PollTable`, started from one timeline of due polls rather than by a sleeping
task per waiter; every waiter is a small :class:`Subscription` woken by a future, and
one ``as_completed`` is one :class:`Batch` for all of its executions. This keeps the
number of long-lived, GC-tracked objects (and so the pauses of CPython's cyclic
collector) low; see the team's design notes, design/PERFORMANCE.md. Waits started together come in
by turns, a batch per event-loop iteration (:meth:`Poller.admission`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import heapq
import itertools
import logging
import math
import random
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, NamedTuple, TypeVar

import attrs

from . import _instrument
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


def interval_after(schedule: PollSchedule, interval: float, *, changed: bool) -> float:
    """The gap the schedule gives after an answer: back to the start when the status changed.

    An unchanged status, or a failed lookup (``changed=False``), grows ``interval``.
    Shared by the in-process poller and the durable one (``aiotlink.arq``).
    """
    return schedule.poll_interval if changed else schedule.next_interval(interval)


def nudge_floor(not_before: float, started_at: float) -> float:
    """The earliest a nudge may bring a poll forward to (a time on any one clock).

    Never before the last answer's ``Retry-After`` (``not_before``), nor sooner than
    NUDGE_MIN_GAP after the last lookup started (``started_at``).
    """
    return max(not_before, started_at + NUDGE_MIN_GAP)


class NextPoll(NamedTuple):
    """When to poll next, as times of the clock ``now`` was read from."""

    due: float
    not_before: float  # the answer's Retry-After, honoured: nothing polls before it


def next_poll(
    now: float,
    interval: float,
    *,
    retry_after: float | None,
    random_fraction: float,
    started_at: float,
    nudged: bool,
) -> NextPoll:
    """The next poll after an answer at ``now``: one schedule for every kind of wait.

    ``interval`` less jitter, never before ``retry_after``; if the execution was
    nudged while its lookup was in flight (whose answer may predate the news), as soon
    as :func:`nudge_floor` allows instead.
    """
    not_before = now + honoured(retry_after)
    if nudged:
        return NextPoll(nudge_floor(not_before, started_at), not_before)
    delay = poll_delay(interval, retry_after=retry_after, random_fraction=random_fraction)
    return NextPoll(now + delay, not_before)


class DeadlinePassed(Exception):
    """A waiter's deadline passed before the execution ended (internal signal)."""


_ItemT = TypeVar("_ItemT")


class _Timeline(Generic[_ItemT]):
    """Items that fall due at times of the event loop's clock: one heap, one timer.

    A timer handle per item would be three more long-lived objects (handle, arguments,
    bound method) for each of thousands of waiters or polls, made anew at every poll,
    for CPython's cyclic collector to walk (the team's design/PERFORMANCE.md). The heap
    holds ``(when, serial, item)`` tuples; ``serial`` keeps the order of items due at
    the same time and spares comparing the items. An entry that is no longer wanted
    (``is_live(when, item)`` says so) stays until it comes up and is skipped, or until
    the heap outgrows twice the owner's count of live items (``live_count()``): so an
    item falls due earlier by being added again, with no pass over the heap.
    """

    def __init__(
        self,
        fire: Callable[[_ItemT], None],
        *,
        is_live: Callable[[float, _ItemT], bool],
        live_count: Callable[[], int],
        context: contextvars.Context,
    ) -> None:
        self._fire = fire
        self._is_live = is_live
        self._live_count = live_count
        self._context = context
        self._heap: list[tuple[float, int, _ItemT]] = []
        self._serials = itertools.count()
        self._timer: asyncio.TimerHandle | None = None

    def __len__(self) -> int:
        return len(self._heap)

    def add(self, when: float, item: _ItemT) -> None:
        """Fire ``item`` once the loop's clock reaches ``when``, if still live then."""
        if len(self._heap) > 2 * self._live_count() + 64:
            self._heap = [entry for entry in self._heap if self._is_live(entry[0], entry[2])]
            heapq.heapify(self._heap)
        entry = (when, next(self._serials), item)
        heapq.heappush(self._heap, entry)
        if self._heap[0] is entry:
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
            when = self._heap[0][0]
            self._timer = loop.call_at(when, self._due, when, context=self._context)

    def _due(self, armed_for: float) -> None:
        # The loop runs a timer up to its clock's resolution early: what the timer was
        # armed for is due even if the clock reads a hair less.
        now = max(asyncio.get_running_loop().time(), armed_for)
        self._timer = None
        try:
            while self._heap and self._heap[0][0] <= now:
                when, _, item = heapq.heappop(self._heap)
                if self._is_live(when, item):
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
        "_poller",
        "_waiter",
        "active",
        "deadline",
        "every_change",
        "execution_id",
        "schedule",
        "timeout",
    )

    def __init__(
        self,
        poller: Poller,
        execution_id: str,
        schedule: PollSchedule,
        deadline: float | None = None,
        timeout: float | None = None,
        *,
        every_change: bool = True,
    ) -> None:
        self._poller = poller
        self.execution_id = execution_id
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
    def poller(self) -> Poller:
        """The poller whose shared poll loop this follows."""
        return self._poller

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
        return self._poller.last_seen(self.execution_id)

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


class _PollTable:
    """What the poller keeps of every execution it polls: one dict per field, by id.

    A record object per execution (a class instance, a tuple holding an enum) is
    something CPython's full collections visit at every collection, and its floats and
    bytes besides: at 100,000 executions that was 100 ms a collection, some of them a
    second (benchmarks/NOTES.md, "100,000 executions"). Dicts of str keys and float,
    int or bytes values are never tracked by the collector, so these cost it nothing;
    ``subscribers`` is visited, but it points to few distinct objects when one batch
    follows them all. An execution is polled while it is in the table (in ``interval``).
    """

    __slots__ = (
        "due",
        "interval",
        "last_body",
        "last_status",
        "not_before",
        "nudged",
        "started_at",
        "subscribers",
        "tasks",
        "waiting",
    )

    def __init__(self) -> None:
        # Its waiters: mostly one, kept as it is (a list would be one more object per
        # execution for the collections to visit). Once a list, always a list.
        self.subscribers: dict[str, Subscriber | list[Subscriber]] = {}
        # The gap the schedule gives after its next answer; every execution polled has one.
        self.interval: dict[str, float] = {}
        # Loop time of its next poll, while that is in the poller's timeline.
        self.due: dict[str, float] = {}
        # Loop time before which the last answer's Retry-After asked not to poll.
        self.not_before: dict[str, float] = {}
        # Loop time its last lookup started.
        self.started_at: dict[str, float] = {}
        # The last change seen, as the status's text and the answer's bytes, decoded again
        # only when needed (a waiter joining late, a deadline): a decoded execution is two
        # objects pointing to some fifteen more for the collections to visit, and even a
        # status member is an object they visit (WorkflowStatus is a StrEnum: its members
        # compare equal to their text, which the collector does not track).
        self.last_status: dict[str, str] = {}
        self.last_body: dict[str, bytes] = {}
        # Its lookup in flight.
        self.tasks: dict[str, asyncio.Task[None]] = {}
        # Nudged since its last lookup started: while in flight, that answer may predate
        # what the nudge announced, so the next lookup follows it at once; while queued
        # for a connection, it is first in line.
        self.nudged: set[str] = set()
        # In the poller's queue for a connection (Poller._ready): a nudge may start it
        # from the urgent queue first, and its entry in _ready is then skipped.
        self.waiting: set[str] = set()

    def __len__(self) -> int:
        return len(self.interval)

    def __contains__(self, execution_id: str) -> bool:
        return execution_id in self.interval

    def drop(self, execution_id: str) -> None:
        """Forget the execution; its lookup in flight, if any, is the caller's to cancel."""
        for times in (self.interval, self.due, self.not_before, self.started_at):
            times.pop(execution_id, None)
        self.subscribers.pop(execution_id, None)
        self.last_status.pop(execution_id, None)
        self.last_body.pop(execution_id, None)
        self.tasks.pop(execution_id, None)
        self.nudged.discard(execution_id)
        self.waiting.discard(execution_id)

    def last_seen(self, execution_id: str) -> WorkflowExecution | None:
        """The execution as of the last change seen, or ``None`` before the first answer."""
        body = self.last_body.get(execution_id)
        if body is None:
            return None
        # It decoded without error when it came, so decoding it again cannot fail.
        return decode_execution(parse_json(body))

    def subscribers_of(self, execution_id: str) -> list[Subscriber]:
        """The waiters on ``execution_id``."""
        subscribers = self.subscribers.get(execution_id)
        if subscribers is None:
            return []
        return subscribers if isinstance(subscribers, list) else [subscribers]

    def subscribe(self, execution_id: str, subscriber: Subscriber) -> None:
        subscribers = self.subscribers.get(execution_id)
        if subscribers is None:
            self.subscribers[execution_id] = subscriber
        elif isinstance(subscribers, list):
            subscribers.append(subscriber)
        else:
            self.subscribers[execution_id] = [subscribers, subscriber]

    def unsubscribe(self, execution_id: str, subscriber: Subscriber) -> bool:
        """Take a waiter off; whether any are left."""
        subscribers = self.subscribers[execution_id]
        if isinstance(subscribers, list):
            subscribers.remove(subscriber)
            return bool(subscribers)
        assert subscribers is subscriber
        del self.subscribers[execution_id]
        return False


class Poller:
    """Polls executions for their waiters, at most ``max_in_flight`` requests at once.

    ``fetch(execution_id)`` returns a :class:`Lookup`: the execution, the answer's body
    and its ``Retry-After``. Transient failures (after the session layer's own retries)
    skip a poll and back off; any other error ends the wait of every waiter on that id.
    Each execution has one poll loop, shared by every waiter on it, kept in the
    :class:`_PollTable` and driven by one timeline of due polls.
    """

    def __init__(self, fetch: Fetch, *, max_in_flight: int) -> None:
        self._fetch = fetch
        self._max_in_flight = max_in_flight
        self._in_flight = 0
        self._table = _PollTable()
        # Ids waiting for a connection, in turn (skipped unless in _table.waiting).
        self._ready: deque[str] = deque()
        # Nudged ids waiting for a connection: served before the others (an id may then
        # also be in _ready, and is skipped there once started).
        self._urgent: deque[str] = deque()
        self._waiting = 0
        # The turns of waits not yet let in, and the first lookups held back meanwhile
        # (Poller.admission): a dict for its order, and so that a poll stopped while
        # held leaves no entry behind.
        self._queued: deque[asyncio.Future[None]] = deque()
        self._held: dict[str, None] = {}
        # Timers run in an empty context of the poller's own, and each poll task in an
        # empty one of its own: a shared poll serves many waiters, so none of their
        # context variables may leak into it.
        self._context = contextvars.Context()
        # The loop the polls run on, from the first wait: nudges from elsewhere go to it.
        self._loop: asyncio.AbstractEventLoop | None = None
        # Set by close(): what a wait that comes later fails with.
        self.closed: Callable[[], TransactionLinkError] | None = None
        # The next poll of every execution, and the deadline of every waiter that has one.
        # A poll's entry is live while it is the poll's due time: one brought forward
        # leaves its old entry behind, as does a poll that stopped.
        self._due_polls: _Timeline[str] = _Timeline(
            self._poll_due,
            is_live=lambda due, execution_id: self._table.due.get(execution_id) == due,
            live_count=lambda: len(self._table),
            context=self._context,
        )
        self._deadlines: _Timeline[Subscription] = _Timeline(
            self._deadline_passed,
            is_live=lambda deadline, subscription: subscription.active,
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
        self._table.waiting.update(self._held)
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
        told: set[Subscriber] = set()  # a batch follows many: told once
        for execution_id in list(self._table.interval):
            subscribers = self._table.subscribers_of(execution_id)
            self._stop(execution_id)
            for subscriber in subscribers:
                if subscriber in told:
                    continue
                told.add(subscriber)
                if isinstance(subscriber, Batch):
                    subscriber.end(error())
                else:
                    subscriber.fail(error())

    @property
    def active_polls(self) -> int:
        """How many executions are being polled now."""
        return len(self._table)

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
        deadline = None
        if timeout is not None:
            now = asyncio.get_running_loop().time()
            deadline = (now if since is None else since) + timeout
            if deadline <= now:  # the wait's turn took all of its time
                raise WaitTimeoutError(self.last_seen(execution_id), timeout)
        new = execution_id not in self._table
        if new:
            self._new_poll(execution_id, schedule)
        else:
            self._hasten(execution_id, schedule)
        subscription = Subscription(
            self, execution_id, schedule, deadline, timeout, every_change=every_change
        )
        self._table.subscribe(execution_id, subscription)
        self._waiting += 1
        # Without every_change, the last change (never terminal: that ends the poll)
        # would only be dropped.
        last = self.last_seen(execution_id) if every_change else None
        if last is not None:
            subscription.push(last)
        if deadline is not None:
            self._deadlines.add(deadline, subscription)
        if new:
            self._first_lookup(execution_id)
        # Last: the subscription is whole and its poll started whatever the hook does.
        if (hook := _instrument.current) is not None:
            last_status = self._table.last_status.get(execution_id)
            hook.wait_started(
                subscription, None if last_status is None else WorkflowStatus(last_status)
            )
        return subscription

    def _new_poll(self, execution_id: str, schedule: PollSchedule) -> None:
        """A poll loop for ``execution_id``, not started: see :meth:`_first_lookup`."""
        self._loop = asyncio.get_running_loop()
        self._table.interval[execution_id] = schedule.poll_interval

    def _first_lookup(self, execution_id: str) -> None:
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
            self._held[execution_id] = None
        else:
            self._start(execution_id)

    def join(self, batch: Batch, execution_id: str) -> None:
        """Follow ``execution_id`` for ``batch`` too; its end goes to ``batch.settle``."""
        if self.closed is not None:
            raise self.closed()
        if execution_id not in self._table:
            self._new_poll(execution_id, batch.schedule)
            self._table.subscribe(execution_id, batch)
            self._first_lookup(execution_id)
        else:
            self._hasten(execution_id, batch.schedule)
            self._table.subscribe(execution_id, batch)

    def leave(self, batch: Batch, execution_id: str) -> WorkflowExecution | None:
        """Stop following ``execution_id`` for ``batch``: the last execution seen, if any.

        The last follower to leave stops the poll loop and its request.
        """
        if batch not in self._table.subscribers_of(execution_id):
            return None
        last = self.last_seen(execution_id)
        if not self._table.unsubscribe(execution_id, batch):
            self._stop(execution_id)
        return last

    def unsubscribe(self, subscription: Subscription) -> None:
        """Stop following; the last waiter to leave stops the poll loop and its request."""
        if not subscription.active:
            return
        subscription.active = False
        self._waiting -= 1
        execution_id = subscription.execution_id
        # Its poll loop may have ended already (the end seen, or a failure).
        followed = subscription in self._table.subscribers_of(execution_id)
        if followed and not self._table.unsubscribe(execution_id, subscription):
            self._stop(execution_id)
        # Last: the subscription is gone, whatever the hook does.
        if (hook := _instrument.current) is not None:
            hook.wait_ended(subscription, subscription._error)

    def last_seen(self, execution_id: str) -> WorkflowExecution | None:
        """The execution as of its poll loop's last change, or ``None`` before any."""
        return self._table.last_seen(execution_id)

    @staticmethod
    def _deadline_passed(subscription: Subscription) -> None:
        subscription.fail(DeadlinePassed())

    def _stop(self, execution_id: str) -> None:
        # Its scheduled next poll stays in the timeline until it comes up and is skipped
        # (or the timeline is compacted): at most a max_poll_interval, bounded in number.
        task = self._table.tasks.get(execution_id)
        self._table.drop(execution_id)
        self._held.pop(execution_id, None)
        if task is not None:
            task.cancel()

    def _start(self, execution_id: str) -> None:
        if execution_id not in self._table:
            return
        if self._in_flight >= self._max_in_flight:
            self._table.waiting.add(execution_id)
            self._ready.append(execution_id)
            return
        self._in_flight += 1
        self._table.nudged.discard(execution_id)  # this lookup answers every nudge so far
        loop = asyncio.get_running_loop()
        self._table.started_at[execution_id] = loop.time()
        # Not the timers' context: this may run inside it (a timer, or a poll task
        # starting the next), and an eager task factory would enter it a second time.
        task = loop.create_task(self._poll_once(execution_id), context=contextvars.Context())
        if not task.done():  # an eager task factory may have run it to its end already
            self._table.tasks[execution_id] = task

    def _start_ready(self) -> None:
        waiting = self._table.waiting
        while self._in_flight < self._max_in_flight:
            if self._urgent:
                execution_id = self._urgent.popleft()
            elif self._ready:
                execution_id = self._ready.popleft()
            else:
                return
            if execution_id in waiting:  # else started from the other queue, or stopped
                waiting.discard(execution_id)
                self._start(execution_id)

    def _schedule(self, execution_id: str, retry_after: float | None) -> None:
        table = self._table
        nudged = execution_id in table.nudged  # nudged while this lookup was in flight
        table.nudged.discard(execution_id)
        due, table.not_before[execution_id] = next_poll(
            asyncio.get_running_loop().time(),
            table.interval[execution_id],
            retry_after=retry_after,
            random_fraction=random.random(),
            started_at=table.started_at[execution_id],
            nudged=nudged,
        )
        self._poll_at(execution_id, due)

    def _poll_at(self, execution_id: str, due: float) -> None:
        """Set the next poll of ``execution_id`` for ``due``, a time of the loop's clock."""
        self._table.due[execution_id] = due
        self._due_polls.add(due, execution_id)

    def _poll_due(self, execution_id: str) -> None:
        del self._table.due[execution_id]
        self._start(execution_id)

    def _hasten(self, execution_id: str, schedule: PollSchedule) -> None:
        """Bring the next poll forward to what a waiter joining with ``schedule`` asks.

        A waiter that joins a poll loop in a long gap (another waiter's minute) must not
        wait out that gap. Polls in flight or queued need nothing: the answer's merged
        schedule paces the next. The last answer's Retry-After is still honoured.
        """
        table = self._table
        due = table.due.get(execution_id)
        if due is None or schedule.poll_interval >= table.interval[execution_id]:
            return
        table.interval[execution_id] = schedule.poll_interval
        delay = poll_delay(
            schedule.poll_interval, retry_after=None, random_fraction=random.random()
        )
        sooner = max(asyncio.get_running_loop().time() + delay, table.not_before[execution_id])
        if sooner < due:
            self._poll_at(execution_id, sooner)

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
            if execution_id not in self._table:
                return False
            with contextlib.suppress(RuntimeError):  # that loop is closed: nothing to wake
                loop.call_soon_threadsafe(self._nudge, execution_id, status, context=self._context)
            return True
        return self._nudge(execution_id, status)

    def _nudge(self, execution_id: str, status: WorkflowStatus | None) -> bool:
        table = self._table
        if execution_id not in table:
            return False
        if status is not None and not status.is_terminal:
            subscribers = table.subscribers_of(execution_id)
            wanted = any(subscriber.every_change for subscriber in subscribers)
            if status == table.last_status.get(execution_id) or not wanted:
                return True
        due = table.due.get(execution_id)
        if execution_id in table.tasks:
            table.nudged.add(execution_id)
        elif execution_id in table.waiting:
            # Queued for a connection: first in line, once.
            if execution_id not in table.nudged:
                table.nudged.add(execution_id)
                self._urgent.append(execution_id)
        elif due is not None:
            now = asyncio.get_running_loop().time()
            floor = nudge_floor(table.not_before[execution_id], table.started_at[execution_id])
            sooner = max(now, floor)
            if sooner < due:
                self._poll_at(execution_id, sooner)
        # Else held for admission: its first lookup comes within a few iterations.
        return True

    async def _poll_once(self, execution_id: str) -> None:
        try:
            fetching = self._fetch(execution_id)
            hook = _instrument.current
            lookup = await (fetching if hook is None else hook.poll(self, execution_id, fetching))
        except GeneratorExit:
            raise  # the event loop is closing with this poll pending: start nothing new
        except Exception as error:
            self._release(execution_id)
            self._failed(execution_id, error)
            return
        except BaseException:  # cancelled: its waiters have all left
            self._release(execution_id)
            raise
        self._release(execution_id)
        self._seen(execution_id, lookup)

    def _release(self, execution_id: str) -> None:
        """Give the finished request's place to the next poll that is due."""
        self._in_flight -= 1
        tasks = self._table.tasks
        # Not another's: a poll stopped, then started again for the same id, has a task
        # of its own by the time this cancelled one gets here.
        if tasks.get(execution_id) is asyncio.current_task():
            del tasks[execution_id]
        self._start_ready()

    # _failed and _seen run only for a poll that is not stopped: stopping one cancels
    # its request task, which then never gets past the await of its fetch.
    def _failed(self, execution_id: str, error: Exception) -> None:
        subscribers = self._table.subscribers_of(execution_id)
        if not is_transient(error):
            self._stop(execution_id)
            for subscriber in subscribers:
                subscriber.fail(error, execution_id)
            return
        # The session layer has already retried this poll: skip it and keep waiting.
        logger.warning("polling execution %s failed, will poll again: %s", execution_id, error)
        schedule = PollSchedule.merge([subscriber.schedule for subscriber in subscribers])
        interval = self._table.interval
        interval[execution_id] = interval_after(schedule, interval[execution_id], changed=False)
        self._schedule(execution_id, error.retry_after if isinstance(error, APIError) else None)

    def _seen(self, execution_id: str, lookup: Lookup) -> None:
        table, execution = self._table, lookup.execution
        subscribers = table.subscribers_of(execution_id)
        schedule = PollSchedule.merge([subscriber.schedule for subscriber in subscribers])
        changed = execution.status != table.last_status.get(execution_id)
        table.interval[execution_id] = interval_after(
            schedule, table.interval[execution_id], changed=changed
        )
        if changed:
            logger.debug("execution %s is %s", execution_id, execution.status.value)
            table.last_status[execution_id] = execution.status.value
            table.last_body[execution_id] = lookup.body
            for subscriber in subscribers:
                subscriber.push(execution, execution_id)
        if execution.is_terminal:
            # Done: a later waiter on this id starts afresh with one lookup.
            self._stop(execution_id)
            return
        self._schedule(execution_id, lookup.retry_after)


def _running_in(loop: asyncio.AbstractEventLoop) -> bool:
    """Whether this thread is running ``loop`` now."""
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def is_transient(error: BaseException) -> bool:
    """Whether a failed poll is worth another one later, whatever its ``Retry-After``.

    A wait outlives any one answer: a 503 that asks for ten minutes ends the session
    layer's retries of that poll, never the wait (README.md, "Waiting").
    """
    if isinstance(error, APIError):
        return error.status >= 500 or error.status in RETRYABLE_STATUSES
    return isinstance(error, APIConnectionError)


DEFAULT_SCHEDULE = PollSchedule()
