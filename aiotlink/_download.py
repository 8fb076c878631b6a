"""Results straight to disk: streamed, atomic, resumed with Range, refreshed on expiry.

A result is written to a temporary file beside its destination and renamed into place
only once it is whole (its length checked) and on disk (fsynced), so the destination
either keeps what it had or holds the complete result. Dropped connections resume
from the bytes already written; an expired pre-signed URL (403) is replaced by asking
the API for the result again. Reads time out per read, never in total, so a large
healthy download is never cut short.

The bytes go through the page cache from a few disk threads shared by every download
(DISK_THREADS), and a client's downloads share one budget of buffered bytes
(``download_buffer_bytes``): memory and threads are bounded by the client, not by the
number of downloads. ``direct_io=True`` bypasses the page cache instead, from buffers
taken from the same budget (README.md, "Large results to disk").
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import logging
import mmap
import os
import re
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import aiohttp
import attrs

from . import _instrument
from ._budget import ByteBudget
from ._callbacks import OnProgress, notify
from ._errors import (
    APIConnectionError,
    APIError,
    DownloadError,
    PermissionDeniedError,
    ResponseValidationError,
    ResultTooLargeError,
    TransactionLinkError,
)
from ._models import DownloadedResult
from ._redaction import mask_url, scrub_text
from ._results import redirect_target
from ._retry import call_with_retries
from ._transport import STORAGE_ROUTE, parse_json, read_up_to

if TYPE_CHECKING:
    from ._requester import Requester

logger = logging.getLogger("aiotlink")

# Whether downloads bypass the page cache unless told (download_result's direct_io).
DIRECT_IO = False
# What one download may have queued for the disk at once, at most: enough to keep a
# disk thread busy while the loop reads on.
MAX_QUEUED_BYTES = 4 * 1024 * 1024
# Chunks are gathered into batches of up to a quarter of this for a disk thread, less
# as more downloads share the client's budget: gathered bytes are held until written.
# A batch is one hand-over to a thread, but a write a chunk (see _write_gathered).
MAX_BATCH_BYTES = 4 * 1024 * 1024
MIN_BATCH_BYTES = 64 * 1024
# What aiohttp may hold of a download's body (read_bufsize is a quarter of this): large
# for one download (page faults, not HTTP, set the pace), smaller as more share the
# client's budget, but never under twice a socket read (below).
MAX_READ_BUFFER_BYTES = 1024 * 1024
MIN_READ_BUFFER_BYTES = 64 * 1024
# How much one turn of the event loop may read for all of a client's downloads, shared
# among those streaming as the size of each socket read (asyncio's 256 KiB at most, 64
# KiB at least). Every socket with data is read in the same turn: at 100 downloads of
# 256 KiB reads a turn took some 40 ms at 650 MB/s, and the loop's lag with it. With 32
# streaming (ByteBudget.turn), 6 MiB (192 KiB reads) measured a worst lag of 21 to 23 ms
# in the median round against 8 MiB's 22 to 27 (benchmarks/NOTES.md, "A sixth look").
# Reads under 128 KiB cost half as much CPU again (glibc's heap; "A fifth look").
LOOP_TURN_READ_BYTES = 6 * 1024 * 1024
MAX_SOCKET_READ_BYTES = 256 * 1024
MIN_SOCKET_READ_BYTES = 64 * 1024
# Each stretch this long, once written, is sent on to the disk at once, while the rest
# downloads (:func:`_start_write_out`): the fsync before the rename then finds little
# left to write, where otherwise the whole file would wait for it.
WRITE_OUT_BYTES = 8 * 1024 * 1024
# Direct writes go through up to this many buffers of this size (a multiple of
# DIRECT_ALIGNMENT) per download: 12 MiB. Fewer or smaller ones measured slower.
DIRECT_BUFFERS = 3
DIRECT_BUFFER_BYTES = 4 * 1024 * 1024
# O_DIRECT wants buffers, offsets and lengths aligned to the device's logical block size:
# 4096 is a multiple of every common one.
DIRECT_ALIGNMENT = 4096
PROGRESS_INTERVAL = 0.1  # seconds between two on_progress calls, at the most
# A redirect answer is a few hundred bytes; anything longer is the result itself.
REDIRECT_PROBE_BYTES = 64 * 1024
# New pre-signed URLs asked for after storage refused one (403: expired); each new URL
# gets the client's retry policy afresh.
MAX_URL_REFRESHES = 3
# ASCII digits only, and no more of them than a 64-bit length has.
_CONTENT_RANGE = re.compile(r"bytes ([0-9]{1,19})-([0-9]{1,19})/([0-9]{1,19}|\*)")


class _Incomplete(APIConnectionError):
    """The body ended before its announced length: a transient failure, to resume from.

    An APIConnectionError, so that the client's retry policy (_retry.retry_reason)
    retries it like any lost connection.
    """

    def __init__(self, message: str, *, url: str) -> None:
        super().__init__(message, method="GET", url=url, request_sent=True)


class _Unusable(_Incomplete):
    """An answer that cannot be put together with the bytes on disk: start over.

    Retried from byte 0 like a lost connection; once the retries run out it becomes a
    DownloadError, since storage never gave one object whole.
    """


@attrs.define
class _Source:
    """Where the bytes come from: the API itself (inline) or pre-signed storage."""

    url: str = attrs.field(repr=mask_url)
    redirected: bool


@attrs.define
class _Progress:
    """Calls ``on_progress`` at most every PROGRESS_INTERVAL seconds, and at the end."""

    callback: OnProgress | None
    last_call: float = 0.0

    async def report(self, done: int, total: int | None, *, final: bool = False) -> None:
        if self.callback is None:
            return
        now = time.monotonic()
        if not final and now - self.last_call < PROGRESS_INTERVAL:
            return
        self.last_call = now
        await notify(self.callback, done, total)


def content_range(header: str | None) -> tuple[int, int, int | None] | None:
    """First byte, last byte and total length from a ``Content-Range`` header.

    ``None`` for a missing or malformed header; the total is ``None`` for ``*``.
    """
    match = _CONTENT_RANGE.fullmatch(header or "")
    if match is None:
        return None
    return int(match[1]), int(match[2]), None if match[3] == "*" else int(match[3])


class LineUp(NamedTuple):
    """How an answer lines up with the bytes already on disk (:func:`line_up`).

    ``restart``: the file is emptied before this body is written. ``total``: the
    object's length, if known; ``etag`` the tag a resume may name it by (``None``: it
    may not be resumed). ``problem``: set when the answer cannot be used at all.
    """

    restart: bool
    total: int | None
    etag: str | None
    problem: str | None = None


def line_up(
    status: int,
    headers: Mapping[str, str],
    *,
    offset: int,
    etag: str | None,
    total: int | None,
) -> LineUp:
    """Whether a successful answer continues the download, restarts it, or is unusable.

    ``offset`` is the bytes on disk (a ``Range`` was asked from there when it is not 0),
    ``etag`` and ``total`` what earlier answers said of the object. A ``206`` is taken
    only if it is the same object (the ETag it started with, when resuming), from
    exactly ``offset`` to its end, with a known total that matches and a length that
    fits; anything else could splice two objects into one file. A ``200`` is the whole
    object afresh; under the ETag already seen it must keep that object's length.
    Only a strong ETag of an unencoded body may be resumed by: a weak one does not
    promise the same bytes (RFC 9110, 13.1.5), and ranges of an encoded body count
    bytes that are not the ones written.
    """
    encoded = headers.get("Content-Encoding", "identity").strip().lower() != "identity"
    length = None if encoded else _digits(headers.get("Content-Length"))
    tag = headers.get("ETag")
    resumable = None if encoded or tag is None or tag.startswith("W/") else tag
    if status != 206:
        if offset == 0 or tag != etag or etag is None:
            return LineUp(restart=offset > 0, total=length, etag=resumable)
        # The same object again, whole: it may not be shorter (or longer) than it was.
        if length is not None and total is not None and length != total:
            return LineUp(False, None, None, "storage's length changed under the same ETag")
        return LineUp(restart=True, total=total if length is None else length, etag=resumable)
    if offset and (etag is None or tag != etag):
        return LineUp(False, None, None, "storage's ETag changed: the object is not the same")
    parsed = None if encoded else content_range(headers.get("Content-Range"))
    if parsed is None:
        return LineUp(False, None, None, "storage's Content-Range is missing or malformed")
    first, last, announced = parsed
    if first != offset:
        return LineUp(False, None, None, f"storage answered from byte {first}, not {offset}")
    if announced is None or (total is not None and announced != total):
        return LineUp(False, None, None, "storage's total length is unknown or changed")
    if last != announced - 1 or (length is not None and length != last - first + 1):
        return LineUp(False, None, None, "storage's range and length do not agree")
    return LineUp(restart=False, total=announced, etag=resumable if offset == 0 else etag)


_DIGITS = re.compile(r"[0-9]{1,19}")  # a length beyond 2**63 is no length


def _digits(value: str | None) -> int | None:
    """A header's non-negative whole number, or ``None`` when absent or malformed."""
    if value is None or not _DIGITS.fullmatch(value.strip()):
        return None
    return int(value)


