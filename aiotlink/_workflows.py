"""The four Workflows endpoints: arguments checked before any request, answers decoded."""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
from collections.abc import AsyncGenerator, Iterable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Literal, overload
from uuid import UUID

from . import _instrument
from ._arguments import (
    check_callable,
    check_count,
    check_destination,
    check_execution_id,
    check_expires_at,
    check_flag,
    check_parameters,
    check_seconds,
    check_text,
    check_uuid,
)
from ._callbacks import OnProgress, OnStatus, notify
from ._converter import DecodeError, decode_execution, encode_initialise_request
from ._download import Downloader, Streamed, StreamSink
from ._errors import (
    APIConnectionError,
    ResponseValidationError,
    ResultTooLargeError,
    ServerError,
    TransactionLinkError,
    WaitTimeoutError,
    WorkflowFailedError,
)
from ._models import (
    DownloadedResult,
    InitialiseRequest,
    JSONValue,
    RunResult,
    WorkflowExecution,
    WorkflowStatus,
)
from ._polling import (
    ADMITTED_PER_ITERATION,
    DEFAULT_MAX_POLL_INTERVAL,
    DEFAULT_POLL_FACTOR,
    DEFAULT_POLL_INTERVAL,
    DEFAULT_SCHEDULE,
    Batch,
    Lookup,
    Poller,
    PollSchedule,
    Subscription,
)
from ._redaction import carries_secret, mask_url, scrub_text
from ._results import redirect_target
from ._retry import parse_retry_after
from ._transport import Response, decode_json, parse_json

if TYPE_CHECKING:
    from ._requester import Requester

logger = logging.getLogger("aiotlink")

DEFAULT_MAX_RESULT_BYTES = 100 * 2**20
# stream_result's pieces: what StreamingResponse and ASGI servers send well at once.
DEFAULT_STREAM_CHUNK_BYTES = 64 * 1024
# The most a piece may be: aiohttp holds up to twice a stream's read size of the body
# for a slow reader, and sizes past a C long overflow inside it.
MAX_STREAM_CHUNK_BYTES = 16 * 2**20
STREAM_TASK_NAME = "aiotlink stream_result"  # how the download of a stream shows in a dump
# The least a stream's socket reads ask for: tiny reads cost more than the memory saved.
MIN_STREAM_READ_BYTES = 16 * 1024
# The remote cancel sent when a wait is cancelled must not hold up the cancellation.
REMOTE_CANCEL_TIMEOUT = 5.0


def _log_failed_wait(execution_id: object, error: TransactionLinkError) -> None:
    """The INFO line of a wait that ended without a terminal status (its text is scrubbed)."""
    if isinstance(error, WaitTimeoutError):
        logger.info("gave up waiting for execution %s: %s", execution_id, error)
    else:
        logger.info("waiting for execution %s failed: %s", execution_id, error)


def iter_of(name: str, values: Iterable[Any]) -> Iterator[Any]:
    """An iterator over ``values``, else TypeError naming the argument (a str is refused)."""
    if isinstance(values, str | bytes):
        raise TypeError(f"{name} must be an iterable of ids, not a single {type(values).__name__}")
    try:
        return iter(values)
    except TypeError:
        problem = f"{name} must be an iterable of ids, got {type(values).__name__}"
    raise TypeError(problem)


def _follow_more(
    poller: Poller,
    batch: Batch,
    ids: Iterator[Any],
    timeout: float | None,
    deadline: float | None,
    loop: asyncio.AbstractEventLoop,
) -> bool:
    """Read and follow up to ADMITTED_PER_ITERATION more ids; whether any may be left."""
    for _ in range(ADMITTED_PER_ITERATION):
        try:
            given = next(ids)
        except StopIteration:
            return False
        execution_id = check_execution_id(given)
        count = batch.following.get(execution_id, 0)
        batch.following[execution_id] = count + 1
        if count:
            continue  # followed already: yielded once more when it ends
        if batch.expired or (deadline is not None and loop.time() >= deadline):
            assert timeout is not None
            _time_out_one(poller, batch, execution_id, timeout)
            continue
        poller.join(batch, execution_id)
    return True


