"""A budget of bytes that many tasks draw on and give back: a client's download buffers."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections import deque
from collections.abc import AsyncIterator

# The budget a download streaming to disk is counted to need: a budget of B bytes lets
# B // STREAM_SHARE_BYTES of them stream at once (32 for the default 16 MiB), and the
# others wait their turn before they ask for the result. Each stream also has its
# socket and aiohttp's read buffer, which the bytes taken below do not count; and at
# 100 at once every turn of the event loop read 100 sockets: slower than 32 at a time,
# with twice the loop's lag (benchmarks/NOTES.md, "A sixth look").
STREAM_SHARE_BYTES = 512 * 1024


class ByteBudget:
    """Bytes of download buffers a client may hold at once, shared by all its downloads.

    A download takes bytes as each chunk arrives (or before it maps a buffer), and they
    come back once the disk has them; when none are left it waits, rather than allocate
    more. Downloads that wait are let in first come, first served, so that none starves
    while others stream. One chunk larger than the whole budget is let through alone.

    Taking happens on the event loop; giving back mostly on a disk thread, as each write
    ends. A disk thread gives back under a lock and wakes the loop only when the first
    download waiting now fits, and once until the loop has let it in: a wake-up per
    write (thousands a second at 100 downloads) cost the loop more than the writes
    themselves (benchmarks/NOTES.md, "Downloads at concurrency").
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.users = 0  # downloads streaming now (turn()): each may buffer a share
        self._turns = asyncio.Semaphore(max(1, limit // STREAM_SHARE_BYTES))

        self._lock = threading.Lock()
        self._waiting: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._wake_pending = False  # a _grant is queued on the loop by a disk thread

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """A download's turn to stream, counted among the users while it lasts.

        It waits, first come first served, while as many downloads stream as the
        budget allows (STREAM_SHARE_BYTES).
        """
        async with self._turns:
            self.users += 1
            try:
                yield
            finally:
                self.users -= 1

    def has_room(self, size: int) -> bool:
        """Whether ``size`` bytes could be taken now, nobody waiting before."""
        with self._lock:
            return not self._waiting and (self.used + size <= self.limit or self.used == 0)

    def try_take(self, size: int) -> bool:
        """Take ``size`` bytes if there is room now and nobody waits before: whether taken."""
        with self._lock:
            if self._waiting or (self.used + size > self.limit and self.used > 0):
                return False
            self.used += size
            return True

    async def take(self, size: int) -> None:
        """Take ``size`` bytes, waiting in turn for room."""
        with self._lock:
            if not self._waiting and (self.used + size <= self.limit or self.used == 0):
                self.used += size
                return
            turn = asyncio.get_running_loop().create_future()
            self._waiting.append((size, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.give(size)  # granted just as the download was cancelled
            raise

    def share(self, most: int, least: int) -> int:
        """A fair share of the budget for one of its users, between ``least`` and ``most``."""
        return max(least, min(most, self.limit // max(1, self.users)))

    def give(self, size: int) -> None:
        """Give ``size`` bytes back, on the event loop."""
        with self._lock:
            self.used -= size
        self._grant()

    def give_from_any_thread(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        """Give ``size`` bytes back from any thread; the loop is woken only to let one in.

        No wake-up while nobody waits, or while the first waiter still does not fit, or
        while one is on its way already: at 100 downloads the disk threads give back
        thousands of times a second, and each wake-up is a system call on both sides.
        """
        with self._lock:
            self.used -= size
            if self._wake_pending or not self._waiting:
                return
            first = self._waiting[0][0]
            if self.used + first > self.limit and self.used > 0:
                return
            self._wake_pending = True
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits any more
            loop.call_soon_threadsafe(self._grant)

    def _grant(self) -> None:
        """Let waiters in, in turn, while there is room (on the event loop)."""
        while True:
            with self._lock:
                self._wake_pending = False
                if not self._waiting:
                    return
                size, turn = self._waiting[0]
                if turn.done():  # cancelled while waiting
                    self._waiting.popleft()
                    continue
                if self.used + size > self.limit and self.used > 0:
                    return
                self._waiting.popleft()
                self.used += size
            turn.set_result(None)