class _DiskPool:
    """A few threads for every file's disk work in the process; idle ones end.

    Bounded, whatever the number of downloads: 100 at once share these threads. A
    thread waits IDLE_SECONDS for more work before it ends, so a download's stream of
    writes does not start a thread per write, and none lingers once all are done.
    """

    IDLE_SECONDS = 0.5

    def __init__(self, max_threads: int, name: str = "aiotlink-disk") -> None:
        self._max_threads = max_threads
        self._name = name
        self._work: deque[Callable[[], None]] = deque()
        self._ready = threading.Condition()
        self._threads = self._idle = 0
        self._names = iter(range(1, 2**62))

    def submit(self, work: Callable[[], None]) -> None:
        """Run ``work`` on one of the threads, after the work submitted before it."""
        with self._ready:
            self._work.append(work)
            if self._idle:
                self._ready.notify()
                return
            if self._threads >= self._max_threads:
                return
            self._threads += 1
            name = f"{self._name}-{next(self._names)}"
        try:
            threading.Thread(target=self._serve, name=name, daemon=True).start()
        except BaseException:  # no thread to be had: the work waits for a running one
            with self._ready:
                self._threads -= 1
            raise

    def _serve(self) -> None:
        while True:
            with self._ready:
                if not self._work:
                    self._idle += 1
                    self._ready.wait(self.IDLE_SECONDS)
                    self._idle -= 1
                    if not self._work:
                        self._threads -= 1
                        return
                work = self._work.popleft()
            try:
                work()  # _DiskQueue keeps each item's outcome in its future
            except Exception:  # a thread lost would leave its slot counted for ever
                logger.exception("disk work failed outside its future")

    def reset_after_fork(self) -> None:
        """Forget the threads of the parent process: a child has none of them."""
        self._work = deque()
        self._ready = threading.Condition()
        self._threads = self._idle = 0


DISK_THREADS = 4
_DISK_POOL = _DiskPool(DISK_THREADS)
# The fsyncs before the renames run on threads of their own: one takes tens of ms, and
# 100 downloads ending together would hold every write of the others behind them.
_SYNC_POOL = _DiskPool(DISK_THREADS, name="aiotlink-sync")
if hasattr(os, "register_at_fork"):  # a child forked while disk work ran starts afresh
    os.register_at_fork(after_in_child=_DISK_POOL.reset_after_fork)
    os.register_at_fork(after_in_child=_SYNC_POOL.reset_after_fork)