def _time_out(poller: Poller, batch: Batch, timeout: float | None) -> None:
    """Past the batch's deadline: up to a thousand executions still followed time out.

    A thousand per event-loop iteration: each decodes its last answer, and 100,000 at
    once would stall the loop for seconds.
    """
    assert timeout is not None
    for execution_id in list(itertools.islice(batch.following, ADMITTED_PER_ITERATION)):
        _time_out_one(poller, batch, execution_id, timeout)


def _time_out_one(poller: Poller, batch: Batch, execution_id: str, timeout: float) -> None:
    error = WaitTimeoutError(poller.leave(batch, execution_id), timeout)
    error.execution_id = execution_id
    batch.settle(execution_id, error)


def poll_schedule(
    poll_interval: float, max_poll_interval: float, poll_factor: float
) -> PollSchedule:
    """The checked schedule, the one shared default object when nothing was changed."""
    if (poll_interval, max_poll_interval, poll_factor) == (
        DEFAULT_POLL_INTERVAL,
        DEFAULT_MAX_POLL_INTERVAL,
        DEFAULT_POLL_FACTOR,
    ):
        return DEFAULT_SCHEDULE
    return PollSchedule(poll_interval, max_poll_interval, poll_factor)


class Workflows:
    """The Workflows endpoints, as ``client.workflows``."""

    def __init__(self, requester: Requester) -> None:
        self._requester = requester

    async def initialise(
        self,
        workflow_definition_id: str,
        *,
        locale: str = "en",
        parameters: Mapping[str, Any] | None = None,
        expires_at: datetime | timedelta | None = None,
        record_id: UUID | str | None = None,
    ) -> WorkflowExecution:
        """Start an execution of a workflow definition (``POST /workflows``).

        ``expires_at`` is an aware ``datetime`` or a ``timedelta`` from now, between 30
        minutes and 30 days ahead. Not idempotent: retried only where the server
        provably did not see the request (no connection, or 429). After a 5xx, a
        timeout or a connection lost mid-request the error's ``may_have_been_created``
        is True and its text says so.

        Raises:
            ValueError: a malformed argument (before any request).
            APIError, APIConnectionError, ResponseValidationError.
        """
        request = InitialiseRequest(
            workflow_definition_id=check_text("workflow_definition_id", workflow_definition_id),
            locale=check_text("locale", locale),
            parameters=check_parameters(parameters),
            expires_at=check_expires_at(expires_at, now=datetime.now(UTC)),
            record_id=None if record_id is None else check_uuid("record_id", record_id),
        )
        try:
            response = await self._requester.call(
                "POST",
                "/workflows",
                route="/workflows",
                body=encode_initialise_request(request),
                idempotent=False,
            )
        except ServerError as exc:
            exc.may_have_been_created = True
            raise
        except APIConnectionError as exc:
            exc.may_have_been_created = exc.request_sent
            raise
        execution = self._execution(response, "POST", "/workflows")
        logger.info(
            "initialised execution %s of %s (%s)",
            execution.id,
            request.workflow_definition_id,
            execution.status.value,
        )
        return execution

    async def find(self, execution_id: str | UUID) -> WorkflowExecution:
        """The execution as it is now (``GET /workflows/{id}``).

        Raises:
            ValueError: a malformed id. NotFoundError: no such execution.
        """
        lookup = await self._find(check_execution_id(execution_id))
        return lookup.execution

    async def _find(self, execution_id: str) -> Lookup:
        """The execution, the answer's body, and its ``Retry-After`` (the poller's pace)."""
        path = f"/workflows/{execution_id}"
        response = await self._requester.call("GET", path, route="/workflows/{id}")
        header = response.headers.get("Retry-After")
        retry_after = None if header is None else parse_retry_after(header, now=datetime.now(UTC))
        return Lookup(self._execution(response, "GET", path), response.body, retry_after)

    @functools.cached_property
    def _poller(self) -> Poller:
        """The poll loops of every client view with this one's settings (created on use).

        Remembered: a view's settings never change, and hashing them on every wait
        costs a microsecond of each of thousands of waits started together.
        """
        return self._requester.poller(self._find)

    @_instrument.observed("download")
    async def download_result(
        self,
        execution_id: str | UUID,
        path: str | os.PathLike[str],
        *,
        on_progress: OnProgress | None = None,
        max_bytes: int | None = None,
        direct_io: bool | None = None,
    ) -> DownloadedResult:
        """Stream the result's raw JSON bytes to ``path``, inline or from a ``$redirect``.

        Memory stays flat whatever the size. The file appears whole or not at all: the
        bytes go to a temporary file beside ``path``, checked against the announced
        length, fsynced and renamed into place; on failure ``path`` keeps what it had.
        A dropped connection resumes with ``Range`` from the bytes on disk, only for the
        same object (its ETag) and only where storage answers exactly the rest of it;
        otherwise it starts over. Every read is an attempt of the client's retry
        policy; an expired pre-signed URL is replaced by asking the API again (at most
        three times). ``max_bytes`` (default ``None``: no cap) bounds the result.
        ``on_progress(done_bytes, total_bytes)`` (a function or a coroutine function;
        ``total_bytes`` ``None`` when unknown) is called as bytes arrive, at most ten
        times a second, and at the end. A symbolic link at ``path`` is replaced by the
        file, not written through. The bytes go through the page cache from a few
        shared disk threads, buffered within the client's ``download_buffer_bytes``;
        ``direct_io=True`` bypasses the page cache where the filesystem allows it
        (``None``: the module's default, off).

        Raises:
            ValueError: ``execution_id`` is not a UUID, ``path``'s folder does not
            exist, or ``path`` is a directory, FIFO, device or socket (before any
            request). ResultTooLargeError: over ``max_bytes``. DownloadError: the file
            could not be written (the OS error is its cause), or storage never sent
            the object whole. APIError, APIConnectionError: the result could not be
            had, after retries.
        """
        path_in_api = f"/workflows/{check_execution_id(execution_id)}/result"
        destination = check_destination(path)
        check_callable("on_progress", on_progress)
        if max_bytes is not None:
            check_count("max_bytes", max_bytes, minimum=1)
        direct = None if direct_io is None else check_flag("direct_io", direct_io)
        downloader = Downloader(
            self._requester, path_in_api, destination, on_progress, max_bytes, direct_io=direct
        )
        return await downloader.run()

    def stream_result(
        self,
        execution_id: str | UUID,
        *,
        chunk_size: int = DEFAULT_STREAM_CHUNK_BYTES,
        max_bytes: int | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """The result's raw JSON bytes as they arrive, inline or from a ``$redirect``.

        An async iterator of ``bytes`` of at most ``chunk_size`` bytes each (default 64
        KiB), for ``StreamingResponse`` and the like. Memory stays bounded by a few
        chunks whatever the size: the download reads on only as fast as the chunks are
        taken. Nothing is sent until the first chunk is asked for; the arguments are
        checked now. The machinery is :meth:`download_result`'s: storage gets no
        credential, every read is an attempt of the client's retry policy, an expired
        pre-signed URL is replaced, and a connection dropped mid-body resumes with
        ``Range`` on the same object (its strong ETag), or skips what was already
        yielded when storage sends that same object whole again. Bytes yielded cannot
        be taken back: where the rest cannot be had as the same object (no ETag, an
        inline answer cut short, an object changed), it raises :class:`DownloadError`.
        Cancelling the task that reads, or ``aclose()``, stops the download at once;
        after a ``break``, the generator (and its connection) lives on until it is
        closed or collected, so read it inside ``contextlib.aclosing(...)``.

        Raises:
            ValueError: a malformed argument, now, before any request. While iterating:
            ResultNotReadyError (a NotFoundError): no result yet. ResultTooLargeError:
            over ``max_bytes``. DownloadError: the rest could not be had whole.
            APIError, APIConnectionError: after retries. ResponseValidationError: an
            empty result, or one that is not JSON.
        """
        checked_id = check_execution_id(execution_id)
        path_in_api = f"/workflows/{checked_id}/result"
        chunk_size = check_count(
            "chunk_size", chunk_size, minimum=1, maximum=MAX_STREAM_CHUNK_BYTES
        )
        if max_bytes is not None:
            check_count("max_bytes", max_bytes, minimum=1)
        downloader = Downloader(
            self._requester,
            path_in_api,
            None,
            None,
            max_bytes,
            # aiohttp holds up to twice this of the body before it stops reading.
            read_bufsize=max(chunk_size, MIN_STREAM_READ_BYTES),
        )
        return self._stream(checked_id, downloader, chunk_size)

    async def _stream(
        self, execution_id: str, downloader: Downloader, chunk_size: int
    ) -> AsyncGenerator[bytes, None]:
        sink = StreamSink(chunk_size)
        # The download runs in a task of its own: its reads happen inside the request
        # layer's one GET (and retry loop), handing each piece over to this generator.
        # The task copies the context of the first chunk's request: its span's parent.
        download = asyncio.create_task(
            self._download_to(execution_id, downloader, sink), name=STREAM_TASK_NAME
        )
        download.add_done_callback(sink.end)
        try:
            while (piece := await sink.take()) is not None:
                yield piece
        finally:
            sink.close()
            if not download.done():
                download.cancel()
                # Awaited so that the connection is released before the caller goes
                # on; a cancellation of the caller still propagates.
                await asyncio.wait([download])

    @_instrument.observed("download")
    async def _download_to(
        self, execution_id: str, downloader: Downloader, sink: StreamSink
    ) -> Streamed:
        """A stream's download: marked as download_result is, for the same span."""
        return await downloader.stream(sink)

    async def watch(
        self,
        execution_id: str | UUID,
        *,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        timeout: float | None = None,
        poll_factor: float = DEFAULT_POLL_FACTOR,
    ) -> AsyncGenerator[WorkflowExecution, None]:
        """Follow an execution: yield it once per status change, ending after a terminal one.

        The first lookup comes at once, after the wait's turn among waits started in the
        same loop iteration (1,000 are let in per iteration), and its execution is always
        yielded. Later polls come ``poll_interval`` seconds apart, growing by
        ``poll_factor`` (less up to 20% jitter) to at most ``max_poll_interval`` while
        the status stays the same, and back to ``poll_interval`` when it changes; a
        ``Retry-After`` on an answer is honoured. Transient failures are retried and
        skipped; waiters on the same id share one poll loop. ``timeout`` is one
        deadline, in seconds, for the whole watch. Returns an async generator; its
        arguments are checked when it first runs.

        Raises:
            ValueError: a malformed argument. WaitTimeoutError: past ``timeout`` (with the
            last execution seen). AuthenticationError, PermissionDeniedError,
            NotFoundError: at once, ending the watch.
        """
        subscription = await self._subscribe(
            execution_id,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
            timeout=timeout,
            poll_factor=poll_factor,
            every_change=True,
        )
        # Only the next change is held here, never across the wait for another: at
        # 10,000 waiters, decoded executions kept alive are what CPython's full
        # collections walk the longest (benchmarks/NOTES.md, "10,000 waiters").
        ended = False
        try:
            while not ended:
                change = subscription.take()
                if change is None:
                    await subscription.changed()
                    continue
                ended = change.is_terminal
                if ended:
                    logger.info("execution %s ended %s", change.id, change.status.value)
                yield change
        except TransactionLinkError as error:
            _log_failed_wait(execution_id, error)
            raise
        finally:
            self._poller.unsubscribe(subscription)

    async def _subscribe(
        self,
        execution_id: str | UUID,
        *,
        poll_interval: float,
        max_poll_interval: float,
        timeout: float | None,
        poll_factor: float,
        every_change: bool,
    ) -> Subscription:
        """Check a wait's arguments, wait for its turn, and follow the execution.

        The turn (:meth:`Poller.admission`) counts against ``timeout``.
        """
        execution_id = check_execution_id(execution_id)
        schedule = poll_schedule(poll_interval, max_poll_interval, poll_factor)
        timeout = check_seconds("timeout", timeout, allow_none=True)
        started = asyncio.get_running_loop().time()
        await self._poller.admission()
        return self._poller.subscribe(
            execution_id, schedule, timeout=timeout, since=started, every_change=every_change
        )

    async def wait_for_completion(
        self,
        execution_id: str | UUID,
        *,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        on_status: OnStatus | None = None,
        raise_on_failure: bool = True,
        cancel_on_timeout: bool = False,
        cancel_remote_on_cancel: bool = False,
        poll_factor: float = DEFAULT_POLL_FACTOR,
    ) -> WorkflowExecution:
        """Wait until the execution ends; return it if COMPLETED.

        Polls as :meth:`watch` does. ``on_status(execution)`` (a function or a coroutine
        function) is called once per status change, the first one seen included.
        ``timeout`` is one deadline in seconds for the whole wait, retries included;
        past it the remote execution keeps running unless ``cancel_on_timeout=True``.
        If the waiting task is cancelled, polling stops at once; with
        ``cancel_remote_on_cancel=True`` the remote execution is cancelled first
        (shielded, bounded by a few seconds).

        Raises:
            WorkflowFailedError: it ended FAILED, TIMEOUT, TERMINATED, EXPIRED or
            CANCELLED (unless ``raise_on_failure=False``: then it is returned).
            WaitTimeoutError: past ``timeout``, with the last execution seen.
            ValueError, APIError: as :meth:`watch`.
        """
        check_callable("on_status", on_status)
        for name, flag in (
            ("raise_on_failure", raise_on_failure),
            ("cancel_on_timeout", cancel_on_timeout),
            ("cancel_remote_on_cancel", cancel_remote_on_cancel),
        ):
            check_flag(name, flag)
        try:
            if on_status is not None:
                last = await self._notify_until_end(
                    self.watch(
                        execution_id,
                        poll_interval=poll_interval,
                        max_poll_interval=max_poll_interval,
                        timeout=timeout,
                        poll_factor=poll_factor,
                    ),
                    on_status,
                )
            else:
                # Only the end is wanted: the subscription watch would iterate, told to
                # drop the changes before the end, and one future slept on from start to
                # end. No generator, and nothing made anew at each change: every object
                # a wait keeps costs CPython's full collections, the event loop's longest
                # stalls at 10,000 waits (benchmarks/NOTES.md, "10,000 waiters").
                subscription = await self._subscribe(
                    execution_id,
                    poll_interval=poll_interval,
                    max_poll_interval=max_poll_interval,
                    timeout=timeout,
                    poll_factor=poll_factor,
                    every_change=False,
                )
                try:
                    while (end := subscription.take()) is None:
                        await subscription.changed()
                    last = end
                except TransactionLinkError as error:
                    _log_failed_wait(execution_id, error)
                    raise
                finally:
                    self._poller.unsubscribe(subscription)
                logger.info("execution %s ended %s", last.id, last.status.value)
        except WaitTimeoutError:
            if cancel_on_timeout:
                await self._cancel_remote(execution_id)
            raise
        except asyncio.CancelledError:
            if cancel_remote_on_cancel:
                await asyncio.shield(self._cancel_remote(execution_id))
            raise
        if last.status is not WorkflowStatus.COMPLETED and raise_on_failure:
            raise WorkflowFailedError(last)
        return last

    @staticmethod
    async def _notify_until_end(
        watching: AsyncGenerator[WorkflowExecution, None], on_status: OnStatus
    ) -> WorkflowExecution:
        """Call ``on_status`` with each execution ``watching`` yields; the last, terminal one."""
        last: WorkflowExecution | None = None
        try:
            async for change in watching:
                await notify(on_status, change)
                if change.is_terminal:
                    last = change
                # Not held while waiting for the next change, as in watch.
                del change
        finally:
            # Closed here, not by the garbage collector, so that leaving early (a
            # failing on_status, a cancellation) stops the polling at once.
            await watching.aclose()
        assert last is not None  # watch yields at least once or raises
        return last

    async def _cancel_remote(self, execution_id: str | UUID) -> None:
        """Cancel the remote execution on a best-effort basis, within a few seconds."""
        try:
            async with asyncio.timeout(REMOTE_CANCEL_TIMEOUT):
                await self.cancel(execution_id)
        except (TransactionLinkError, TimeoutError) as error:
            logger.warning("could not cancel execution %s: %s", execution_id, error)

    # The result's type follows from the arguments: decoded JSON in memory, or with
    # download_to= the DownloadedResult (None only where a failure is not raised).
    @overload
    async def run(
        self,
        workflow_definition_id: str,
        *,
        locale: str = "en",
        parameters: Mapping[str, Any] | None = None,
        expires_at: datetime | timedelta | None = None,
        record_id: UUID | str | None = None,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        poll_factor: float = DEFAULT_POLL_FACTOR,
        on_status: OnStatus | None = None,
        raise_on_failure: bool = True,
        cancel_on_timeout: bool = False,
        cancel_remote_on_cancel: bool = False,
        max_bytes: int | None = None,
        download_to: None = None,
        on_progress: OnProgress | None = None,
    ) -> RunResult[JSONValue]: ...

    @overload
    async def run(
        self,
        workflow_definition_id: str,
        *,
        locale: str = "en",
        parameters: Mapping[str, Any] | None = None,
        expires_at: datetime | timedelta | None = None,
        record_id: UUID | str | None = None,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        poll_factor: float = DEFAULT_POLL_FACTOR,
        on_status: OnStatus | None = None,
        raise_on_failure: Literal[True] = True,
        cancel_on_timeout: bool = False,
        cancel_remote_on_cancel: bool = False,
        max_bytes: int | None = None,
        download_to: str | os.PathLike[str],
        on_progress: OnProgress | None = None,
    ) -> RunResult[DownloadedResult]: ...

    @overload
    async def run(
        self,
        workflow_definition_id: str,
        *,
        locale: str = "en",
        parameters: Mapping[str, Any] | None = None,
        expires_at: datetime | timedelta | None = None,
        record_id: UUID | str | None = None,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        poll_factor: float = DEFAULT_POLL_FACTOR,
        on_status: OnStatus | None = None,
        raise_on_failure: bool,
        cancel_on_timeout: bool = False,
        cancel_remote_on_cancel: bool = False,
        max_bytes: int | None = None,
        download_to: str | os.PathLike[str],
        on_progress: OnProgress | None = None,
    ) -> RunResult[DownloadedResult | None]: ...

    @_instrument.observed("run")
    async def run(
        self,
        workflow_definition_id: str,
        *,
        locale: str = "en",
        parameters: Mapping[str, Any] | None = None,
        expires_at: datetime | timedelta | None = None,
        record_id: UUID | str | None = None,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
        poll_factor: float = DEFAULT_POLL_FACTOR,
        on_status: OnStatus | None = None,
        raise_on_failure: bool = True,
        cancel_on_timeout: bool = False,
        cancel_remote_on_cancel: bool = False,
        max_bytes: int | None = None,
        download_to: str | os.PathLike[str] | None = None,
        on_progress: OnProgress | None = None,
    ) -> RunResult[Any]:
        """Initialise an execution, wait for it, and fetch its result, under one ``timeout``.

        Every argument is checked before the execution is started. Returns a
        :class:`RunResult` with ``.execution`` (terminal) and ``.result``: the decoded
        JSON, or with ``download_to=path`` the :class:`DownloadedResult` of
        :meth:`download_result` (for results too large to hold in memory); ``None``
        when the execution did not complete and ``raise_on_failure=False``.
        ``max_bytes`` bounds the result as :meth:`get_result`'s and
        :meth:`download_result`'s do; ``None`` (the default) means their defaults: 100
        MiB in memory, no cap on disk.

        Raises:
            WaitTimeoutError: past ``timeout`` in any phase (``.execution`` is ``None``
            if initialise itself did not answer in time). Otherwise as
            :meth:`initialise`, :meth:`wait_for_completion` and :meth:`get_result`.
        """
        poll_schedule(poll_interval, max_poll_interval, poll_factor)
        timeout = check_seconds("timeout", timeout, allow_none=True)
        if max_bytes is not None:
            check_count("max_bytes", max_bytes, minimum=1)
        check_callable("on_status", on_status)
        check_callable("on_progress", on_progress)
        for name, flag in (
            ("raise_on_failure", raise_on_failure),
            ("cancel_on_timeout", cancel_on_timeout),
            ("cancel_remote_on_cancel", cancel_remote_on_cancel),
        ):
            check_flag(name, flag)
        if download_to is not None:
            download_to = check_destination(download_to)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        execution: WorkflowExecution | None = None
        try:
            async with asyncio.timeout_at(deadline) as phase:
                execution = await self.initialise(
                    workflow_definition_id,
                    locale=locale,
                    parameters=parameters,
                    expires_at=expires_at,
                    record_id=record_id,
                )
            execution = await self.wait_for_completion(
                execution.id,
                timeout=None if deadline is None else max(deadline - loop.time(), 1e-3),
                poll_interval=poll_interval,
                max_poll_interval=max_poll_interval,
                poll_factor=poll_factor,
                on_status=on_status,
                raise_on_failure=raise_on_failure,
                cancel_on_timeout=cancel_on_timeout,
                cancel_remote_on_cancel=cancel_remote_on_cancel,
            )
            if execution.status is not WorkflowStatus.COMPLETED:
                return RunResult(execution, None)
            result: JSONValue | DownloadedResult
            async with asyncio.timeout_at(deadline) as phase:
                if download_to is None:
                    result = await self.get_result(
                        execution.id, max_bytes=max_bytes or DEFAULT_MAX_RESULT_BYTES
                    )
                else:
                    result = await self.download_result(
                        execution.id, download_to, on_progress=on_progress, max_bytes=max_bytes
                    )
        except WaitTimeoutError as timed_out:
            assert timeout is not None  # the wait had the rest of run's own deadline
            raise WaitTimeoutError(timed_out.execution, timeout) from None
        except TimeoutError as exc:
            if deadline is None or not phase.expired():
                raise
            assert timeout is not None
            raise WaitTimeoutError(execution, timeout) from exc
        return RunResult(execution, result)

    async def as_completed(
        self,
        execution_ids: Iterable[str | UUID],
        *,
        timeout: float | None = None,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL,
    ) -> AsyncGenerator[WorkflowExecution | TransactionLinkError, None]:
        """Follow many executions; yield each one's outcome as it finishes.

        The outcome is the terminal execution (whatever its status: nothing is raised
        for FAILED or CANCELLED), or the error that ended its following, as a value:
        ``WaitTimeoutError`` past ``timeout`` (one deadline, in seconds, for the whole
        batch), ``NotFoundError``, ``PermissionDeniedError``, ... Such an error's
        ``execution_id`` is the id it is for. Every id given is yielded once per time it
        was given: an id given twice is followed once and yielded twice.

        ``execution_ids`` may be any iterable, a lazy one included: ids are read and
        followed a thousand per event-loop iteration, never all up front. Polling is
        that of :meth:`wait_for_completion`: shared with every other wait on the same
        id, within the client's connection limit, ``Retry-After`` honoured, nudged by
        webhooks. Breaking out of the loop (or cancelling the task that iterates) stops
        every poll it started. Returns an async generator; its arguments are checked
        when it first runs.

        Raises:
            ValueError: a malformed argument or id (when it is read). ClientClosedError:
            the client was closed.
        """
        schedule = poll_schedule(poll_interval, max_poll_interval, DEFAULT_POLL_FACTOR)
        timeout = check_seconds("timeout", timeout, allow_none=True)
        ids = iter_of("execution_ids", execution_ids)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        poller = self._poller
        batch = Batch(schedule)
        # The timer marks the deadline passed: it may fire a hair before the loop's clock
        # reads the deadline, and a check of the clock alone would then wait for ever.
        timer = None if deadline is None else loop.call_at(deadline, batch.expire)
        reading = True
        try:
            while True:
                if batch.expired or (deadline is not None and loop.time() >= deadline):
                    batch.expired = True
                    _time_out(poller, batch, timeout)  # a thousand at a time
                if reading:
                    reading = _follow_more(poller, batch, ids, timeout, deadline, loop)
                while batch.outcomes:
                    outcome, count = batch.outcomes.popleft()
                    for _ in range(count):
                        yield outcome
                if batch.closed is not None:
                    raise batch.closed
                if not reading and not batch.following:
                    return
                if reading or (batch.expired and batch.following):
                    await asyncio.sleep(0)  # the next thousand in the next iteration
                else:
                    await batch.changed()
        finally:
            if timer is not None:
                timer.cancel()
            for execution_id in batch.following:
                poller.leave(batch, execution_id)
            batch.following.clear()

    def nudge(
        self, execution_id: str | UUID, *, status: WorkflowStatus | str | None = None
    ) -> bool:
        """Make every wait, watch and run on this execution look it up now; whether any is on.

        For a webhook (or any other signal) that says the execution changed: the waits
        then finish within a lookup of it, however rarely they poll. The lookup decides,
        never the signal: a forged or stale one costs at most one early GET. A burst of
        nudges costs one lookup; nudges for executions nobody waits on cost nothing.
        ``status`` is the status the signal announced, if any: a non-terminal one wakes
        only watches and waits with ``on_status``, not waits that only want the end.
        ``client.webhooks`` receivers call this for every verified event. It may be called
        from any thread (a receiver of another framework): the nudge is handed to the
        event loop the waits run on.
        """
        key = check_execution_id(execution_id)
        hint = None if status is None else WorkflowStatus(check_text("status", status))
        return self._requester.nudge(key, hint)

    async def cancel(self, execution_id: str | UUID) -> None:
        """Cancel an execution that has not ended (``POST /workflows/{id}/cancel``).

        Raises:
            ValueError: a malformed id. NotFoundError: no such execution.
        """
        execution_id = check_execution_id(execution_id)
        await self._requester.call(
            "POST", f"/workflows/{execution_id}/cancel", route="/workflows/{id}/cancel"
        )
        logger.info("cancelled execution %s", execution_id)

    async def get_result(
        self, execution_id: str | UUID, *, max_bytes: int = DEFAULT_MAX_RESULT_BYTES
    ) -> JSONValue:
        """The decoded JSON result of a completed execution, held in memory.

        A ``$redirect`` to storage is followed with a plain GET that carries no
        credential. ``max_bytes`` (default 100 MiB) bounds the body read.

        Raises:
            ValueError: ``execution_id`` is not a UUID. NotFoundError: no such
            execution; ResultNotReadyError (a NotFoundError): no result yet.
            ResultTooLargeError: over ``max_bytes``.
        """
        path = f"/workflows/{check_execution_id(execution_id)}/result"
        max_bytes = check_count("max_bytes", max_bytes, minimum=1)
        response = await self._requester.call(
            "GET",
            path,
            route="/workflows/{id}/result",
            max_bytes=max_bytes,
            too_large=ResultTooLargeError,
        )
        url = self._requester.base_url + path
        payload = self._json(response, "GET", url)
        problem: str | None = None
        try:
            target = redirect_target(payload, api_base_url=self._requester.base_url)
        except ValueError as exc:
            problem = str(exc)
        if problem is not None:
            raise ResponseValidationError(problem, method="GET", url=url)
        if target is None:
            return payload
        stored = await self._requester.fetch_storage(
            target, max_bytes=max_bytes, too_large=ResultTooLargeError
        )
        return self._json(stored, "GET", mask_url(target))

    # The errors below are raised outside the handlers that caught the decoders' errors,
    # so that those (and the body they may hold) do not ride along as __context__.
    # A problem may quote a value of the answer: scrubbed, as error bodies are.
    def _json(self, response: Response, method: str, url: str) -> JSONValue:
        try:
            payload: JSONValue = decode_json(response)  # JSON is what a JSON decoder makes
            return payload
        except ValueError as exc:
            problem = str(exc)
        raise ResponseValidationError(
            "the answer is not valid JSON",
            problems=[scrub_text(problem, self._requester.secrets)],
            method=method,
            url=url,
        )

    def _execution(self, response: Response, method: str, path: str) -> WorkflowExecution:
        if carries_secret(response.body, self._requester.secrets):
            # Its id or status would carry the token into errors and logs.
            raise ResponseValidationError(
                "the answer carries the client's own token: refused",
                method=method,
                url=self._requester.base_url + path,
            )
        try:
            return decode_execution(parse_json(response.body))
        except ValueError as exc:
            message, problems = "the answer is not valid JSON", [str(exc)]
        except DecodeError as exc:
            message, problems = "the answer does not fit WorkflowExecution", exc.problems
        raise ResponseValidationError(
            message,
            problems=[scrub_text(problem, self._requester.secrets) for problem in problems],
            method=method,
            url=self._requester.base_url + path,
        )