class _DiskQueue:
    """One file's work off the event loop, in order, on the shared disk threads.

    One item at a time, then back to the end of the pool's queue, so that no file holds
    a thread while others wait. :meth:`stop` drops the queued work and runs a last
    action (closing the file) at once if none is running, or right after the one that
    is: a descriptor is never closed under a write, where a file opened meanwhile could
    get its number and the bytes meant for this one.
    """

    def __init__(self, pool: _DiskPool = _DISK_POOL, sync_pool: _DiskPool = _SYNC_POOL) -> None:
        self._pool = pool
        self._sync_pool = sync_pool
        self._lock = threading.Lock()
        self._pending: deque[
            tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...], bool]
        ] = deque()
        self._scheduled = self._running = self._stopped = False
        self._last: Callable[[], None] | None = None

    def submit(
        self, work: Callable[..., object], *args: Any, sync: bool = False
    ) -> concurrent.futures.Future[Any]:
        """Queue ``work(*args)``; its future holds its outcome (cancelled if dropped).

        ``sync``: it is the fsync before the rename, run on the sync pool's threads.
        """
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            if self._stopped:
                future.cancel()
                return future
            self._pending.append((future, work, args, sync))
            schedule = not self._scheduled
            self._scheduled = True
        if schedule:
            self._next_pool(sync).submit(self._step)
        return future

    async def run(self, work: Callable[..., object], *args: Any, sync: bool = False) -> None:
        """Run ``work`` after the work queued before it, and wait for it."""
        await asyncio.wrap_future(self.submit(work, *args, sync=sync))

    def _next_pool(self, sync: bool) -> _DiskPool:
        return self._sync_pool if sync else self._pool

    def _step(self) -> None:
        with self._lock:
            if self._stopped or not self._pending:
                self._scheduled = False
                return
            future, work, args, _ = self._pending.popleft()
            if not future.set_running_or_notify_cancel():
                item = None
            else:
                item = (future, work, args)
                self._running = True
        if item is not None:
            outcome: Any = None
            failure: BaseException | None = None
            try:
                outcome = work(*args)
            except BaseException as error:
                failure = error
            finally:
                with self._lock:
                    self._running = False
                    last, self._last = self._last, None
                    self._stopped = self._stopped or last is not None
                if last is not None:
                    try:
                        last()
                    except OSError as error:  # closing failed (EIO on NFS): nobody to tell
                        logger.warning("could not close a download's temporary file: %s", error)
            # Settled after the last action: whoever awaits it finds the file closed.
            if failure is not None:
                future.set_exception(failure)
            else:
                future.set_result(outcome)
        with self._lock:
            again = bool(self._pending) and not self._stopped
            self._scheduled = again
            sync = again and self._pending[0][3]
        if again:
            self._next_pool(sync).submit(self._step)

    def stop(self, last: Callable[[], None]) -> None:
        """Drop the queued work; run ``last`` now, or once the running work is done."""
        with self._lock:
            run_now = not self._running
            self._stopped = True
            if not run_now:
                self._last = last
            dropped, self._pending = self._pending, deque()
        for future, *_ in dropped:
            future.cancel()
        if run_now:
            last()


class _TempFile:
    """The temporary file beside the destination, renamed over it once whole.

    Its bytes go through the page cache (:class:`_PageCacheWriter`), or with
    ``direct_io`` straight to the device where the filesystem allows it
    (:class:`_DirectWriter`). Either way they are synced once, before the rename.

    Whatever touches the file off the event loop runs on its disk queue, in order, and
    the file is closed only once none of that work runs: a task cancelled while a disk
    thread works must not close the descriptor under it, or a file opened meanwhile
    could get its number, and the bytes or the truncation meant for this one.
    """

    def __init__(self, destination: Path, budget: ByteBudget, *, direct_io: bool) -> None:
        self.destination = destination
        # The name cut short: a destination's name near the system's limit (255 bytes)
        # must still leave room for the temporary file's.
        short = destination.name[:100]
        self.path = destination.with_name(f".{short}.{secrets.token_hex(6)}.part")
        with self._disk_errors("could not start writing"):  # EACCES, ENAMETOOLONG, EROFS
            # Not mkstemp: its 0600 would survive the rename. Mode 0666 less the umask
            # is what a file created by any other program gets.
            descriptor = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._disk = _DiskQueue()
        try:
            with self._disk_errors("could not write"):  # no memory, say
                self._writer: _DirectWriter | _PageCacheWriter = (
                    _DirectWriter(descriptor, self._disk, budget)
                    if direct_io and _bypass_page_cache(descriptor)
                    else _PageCacheWriter(descriptor, self._disk, budget)
                )
        except BaseException:
            os.close(descriptor)
            self.path.unlink()
            raise
        self.size = 0

    def has_room(self, size: int) -> bool:
        return self._writer.has_room(size)

    async def write(self, chunk: bytes) -> None:
        with self._disk_errors("could not write"):
            await self._writer.write(chunk)
        self.size += len(chunk)

    async def restart(self, *, same_object: bool = False, reason: str = "") -> None:
        """Empty the file: the next bytes written are the object's first."""
        with self._disk_errors("could not write"):
            await self._writer.settle()
            await self._disk.run(self._writer.truncate)
        self.size = 0

    async def commit(self) -> None:
        """Write what is left, fsync, then rename over the destination and fsync the folder."""
        with self._disk_errors("could not finish writing"):
            await self._writer.settle()
            await self._disk.run(self._commit, sync=True)

    def _commit(self) -> None:
        self._writer.finish()
        os.fsync(self._writer.descriptor)
        self._writer.close()
        os.replace(self.path, self.destination)
        # The whole file is in place now: a crash could still lose the rename, but no
        # error may say that the destination kept what it had.
        try:
            folder = os.open(self.destination.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
        except OSError as error:
            logger.warning("could not sync the folder of %s: %s", self.destination, error)

    def discard(self) -> None:
        """Remove the temporary file now, and close it once no disk work is running.

        No await: cancellation calls it. A commit still running on the disk thread then
        either renames the whole file into place first, or finds it gone.
        """
        try:
            self._disk.stop(self._writer.close)
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    @contextlib.contextmanager
    def _disk_errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise DownloadError(
                f"{doing} the result to {self.destination}: {error}", path=self.destination
            ) from error


def _bypass_page_cache(descriptor: int) -> bool:
    """Switch ``descriptor`` to direct I/O (``O_DIRECT``) if the OS and filesystem allow.

    Returns whether it did.
    """
    if not hasattr(os, "O_DIRECT"):
        return False  # macOS and Windows have no O_DIRECT
    import fcntl  # here: Windows has no fcntl either

    try:
        flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
        fcntl.fcntl(descriptor, fcntl.F_SETFL, flags | os.O_DIRECT)
    except OSError:  # EINVAL from a filesystem without direct I/O
        return False
    return True


def _stop_bypassing_page_cache(descriptor: int) -> bool:
    """Switch ``descriptor`` back to writes through the page cache; whether it was direct."""
    import fcntl

    flags = fcntl.fcntl(descriptor, fcntl.F_GETFL)
    if not flags & os.O_DIRECT:
        return False
    fcntl.fcntl(descriptor, fcntl.F_SETFL, flags & ~os.O_DIRECT)
    return True


# What a filesystem that takes O_DIRECT but not the writes raises for them.
_DIRECT_WRITE_REFUSED = frozenset({errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP})


def _write_gathered(descriptor: int, chunks: list[bytes], offset: int) -> None:
    """Write ``chunks`` one after another from ``offset`` (on a disk thread).

    One ``pwrite`` a chunk (a socket read: 256 KiB at most), not one ``pwritev`` a
    batch. Large writes cost the kernel more per byte here: into memory the host had
    taken back, a GiB in 1 MiB writes took 1.0 to 1.9 s of system CPU, in 128 KiB
    writes 0.3 s (``benchmarks/page_cache.py --write-kib``). Gathered, one 1 GiB
    download took 1.4 to 1.7 s of it; chunk by chunk 0.8 s, as raw aiohttp
    (benchmarks/NOTES.md, "A sixth look").
    """
    for chunk in chunks:
        _write_all(descriptor, memoryview(chunk), offset)
        offset += len(chunk)


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """Linux's sync_file_range(2), which Python's os module lacks; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes  # here: a Python built without libffi has none

        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (ImportError, OSError, AttributeError):  # no ctypes, or a libc without it
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_SYNC_FILE_RANGE = _sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # start writing the dirty pages out; wait for none of it


def _start_write_out(descriptor: int, start: int, end: int) -> bool:
    """Start writing bytes ``start`` to ``end`` of a file out to disk (on a disk thread).

    Only started: the pages stay cached, and the fsync before the rename is still what
    makes the file durable. Without it a whole result sat in the page cache until that
    fsync, and the download waited for all of it to be written then; with it the disk
    writes while the rest arrives (benchmarks/NOTES.md, "A fifth look"). False where the
    system or the filesystem cannot: the download goes on without.
    """
    if _SYNC_FILE_RANGE is None:
        return False
    if _SYNC_FILE_RANGE(descriptor, start, end - start, _SYNC_FILE_RANGE_WRITE) == 0:
        return True
    import ctypes  # found, since the call above was

    logger.debug(
        "could not start writing a download out early: %s", os.strerror(ctypes.get_errno())
    )
    return False


def _write_all(descriptor: int, data: memoryview, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (on the disk thread)."""
    while data:
        try:
            written = os.pwrite(descriptor, data, offset)
        except OSError as error:
            # Go on through the page cache rather than fail the download.
            if error.errno in _DIRECT_WRITE_REFUSED and _stop_bypassing_page_cache(descriptor):
                logger.info("the filesystem refused direct writes; writing through the cache")
                continue
            raise
        data = data[written:]
        offset += written


class _DirectWriter:
    """Writes that bypass the page cache, from the disk thread, while the loop fills on.

    Copying a large result into the page cache took most of the event loop's time, and
    the fsync before the rename then wrote it all out at once. Here the loop only copies
    each chunk into one of a few page-aligned buffers (``O_DIRECT`` wants aligned
    buffers, offsets and lengths). A full buffer goes to the device from the disk thread
    while the loop fills the next, so the fsync finds little left to do. The loop waits
    only when every buffer is still queued for the disk. The measurements are in
    benchmarks/NOTES.md, under the download.
    """

    def __init__(self, descriptor: int, disk: _DiskQueue, budget: ByteBudget) -> None:
        self.descriptor = descriptor
        self._disk = disk
        self._budget = budget
        self._loop = asyncio.get_running_loop()
        # How many buffers this download may use, reserved from the budget at its first
        # write, all at once: a download that had to come back for another buffer
        # could wait for ever on downloads that wait for theirs.
        self._count = 0
        # Mapped as the result grows: a small one needs one buffer, not all of them.
        self._buffers: list[memoryview] = []
        self._current = 0
        self._filled = 0  # bytes in the current buffer
        self._written = 0  # bytes handed to the disk thread: the current buffer's offset
        self._queued: deque[concurrent.futures.Future[None]] = deque()
        self._closed = False

    def has_room(self, size: int) -> bool:
        """Always said: its waits are for its own few buffers, reserved at the start."""
        return True

    async def write(self, chunk: bytes) -> None:
        data = memoryview(chunk)
        while data:
            if not self._count:
                fit = self._budget.limit // DIRECT_BUFFER_BYTES // max(1, self._budget.users)
                count = max(1, min(DIRECT_BUFFERS, fit))
                await self._budget.take(count * DIRECT_BUFFER_BYTES)
                self._count = count
            if self._current == len(self._buffers):
                # Anonymous maps are page-aligned; their pages are touched as they fill.
                mapped = mmap.mmap(-1, DIRECT_BUFFER_BYTES, flags=mmap.MAP_PRIVATE)
                self._buffers.append(memoryview(mapped))
            buffer = self._buffers[self._current]
            taken = min(len(data), len(buffer) - self._filled)
            buffer[self._filled : self._filled + taken] = data[:taken]
            self._filled += taken
            data = data[taken:]
            if self._filled == len(buffer):
                await self._hand_over(buffer)

    async def _hand_over(self, buffer: memoryview) -> None:
        self._queued.append(self._disk.submit(_write_all, self.descriptor, buffer, self._written))
        self._written += len(buffer)
        self._filled = 0
        self._current = (self._current + 1) % self._count
        if len(self._queued) == self._count:
            await self._land_oldest()  # it holds the buffer to fill next

    async def _land_oldest(self) -> None:
        await asyncio.wrap_future(self._queued[0])
        self._queued.popleft()

    async def settle(self) -> None:
        """Wait for the queued writes; raises the first one's error."""
        while self._queued:
            await self._land_oldest()

    # The rest runs on the disk thread, after every write handed over.
    def truncate(self) -> None:
        os.ftruncate(self.descriptor, 0)
        self._written = self._filled = 0

    def finish(self) -> None:
        """Write the last, partial buffer, padded to the alignment, then cut the padding."""
        size = self._written + self._filled
        if self._filled:
            padded = -(-self._filled // DIRECT_ALIGNMENT) * DIRECT_ALIGNMENT
            tail = self._buffers[self._current]
            tail[self._filled : padded] = bytes(padded - self._filled)
            _write_all(self.descriptor, tail[:padded], self._written)
        os.ftruncate(self.descriptor, size)

    def close(self) -> None:
        if not self._closed:  # a failed rename closes it twice: after the commit, on discard
            self._closed = True
            try:
                os.close(self.descriptor)
            finally:
                self._buffers = []  # unmapped now, whatever keeps this writer
                _give_back(self._loop, self._budget, self._count * DIRECT_BUFFER_BYTES)


class _PageCacheWriter:
    """Writes through the page cache, every one off the event loop: the default writer.

    Chunks are gathered into batches (MAX_BATCH_BYTES) for the file's disk queue, and
    the loop goes on reading while the disk threads write. Each chunk's bytes are taken
    from the client's budget as it arrives and come back once written, so that what
    every download holds, gathered or queued, stays within the budget. A download that
    finds no room hands what it has gathered to the disk before it waits (else the
    room that all wait for could be held by batches nobody writes), and the budget lets
    the waiting downloads in, in turn. One download holds MAX_QUEUED_BYTES at most: a
    fast one does not take the whole budget. Each WRITE_OUT_BYTES written are sent on to
    the disk at once (:func:`_start_write_out`); the fsync before the rename makes the
    file durable.
    """

    def __init__(self, descriptor: int, disk: _DiskQueue, budget: ByteBudget) -> None:
        self.descriptor = descriptor
        self._disk = disk
        self._budget = budget
        self._loop = asyncio.get_running_loop()
        self._queued: deque[tuple[concurrent.futures.Future[Any], int]] = deque()
        self._queued_bytes = 0
        # Chunks gathered into one write: a write per chunk as it arrives costs the loop
        # and the disk threads more in hand-overs than the copy it saves.
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._offset = 0
        self._written_out = 0  # where the next stretch to start writing out begins
        self._write_out = True  # until the system says it cannot
        self._closed = False

    def has_room(self, size: int) -> bool:
        return self._budget.has_room(size)

    async def write(self, chunk: bytes) -> None:
        size = len(chunk)
        if not self._budget.try_take(size):
            self._hand_over()
            await self._budget.take(size)
        self._batch.append(chunk)
        self._batch_bytes += size
        if self._batch_bytes >= self._budget.share(MAX_BATCH_BYTES, MIN_BATCH_BYTES) // 4:
            self._hand_over()
        while self._queued and self._queued_bytes + self._batch_bytes > MAX_QUEUED_BYTES:
            await asyncio.wrap_future(self._queued[0][0])
            self._land_oldest()
        while self._queued and self._queued[0][0].done():
            self._land_oldest()

    def _hand_over(self) -> None:
        """Queue the gathered chunks as one write; their bytes come back once written."""
        if not self._batch:
            return
        batch, size = self._batch, self._batch_bytes
        self._batch, self._batch_bytes = [], 0
        write_out_from = None
        if self._write_out and self._offset + size - self._written_out >= WRITE_OUT_BYTES:
            write_out_from, self._written_out = self._written_out, self._offset + size
        future = self._disk.submit(self._write, batch, self._offset, write_out_from)
        future.add_done_callback(partial(_give_back, self._loop, self._budget, size))
        self._offset += size
        self._queued_bytes += size
        self._queued.append((future, size))

    def _write(self, batch: list[bytes], offset: int, write_out_from: int | None) -> None:
        """Write ``batch`` at ``offset``; then start writing out the stretch it ends, if any."""
        _write_gathered(self.descriptor, batch, offset)
        # Checked here too: writes queued before a failure still carry their stretch.
        if write_out_from is not None and self._write_out:
            end = offset + sum(map(len, batch))
            self._write_out = _start_write_out(self.descriptor, write_out_from, end)

    def _land_oldest(self) -> None:
        """Forget the oldest queued write, done; raises its OSError if it failed."""
        future, size = self._queued.popleft()
        self._queued_bytes -= size
        future.result()

    async def settle(self) -> None:
        """Write what is gathered and wait for every queued write; raises the first error."""
        self._hand_over()
        while self._queued:
            await asyncio.wrap_future(self._queued[0][0])
            self._land_oldest()

    # The rest runs on the disk queue, after every write handed over.
    def truncate(self) -> None:
        os.ftruncate(self.descriptor, 0)
        self._offset = self._written_out = 0

    def finish(self) -> None:
        """Nothing is held back: every chunk went to the file as it came."""

    def close(self) -> None:
        if not self._closed:  # a failed rename closes it twice: after the commit, on discard
            self._closed = True
            # Gathered, never handed over (the download was cancelled or failed): the
            # bytes it took go back. A queued write that was dropped gives its own back
            # (its future is cancelled, and done).
            gathered, self._batch, self._batch_bytes = self._batch_bytes, [], 0
            try:
                os.close(self.descriptor)
            finally:
                if gathered:
                    _give_back(self._loop, self._budget, gathered)


def _limit_socket_reads(response: aiohttp.ClientResponse, size: int) -> None:
    """Each read of the response's socket takes ``size`` bytes at most.

    asyncio's selector transport reads ``max_size`` bytes at a time (256 KiB, a class
    attribute that an instance may shadow); a transport without it (uvloop's) keeps
    its own.
    """
    connection = response.connection
    transport = None if connection is None else connection.transport
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        selector_transport: Any = transport
        selector_transport.max_size = size


@contextlib.asynccontextmanager
async def _not_reading(response: aiohttp.ClientResponse) -> AsyncIterator[None]:
    """The socket left unread while the download waits for room in the client's budget.

    Else aiohttp reads on into its own buffer (up to twice ``read_bufsize`` and one read
    more) for every download that waits: at 100 downloads, tens of MiB outside the
    budget. Its read timeout does not run meanwhile: the wait is ours, not storage's.
    """
    connection = response.connection
    protocol = None if connection is None else connection.protocol
    if protocol is None or response.content.at_eof():  # the body is all read already
        yield
        return
    protocol.pause_reading()
    try:
        yield
    finally:
        protocol.resume_reading()


def _give_back(
    loop: asyncio.AbstractEventLoop, budget: ByteBudget, size: int, _: object = None
) -> None:
    """Return ``size`` bytes to ``budget`` (from a disk thread, or the loop)."""
    budget.give_from_any_thread(loop, size)


class _Sink(Protocol):
    """Where a download's bytes go: a temporary file, or a stream's reader.

    ``size`` is the bytes of the object written so far (where a resume starts).
    ``restart`` makes the next bytes written the object's first; ``same_object`` says
    they are the very bytes sent before (the same strong ETag), ``reason`` why.
    """

    size: int

    def has_room(self, size: int) -> bool:
        """Whether a write of ``size`` bytes would go on at once, with no wait for room."""
        ...

    async def write(self, chunk: bytes) -> None: ...

    async def restart(self, *, same_object: bool = False, reason: str = "") -> None: ...


class StreamSink:
    """The bytes of a download handed to a reader in pieces of at most ``chunk_size``.

    One piece at a time: ``write`` waits until the reader has taken the previous piece,
    so the download reads on only as fast as the reader takes, and holds at most a
    piece besides the one the reader has. What was handed on cannot be taken back: a
    restart of the same object (the strong ETag already seen) skips the bytes already
    handed on as they come again; any other restart after the first byte was handed
    on is a :class:`DownloadError`.
    """

    def __init__(self, chunk_size: int) -> None:
        self.size = 0
        self._chunk_size = chunk_size
        self._handed_on = 0  # bytes of the object the reader has had
        self._loop = asyncio.get_running_loop()
        self._piece: asyncio.Future[bytes | None] = self._loop.create_future()
        self._room: asyncio.Future[None] | None = None

    def has_room(self, size: int) -> bool:
        """Always: a write waits for the reader, and aiohttp's own bound holds meanwhile."""
        return True

    async def write(self, chunk: bytes) -> None:
        start, self.size = self.size, self.size + len(chunk)
        offset = max(0, self._handed_on - start)  # bytes of it handed on already
        while offset < len(chunk):
            piece = chunk[offset : offset + self._chunk_size]  # the chunk itself if it fits
            offset += len(piece)
            self._handed_on = start + offset
            self._room = self._loop.create_future()
            self._piece.set_result(piece)
            await self._room

    async def restart(self, *, same_object: bool = False, reason: str = "") -> None:
        if self._handed_on and not same_object:
            raise DownloadError(
                f"could not stream the rest of the result after {self._handed_on} bytes: "
                f"{reason or 'storage cannot resume it'}",
                path=None,
            )
        self.size = 0

    async def take(self) -> bytes | None:
        """The next piece, ``None`` at the end; raises what ended the download."""
        piece = await self._piece
        self._piece = self._loop.create_future()
        if self._room is not None and not self._room.done():
            self._room.set_result(None)  # the download may read the next piece now
        return piece

    def end(self, download: asyncio.Task[object]) -> None:
        """The download's task is done: tell the reader how (a done callback)."""
        if self._piece.done():  # the reader was cancelled in take(), or has left (close)
            return
        if download.cancelled():
            self._piece.cancel()
        elif (error := download.exception()) is not None:
            self._piece.set_exception(error)
        else:
            self._piece.set_result(None)

    def close(self) -> None:
        """The reader has left: what the download ends with is nobody's to hear.

        Its error, set on a piece nobody takes, would otherwise be logged by asyncio as
        "exception was never retrieved" (with its traceback) once collected.
        """
        if not self._piece.done():
            self._piece.cancel()
        elif not self._piece.cancelled():
            self._piece.exception()  # retrieved: the reader chose not to hear it


class Streamed(NamedTuple):
    """What a download to a reader did, as :class:`DownloadedResult` says it of a file."""

    size: int
    redirected: bool


class Downloader:
    """Downloads one execution's result to one path, or to a reader (module docstring)."""

    def __init__(
        self,
        requester: Requester,
        result_path: str,
        destination: Path | None,
        on_progress: OnProgress | None,
        max_bytes: int | None = None,
        *,
        direct_io: bool | None = None,
        read_bufsize: int | None = None,
    ) -> None:
        self._requester = requester
        self._direct_io = direct_io
        self._budget = requester.download_budget()
        self._read_bufsize = read_bufsize
        self._result_path = result_path
        self._destination = destination
        self._progress = _Progress(on_progress)
        self._max_bytes = max_bytes
        self._api_url = requester.base_url + result_path
        # What the first whole answer said of the object: a resume must match it.
        self._etag: str | None = None
        self._total: int | None = None

    async def run(self) -> DownloadedResult:
        """Download to the destination: the file appears whole, or not at all."""
        assert self._destination is not None
        temp = None
        try:
            # In turn with the client's other downloads (ByteBudget.turn), from the
            # temporary file and the URL (which a long wait could let expire) to the
            # last byte handed to the disk; the fsync and the rename make room for more.
            async with self._budget.turn():
                temp = _TempFile(
                    self._destination,
                    self._budget,
                    direct_io=DIRECT_IO if self._direct_io is None else self._direct_io,
                )
                storage_url = await self._fill(temp)
            await self._progress.report(temp.size, temp.size, final=True)
            logger.debug("writing the last of %d bytes to disk", temp.size)
            await temp.commit()
        except BaseException:
            if temp is not None:
                temp.discard()
            raise
        logger.debug("the result is at %s (%d bytes)", self._destination, temp.size)
        return DownloadedResult(self._destination, temp.size, storage_url is not None)

    async def stream(self, sink: StreamSink) -> Streamed:
        """Download into ``sink``, whose reader takes the bytes as they come."""
        storage_url = await self._fill(sink)
        logger.debug("streamed the whole result (%d bytes)", sink.size)
        return Streamed(sink.size, storage_url is not None)

    async def _fill(self, sink: _Sink) -> str | None:
        """Read the result into ``sink``, inline or from storage; the storage URL, if any."""
        # The API answers the result itself, or a $redirect to pre-signed storage.
        api = _Source(self._api_url, redirected=False)
        logger.debug("downloading the result from %s", self._api_url)
        storage_url = await self._fetch(api, sink, probe_redirect=True)
        if storage_url is not None:
            storage = _Source(storage_url, redirected=True)
            logger.debug("the result is in storage: downloading %s", mask_url(storage_url))
            await self._fetch(storage, sink)
        if sink.size == 0:
            raise ResponseValidationError(
                "the result is empty: a result is a JSON document",
                method="GET",
                url=mask_url(storage_url) if storage_url is not None else self._api_url,
            )
        return storage_url

    async def _fetch(
        self, source: _Source, temp: _Sink, *, probe_redirect: bool = False
    ) -> str | None:
        """Read ``source`` into ``temp``, resuming and refreshing as needed.

        Every read is an attempt of the client's retry policy (``max_retries``, backoff,
        ``Retry-After``), a resume or a restart included; a pre-signed URL that storage
        refuses is replaced up to MAX_URL_REFRESHES times, each new URL with the policy
        afresh. With ``probe_redirect``, a short body that is a ``$redirect`` is not
        written: its URL is returned instead.
        """
        refreshes = 0
        while True:
            try:
                return await call_with_retries(
                    self._read_or_start_over,
                    source,
                    temp,
                    probe_redirect,
                    policy=self._requester.retry_policy,
                    idempotent=True,
                    description=f"GET {mask_url(source.url)}",
                )
            except PermissionDeniedError:
                # Storage refuses an expired or rejected pre-signed URL: get a new one.
                if not source.redirected or refreshes >= MAX_URL_REFRESHES:
                    raise
                refreshes += 1
                logger.info(
                    "storage refused %s; asking the API for a fresh URL (%d of %d)",
                    mask_url(source.url),
                    refreshes,
                    MAX_URL_REFRESHES,
                )
                if (hook := _instrument.current) is not None:
                    hook.url_refreshed()
                # Our own error (scrubbed) is the worst context a failed refresh gets.
                source.url = await self._fresh_url()
                continue
            except _Unusable as error:
                failure: TransactionLinkError = DownloadError(
                    f"storage never sent the result whole: {error.message}",
                    path=self._destination,
                )
            except _Incomplete as error:
                # Retries ran out on a body short of its length: a lost connection.
                failure = APIConnectionError(
                    error.message, method="GET", url=error.url, request_sent=True
                )
                failure.attempts, failure.elapsed = error.attempts, error.elapsed
            # Raised out here, not as the context of a private error of ours.
            raise failure

    async def _fresh_url(self) -> str:
        """Ask the API for the result again, for a new pre-signed URL."""
        response = await self._requester.call(
            "GET", self._result_path, route="/workflows/{id}/result"
        )
        target = self._redirect_in(response.body)
        if target is None:
            raise ResponseValidationError(
                "asked again for the result's URL, the API no longer redirects",
                method="GET",
                url=self._api_url,
            )
        return target

    def _redirect_in(self, body: bytes) -> str | None:
        """The storage URL if ``body`` (a whole answer) is a ``$redirect``, else ``None``.

        Raises:
            ResponseValidationError: ``body`` is empty or not JSON (a result is JSON),
            or a ``$redirect`` that is not to be followed.
        """
        problem = None
        try:
            return redirect_target(parse_json(body), api_base_url=self._requester.base_url)
        except ValueError as exc:  # raised below: no decoder's error as its context
            problem = str(exc) if body.strip() else "the answer is empty"
        raise ResponseValidationError(
            "the result is not JSON",
            problems=[scrub_text(problem, self._requester.secrets)],
            method="GET",
            url=self._api_url,
        )

    async def _read_or_start_over(
        self, source: _Source, temp: _Sink, probe_redirect: bool, attempt_number: int
    ) -> str | None:
        """:meth:`_read_once`; a resume that storage refuses (416) starts over from byte 0.

        Storage may answer a ``Range`` it will not serve (the object shrank, a proxy
        that does not do ranges) with 416: the download takes the object whole again,
        as an attempt of the same retry policy, rather than fail with a bare 416.
        """
        resuming = bool(temp.size) and source.redirected and self._etag is not None
        try:
            return await self._read_once(source, temp, probe_redirect, attempt_number)
        except APIError as error:
            if not resuming or error.status != HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE:
                raise
        problem = "storage refused to resume it (416)"
        await temp.restart(reason=problem)
        self._etag = self._total = None
        raise _Unusable(problem, url=mask_url(source.url))

    async def _read_once(
        self, source: _Source, temp: _Sink, probe_redirect: bool, attempt_number: int
    ) -> str | None:
        """One GET of ``source`` from ``temp.size`` on; raises to be retried or resumed.

        A resume asks for the rest of the same object (``Range`` with ``If-Range``);
        without an ETag to name the object by, or from the API (which promises no
        ranges), the file starts over instead.
        """
        if temp.size and (not source.redirected or self._etag is None):
            await temp.restart(reason="the answer was cut short and cannot be resumed")
        # Raw bytes: ranges count bytes of the stored representation, not of a decoding.
        headers = {"Accept-Encoding": "identity"}
        if temp.size:
            assert self._etag is not None  # else restarted just above
            headers["Range"] = f"bytes={temp.size}-"
            headers["If-Range"] = self._etag
        route = STORAGE_ROUTE if source.redirected else "/workflows/{id}/result"
        streaming = self._requester.stream(
            source.url,
            storage=source.redirected,
            headers=headers,
            route=route,
            attempt_number=attempt_number,
            read_bufsize=self._read_bufsize or self._read_buffer_bytes(),
            consume=partial(self._stream, source=source, temp=temp, probe_redirect=probe_redirect),
        )
        if (hook := _instrument.current) is None:
            return await streaming
        return await hook.stream_attempt(
            streaming,
            url=mask_url(source.url),
            route=route,
            storage=source.redirected,
            attempt_number=attempt_number,
            resumed="Range" in headers,
        )

    async def _stream(
        self,
        response: aiohttp.ClientResponse,
        *,
        source: _Source,
        temp: _Sink,
        probe_redirect: bool,
    ) -> str | None:
        """Write the answer's body to ``temp``; the ``$redirect`` instead, if it is one."""
        if (hook := _instrument.current) is not None:
            hook.responded(response.status)
        display_url = mask_url(source.url)
        total = await self._line_up(response, temp, display_url)
        _limit_socket_reads(response, self._socket_read_bytes())
        content = response.content
        if probe_redirect:
            first = await read_up_to(response, REDIRECT_PROBE_BYTES)
            if content.at_eof():
                target = self._redirect_in(first)
                if target is not None:
                    return target
            elif not _starts_like_json(first):
                self._redirect_in(first)  # raises: says what is wrong
            self._check_size(len(first), None, display_url)
            await temp.write(first)
            await self._progress.report(temp.size, total)
        # Chunks one by one as they arrived: joining them into larger ones (as
        # iter_chunked and iter_any do) copies every byte once more on the loop.
        while True:
            chunk, _ = await content.readchunk()
            if not chunk:
                # The end of the body, or of an HTTP chunk with more to come. Asked
                # again at its end, aiohttp's shared empty body of a 204 says "end of
                # an HTTP chunk" forever: only at_eof() tells the end.
                if content.at_eof():
                    break
                continue
            if temp.size == 0 and not _starts_like_json(chunk):
                raise ResponseValidationError(
                    "the result is not JSON", method="GET", url=display_url
                )
            self._check_size(temp.size + len(chunk), None, display_url)
            if total is not None and temp.size + len(chunk) > total:
                # Only a body without a Content-Length can run past its Content-Range.
                await temp.restart(reason="storage sent more bytes than it announced")
                self._etag = self._total = None
                raise _Unusable("storage sent more bytes than it announced", url=display_url)
            if temp.has_room(len(chunk)):
                await temp.write(chunk)
            else:
                async with _not_reading(response):
                    await temp.write(chunk)
            await self._progress.report(temp.size, total)
        if total is not None and temp.size != total:
            # Fewer bytes than announced (more cannot come: the parser stops there).
            raise _Incomplete(f"got {temp.size} of {total} bytes", url=display_url)
        return None

    def _socket_read_bytes(self) -> int:
        """The size of each socket read: LOOP_TURN_READ_BYTES shared among the downloads."""
        share = LOOP_TURN_READ_BYTES // max(1, self._budget.users)
        return max(MIN_SOCKET_READ_BYTES, min(MAX_SOCKET_READ_BYTES, share))

    def _read_buffer_bytes(self) -> int:
        """The read_bufsize for aiohttp: it stops reading past twice this, not at every read.

        Below half a socket read it would stop and restart the socket on nearly every
        read (two epoll_ctl calls and a timer each), which at 100 downloads cost more
        than the memory it saved (benchmarks/NOTES.md, "Downloads at concurrency").
        """
        share = self._budget.share(MAX_READ_BUFFER_BYTES, MIN_READ_BUFFER_BYTES) // 4
        return max(share, self._socket_read_bytes() // 2)

    def _check_size(self, size: int, announced: int | None, display_url: str) -> None:
        """ResultTooLargeError if ``size`` bytes (or the announced length) pass max_bytes."""
        limit = self._max_bytes
        if limit is not None and max(size, announced or 0) > limit:
            raise ResultTooLargeError(
                max_bytes=limit,
                size=announced,
                url=display_url,
                to_disk=self._destination is not None,
            )

    async def _line_up(
        self, response: aiohttp.ClientResponse, temp: _Sink, display_url: str
    ) -> int | None:
        """Line the file up with the answer (:func:`line_up`); the object's total length."""
        decision = line_up(
            response.status,
            response.headers,
            offset=temp.size,
            etag=self._etag,
            total=self._total,
        )
        if decision.problem is not None:
            # Start over from byte 0 on the next attempt, taking the object as it is then.
            await temp.restart(reason=decision.problem)
            self._etag = self._total = None
            raise _Unusable(decision.problem, url=display_url)
        if decision.restart:
            logger.info("storage sent the whole result again; restarting the download")
            # The same strong ETag: the same bytes again (line_up keeps it as the etag).
            same = decision.etag is not None and decision.etag == self._etag
            await temp.restart(same_object=same, reason="storage sent another object whole")
        if temp.size == 0:  # a whole object from its start: what any resume must match
            self._etag, self._total = decision.etag, decision.total
        self._check_size(temp.size, decision.total, display_url)
        return decision.total


# The first byte of a JSON text, after any whitespace (RFC 8259, section 2).
_JSON_FIRST_BYTES = frozenset(b'{["-0123456789tfn')


def _starts_like_json(data: bytes) -> bool:
    """Whether ``data``, the start of a body, may begin a JSON text (an HTML page may not)."""
    stripped = data.lstrip(b" \t\r\n")
    return not stripped or stripped[0] in _JSON_FIRST_BYTES
