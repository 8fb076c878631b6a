"""download_result: results streamed to disk, whole or not at all, resumed and refreshed."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import fcntl
import hashlib
import itertools
import logging
import os
import stat
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import pytest
from aiohttp import web
from moto.server import ThreadedMotoServer

from aiotlink import (
    DownloadedResult,
    DownloadError,
    NotFoundError,
    PermissionDeniedError,
    ResponseValidationError,
    ServerError,
    TransactionLinkClient,
    _download,
)
from aiotlink._download import _DiskPool, _DiskQueue, content_range
from aiotlink.testing import FakeTransactionLink, GeneratedResult

from .conftest import EXECUTION_ID, THRESHOLD, TOKEN
from .servers import ScriptedServer, eventually, follow_answers, reply

BIG = GeneratedResult(3_000_000, seed=7)
RESULT = ("GET", f"/workflows/{EXECUTION_ID}/result")
# The threads of disk work, off the event loop: writes, and the fsyncs before renames.
DISK_THREADS = ("aiotlink-disk", "aiotlink-sync")


@pytest.fixture(autouse=True)
def small_direct_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Direct-write buffers of 64 KiB, so that test results fill and hand over many."""
    monkeypatch.setattr("aiotlink._download.DIRECT_BUFFER_BYTES", 64 * 1024)


def refuse_direct_io(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every file refuse O_DIRECT (EINVAL), as filesystems without direct I/O do."""
    real_fcntl = fcntl.fcntl

    def refusing(descriptor: int, command: int, argument: int = 0) -> Any:
        if command == fcntl.F_SETFL and argument & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        return real_fcntl(descriptor, command, argument)

    monkeypatch.setattr(fcntl, "fcntl", refusing)


@pytest.fixture(params=["direct", "page cache"])
def disk(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> str:
    """Either way of writing: through the page cache (the default), or straight to the device."""
    if request.param == "page cache":
        refuse_direct_io(monkeypatch)
    else:
        monkeypatch.setattr("aiotlink._download.DIRECT_IO", True)
        probe = os.open(tmp_path / "probe", os.O_WRONLY | os.O_CREAT)
        try:
            flags = fcntl.fcntl(probe, fcntl.F_GETFL)
            fcntl.fcntl(probe, fcntl.F_SETFL, flags | os.O_DIRECT)
        finally:
            os.close(probe)
            os.unlink(tmp_path / "probe")
    return str(request.param)


def is_direct(descriptor: int) -> bool:
    return bool(fcntl.fcntl(descriptor, fcntl.F_GETFL) & os.O_DIRECT)


@pytest.fixture
async def client(fake: FakeTransactionLink) -> AsyncIterator[TransactionLinkClient]:
    """A client of the fake that retries without sleeping, with a default header."""
    async with TransactionLinkClient(
        fake.token, base_url=fake.url, retry_backoff=False, default_headers={"X-Tenant": "t-1"}
    ) as client:
        yield client


async def completed(fake: FakeTransactionLink, client: TransactionLinkClient, result: Any) -> str:
    """The id of an execution that has completed with ``result``."""
    definition = fake.add_definition(statuses=["COMPLETED"], result=result)
    return (await client.workflows.initialise(definition)).id


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Temporary files the download left in ``folder``."""
    return [name for name in os.listdir(folder) if name.endswith(".part")]


# --- whole results ------------------------------------------------------------


async def test_inline_result_written_byte_exact(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path, disk: str
) -> None:
    """A small result is written as the API sent it: the raw JSON bytes."""
    execution_id = await completed(fake, client, {"decision": "APPROVED", "score": 0.97})
    target = tmp_path / "result.json"
    downloaded = await client.workflows.download_result(execution_id, target)
    assert downloaded == DownloadedResult(target, target.stat().st_size, redirected=False)
    assert target.read_bytes() == b'{"decision":"APPROVED","score":0.97}'
    assert leftovers(tmp_path) == []


async def test_redirected_result_written_byte_exact(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path, disk: str
) -> None:
    """A large result comes from storage through the $redirect, byte for byte."""
    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "big.json"
    downloaded = await client.workflows.download_result(execution_id, target)
    assert downloaded == DownloadedResult(target, BIG.size, redirected=True)
    assert sha256(target) == BIG.sha256()
    assert leftovers(tmp_path) == []


async def test_storage_gets_no_credential_and_no_default_header(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """The storage GET carries no Authorization and none of the client's default headers."""
    execution_id = await completed(fake, client, BIG)
    await client.workflows.download_result(execution_id, tmp_path / "r.json")
    (storage_request,) = fake.requests_for("storage")
    assert "Authorization" not in storage_request.headers
    assert "X-Tenant" not in storage_request.headers
    (api_request,) = fake.requests_for("result")
    assert api_request.headers["X-Tenant"] == "t-1"


# --- resuming -----------------------------------------------------------------


async def test_dropped_connection_resumes_with_range_and_if_range(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path, disk: str
) -> None:
    """A body cut mid-way resumes from the bytes on disk, with Range and If-Range."""
    execution_id = await completed(fake, client, BIG)
    fake.drop_next("storage", after_bytes=1_000_000)
    target = tmp_path / "r.json"
    await client.workflows.download_result(execution_id, target)
    assert sha256(target) == BIG.sha256()
    first, second = fake.requests_for("storage")
    assert "Range" not in first.headers
    resumed_from = int(second.headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_from <= 1_000_000
    assert second.headers["If-Range"] == BIG.etag
    assert second.query == first.query  # the same URL, byte for byte


def cut_short_then_whole(
    server: ScriptedServer, storage: ScriptedServer, payload: bytes, *, cut: int
) -> None:
    """A redirect to storage that drops the first GET after ``cut`` bytes, then ignores Range.

    Its second answer is the whole object (200), whatever the Range asked.
    """

    async def cut_short(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Length": str(len(payload)), "ETag": '"v1"'}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(payload[:cut])
        assert request.transport is not None
        request.transport.close()
        return response

    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?X-Amz-Signature=ab"}))
    storage.script("GET", "/r.json", cut_short, reply(200, text=payload.decode()))


async def test_storage_that_ignores_range_restarts_cleanly(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path, disk: str
) -> None:
    """If storage answers a Range request with the whole object (200), it starts over."""
    payload = b'{"data": "' + b"x" * 500_000 + b'"}'
    cut_short_then_whole(server, storage, payload, cut=200_000)
    target = tmp_path / "r.json"
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        downloaded = await client.workflows.download_result(EXECUTION_ID, target)
    assert target.read_bytes() == payload
    assert downloaded.size == len(payload)
    assert "Range" in storage.seen[1].headers


async def test_a_range_from_elsewhere_is_not_trusted(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path, disk: str
) -> None:
    """A 206 that starts at another byte than asked is thrown away; the file restarts."""
    payload = b'["' + b"y" * 300_000 + b'"]'

    async def cut_short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(len(payload)), "ETag": '"e"'})
        await response.prepare(request)
        await response.write(payload[:100_000])
        assert request.transport is not None
        request.transport.close()
        return response

    async def wrong_range(request: web.Request) -> web.StreamResponse:
        return web.Response(
            status=206,
            body=payload[10:],
            headers={"Content-Range": f"bytes 10-{len(payload) - 1}/{len(payload)}"},
        )

    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?X-Amz-Signature=ab"}))
    storage.script("GET", "/r.json", cut_short, wrong_range, reply(200, text=payload.decode()))
    target = tmp_path / "r.json"
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        await client.workflows.download_result(EXECUTION_ID, target)
    assert target.read_bytes() == payload
    assert len(storage.seen) == 3


async def test_a_dropped_inline_answer_starts_over(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path, disk: str
) -> None:
    """An inline answer cut mid-way is fetched again from the start (the API has no Range)."""
    result = {"items": ["z" * 1000] * 50}
    execution_id = await completed(fake, client, result)
    fake.drop_next("result", after_bytes=10_000)
    target = tmp_path / "r.json"
    downloaded = await client.workflows.download_result(execution_id, target)
    assert not downloaded.redirected
    assert target.stat().st_size == downloaded.size > 50_000
    assert all("Range" not in r.headers for r in fake.requests_for("result"))


# --- expired URLs ---------------------------------------------------------------


async def test_expired_url_is_refreshed_from_the_api(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """A 403 from storage makes it ask the API for a new $redirect and go on from there."""
    execution_id = await completed(fake, client, BIG)
    fake.drop_next("storage", after_bytes=500_000)
    fake.fail_next("storage", 403)
    target = tmp_path / "r.json"
    await client.workflows.download_result(execution_id, target)
    assert sha256(target) == BIG.sha256()
    assert len(fake.requests_for("result")) == 2
    last = fake.requests_for("storage")[-1]
    assert last.headers["Range"] != "bytes=0-"


async def test_expiry_against_the_fakes_clock(tmp_path: Path) -> None:
    """A URL that really expired (the fake's clock moved past its TTL) is replaced."""
    from aiotlink.testing import ManualClock

    clock = ManualClock()
    calls = 0

    def move_time(done: int, total: int | None) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            clock.advance(120)  # the first URL is now expired

    target = tmp_path / "r.json"
    async with FakeTransactionLink(redirect_threshold=THRESHOLD, url_ttl=60, clock=clock) as fake:
        client = TransactionLinkClient(fake.token, base_url=fake.url)
        async with client:
            execution_id = await completed(fake, client, BIG)
            fake.drop_next("storage", after_bytes=200_000)
            await client.workflows.download_result(execution_id, target, on_progress=move_time)
    assert sha256(target) == BIG.sha256()
    assert len(fake.requests_for("result")) == 2


async def test_refreshes_are_bounded(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """Storage refusing every URL ends with PermissionDeniedError after a few refreshes."""
    execution_id = await completed(fake, client, BIG)
    fake.fail_next("storage", 403, times=20)
    target = tmp_path / "r.json"
    with pytest.raises(PermissionDeniedError, match="403"):
        await client.workflows.download_result(execution_id, target)
    assert len(fake.requests_for("result")) == 4  # the first answer and 3 refreshes
    assert not target.exists()
    assert leftovers(tmp_path) == []


# --- failures leave nothing behind -------------------------------------------------


async def test_failure_after_every_retry_leaves_no_file(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """Storage failing on every attempt raises, and leaves neither the file nor a temp file."""
    execution_id = await completed(fake, client, BIG)
    fake.fail_next("storage", 503, times=50)
    target = tmp_path / "r.json"
    with pytest.raises(ServerError):
        await client.workflows.download_result(execution_id, target)
    assert not target.exists()
    assert leftovers(tmp_path) == []


async def test_endless_drops_end_with_a_connection_error(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """A body cut short on every attempt gives up after a bounded number of attempts."""
    execution_id = await completed(fake, client, BIG)
    fake.drop_next("storage", times=50, after_bytes=1000)
    with pytest.raises(Exception, match=r"incomplete|connection lost") as caught:
        await client.workflows.download_result(execution_id, tmp_path / "r.json")
    from aiotlink import APIConnectionError

    assert isinstance(caught.value, APIConnectionError)
    # The client's retry policy: the first attempt and max_retries more.
    assert len(fake.requests_for("storage")) == client.max_retries + 1
    assert leftovers(tmp_path) == []


async def test_existing_file_is_untouched_on_failure(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """An earlier file at the destination keeps its content when the download fails."""
    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    target.write_bytes(b"yesterday's result")
    fake.drop_next("storage", after_bytes=100_000)
    fake.fail_next("storage", 404)
    with pytest.raises(NotFoundError):
        await client.workflows.download_result(execution_id, target)
    assert target.read_bytes() == b"yesterday's result"
    assert leftovers(tmp_path) == []


async def test_the_file_gets_the_permissions_of_a_new_file(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """The result is readable as any new file would be (mode 0666 less the umask)."""
    execution_id = await completed(fake, client, {"small": True})
    old_umask = os.umask(0o022)
    try:
        target = tmp_path / "r.json"
        await client.workflows.download_result(execution_id, target)
    finally:
        os.umask(old_umask)
    assert target.stat().st_mode & 0o777 == 0o644


async def test_existing_file_is_replaced_whole_on_success(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """A successful download replaces an earlier file at the destination."""
    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    target.write_bytes(b"old")
    await client.workflows.download_result(execution_id, target)
    assert sha256(target) == BIG.sha256()


def fill_disk_after(room: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make writes of the temporary file fail with ENOSPC once ``room`` bytes are written.

    Both writers write with ``os.pwrite``, from the disk threads.
    """
    real_pwrite = os.pwrite
    left = [room]

    def take_room(size: int) -> None:
        if size > left[0]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        left[0] -= size

    def pwrite(descriptor: int, data: memoryview, offset: int) -> int:
        take_room(len(data))
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr("aiotlink._download.os.pwrite", pwrite)


# Direct writes hand over 64 KiB buffers (see small_direct_buffers): the first room
# fails in the middle of the stream, the second only at the last, partial buffer.
@pytest.mark.parametrize("room", [500_000, BIG.size // 65_536 * 65_536])
async def test_disk_full_gives_a_clear_error_and_no_partial_file(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    disk: str,
    room: int,
) -> None:
    """Running out of disk raises DownloadError naming the path; nothing is left behind."""
    fill_disk_after(room, monkeypatch)
    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    target.write_bytes(b"keep me")
    with pytest.raises(DownloadError, match="No space left on device") as caught:
        await client.workflows.download_result(execution_id, target)
    assert caught.value.path == target
    assert str(target) in str(caught.value)
    assert target.read_bytes() == b"keep me"
    assert leftovers(tmp_path) == []
    await eventually(lambda: not disk_threads())


# --- how bytes reach the disk -------------------------------------------------


def record_writes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bool, int]]:
    """Each positioned write of the download: its thread, whether direct, its length."""
    writes: list[tuple[str, bool, int]] = []
    real_pwrite = os.pwrite

    def pwrite(descriptor: int, data: memoryview, offset: int) -> int:
        writes.append((threading.current_thread().name, is_direct(descriptor), len(data)))
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr("aiotlink._download.os.pwrite", pwrite)

    return writes


# BIG ends in a partial buffer, padded to 4096 bytes on disk and cut back; the other
# fills its last buffer exactly.
@pytest.mark.parametrize("result", [BIG, GeneratedResult(3 * 65_536, seed=3)])
async def test_large_results_bypass_the_page_cache_from_a_worker_thread(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    result: GeneratedResult,
) -> None:
    """With direct_io, where the filesystem allows, writes are direct, aligned, off the loop."""
    monkeypatch.setattr("aiotlink._download.DIRECT_IO", True)
    writes = record_writes(monkeypatch)
    execution_id = await completed(fake, client, result)
    target = tmp_path / "r.json"
    await client.workflows.download_result(execution_id, target)
    assert sha256(target) == result.sha256()
    assert target.stat().st_size == result.size
    whole_buffers, tail = divmod(result.size, 65_536)
    padded_tail = [-(-tail // 4096) * 4096] if tail else []
    assert [length for _, _, length in writes] == [65_536] * whole_buffers + padded_tail
    assert all(direct for _, direct, _ in writes)
    assert all(thread.startswith(DISK_THREADS) for thread, _, _ in writes)
    await eventually(lambda: not disk_threads())  # the thread ends with the download


async def test_without_o_direct_writes_go_through_the_page_cache(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where the OS has no O_DIRECT (macOS), direct_io falls back to the page cache."""
    monkeypatch.setattr("aiotlink._download.DIRECT_IO", True)
    monkeypatch.delattr(os, "O_DIRECT")
    real_pwrite = os.pwrite
    writers: set[str] = set()

    def pwrite(descriptor: int, data: memoryview, offset: int) -> int:
        writers.add(threading.current_thread().name)
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr("aiotlink._download.os.pwrite", pwrite)

    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    await client.workflows.download_result(execution_id, target)
    assert sha256(target) == BIG.sha256()
    assert writers
    assert all(name.startswith(DISK_THREADS) for name in writers)


# BIG ends in a partial buffer at this offset: 45 whole buffers of 64 KiB come first.
TAIL_OFFSET = BIG.size // 65_536 * 65_536


@pytest.mark.parametrize(
    ("refused_from", "error"),
    [(0, errno.EINVAL), (TAIL_OFFSET, errno.EINVAL), (0, errno.EOPNOTSUPP)],
)
async def test_a_filesystem_refusing_direct_writes_gets_them_through_the_cache(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    refused_from: int,
    error: int,
) -> None:
    """A filesystem that takes O_DIRECT but fails the writes still gets the result.

    From the first write, or only from the last, padded one.
    """
    caplog.set_level(logging.INFO, logger="aiotlink")
    monkeypatch.setattr("aiotlink._download.DIRECT_IO", True)
    real_pwrite = os.pwrite
    refused: list[int] = []

    def pwrite(descriptor: int, data: memoryview, offset: int) -> int:
        if is_direct(descriptor) and offset >= refused_from:
            refused.append(offset)
            raise OSError(error, os.strerror(error))
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr("aiotlink._download.os.pwrite", pwrite)

    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    await client.workflows.download_result(execution_id, target)
    assert sha256(target) == BIG.sha256()
    assert refused == [refused_from]  # once: the file then stays out of direct I/O
    assert "refused direct writes" in caplog.text


async def test_no_memory_for_the_writer_leaves_nothing_behind(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If a direct write buffer cannot be mapped, DownloadError; nothing left.

    A direct writer maps its buffers as the result grows (the page-cache writer maps
    none: it hands the chunks as they came to the disk threads).
    """
    monkeypatch.setattr("aiotlink._download.DIRECT_IO", True)

    def no_memory(*args: Any, **kwargs: Any) -> Any:
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    target.write_bytes(b"old")
    monkeypatch.setattr("aiotlink._download.mmap.mmap", no_memory)
    with pytest.raises(DownloadError, match="Cannot allocate memory"):
        await client.workflows.download_result(execution_id, target)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    await eventually(
        lambda: not any(".part" in open_file(int(d)) for d in os.listdir("/proc/self/fd"))
    )


@pytest.mark.parametrize(
    ("failing_offset", "error"),
    [(None, errno.EINVAL), (TAIL_OFFSET - 65_536, errno.EIO)],
    ids=["every write, even through the cache", "one of the last buffers"],
)
async def test_a_failed_write_fails_the_download_cleanly(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    failing_offset: int | None,
    error: int,
) -> None:
    """A failed write raises DownloadError, even of a buffer still queued at the end.

    Refused with EINVAL with and without direct I/O, or failing once, where the file
    would otherwise be renamed into place with a hole in it. Nothing is left behind.
    """
    # Buffers at known offsets are the direct writer's; EINVAL fails either writer.
    monkeypatch.setattr("aiotlink._download.DIRECT_IO", failing_offset is not None)
    real_pwrite = os.pwrite

    def pwrite(descriptor: int, data: memoryview, offset: int) -> int:
        if failing_offset is None or offset == failing_offset:
            raise OSError(error, os.strerror(error))
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr("aiotlink._download.os.pwrite", pwrite)

    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    with pytest.raises(DownloadError, match=os.strerror(error)):
        await client.workflows.download_result(execution_id, target)
    assert not target.exists()
    assert leftovers(tmp_path) == []


def block_disk_work(
    moment: str, monkeypatch: pytest.MonkeyPatch
) -> tuple[threading.Event, threading.Event, list[tuple[int, str]]]:
    """Hold the disk thread at ``moment``: (started, release, the descriptor and thread).

    The moments: a direct write of a whole buffer, the commit's write of the last one,
    the truncation that restarts a file, and a write through the page cache.
    """
    started, release = threading.Event(), threading.Event()
    held: list[tuple[int, str]] = []
    real_pwrite, real_ftruncate = os.pwrite, os.ftruncate
    monkeypatch.setattr("aiotlink._download.DIRECT_IO", moment in {"a write", "the commit"})

    def hold(descriptor: int) -> None:
        held.append((descriptor, threading.current_thread().name))
        started.set()
        release.wait(10)

    def pwrite(descriptor: int, data: memoryview, offset: int) -> int:
        whole_buffer = len(data) == 65_536
        if (moment, whole_buffer) in {("a write", True), ("the commit", False)} or (
            moment == "a page-cache write" and not held
        ):
            hold(descriptor)
        return real_pwrite(descriptor, data, offset)

    def ftruncate(descriptor: int, length: int) -> None:
        if moment == "a restart" and length == 0:
            hold(descriptor)
        real_ftruncate(descriptor, length)

    monkeypatch.setattr("aiotlink._download.os.pwrite", pwrite)

    monkeypatch.setattr("aiotlink._download.os.ftruncate", ftruncate)
    return started, release, held


@pytest.mark.parametrize("moment", ["a write", "the commit", "a restart", "a page-cache write"])
async def test_cancelling_while_the_disk_thread_works_closes_the_file_after_it(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    moment: str,
) -> None:
    """Cancelled while the disk thread works, the file goes at once, its descriptor after.

    Closed under the thread, its number could go to a file opened meanwhile, which
    would then get the bytes or the truncation.
    """
    started, release, held = block_disk_work(moment, monkeypatch)
    if moment == "a restart":  # a dropped inline answer starts the file over
        # Longer than the redirect probe (64 KiB), so that bytes are on disk at the drop.
        execution_id = await completed(fake, client, {"items": ["z" * 1000] * 90})
        fake.drop_next("result", after_bytes=80_000)
    else:
        execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    task = asyncio.create_task(client.workflows.download_result(execution_id, target))
    assert await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(tmp_path) == []
    ((descriptor, thread),) = held
    assert thread.startswith(DISK_THREADS)  # the work was off the event loop
    assert ".part" in open_file(descriptor)  # still open, its name already gone
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    victim_descriptor = os.open(victim, os.O_WRONLY)
    try:
        release.set()
        await eventually(lambda: ".part" not in open_file(descriptor))
        await eventually(lambda: not disk_threads())
    finally:
        os.close(victim_descriptor)
    assert victim.read_bytes() == b"precious"
    assert not target.exists()


def test_a_disk_queue_runs_work_in_order_and_then_the_last_action() -> None:
    """Work runs in order on a disk thread; stopped while idle, the last action runs at once."""
    disk = _DiskQueue()
    done: list[tuple[int, str]] = []
    for number in range(3):
        disk.submit(lambda n: done.append((n, threading.current_thread().name)), number).result()
    disk.stop(lambda: done.append((-1, threading.current_thread().name)))
    assert [number for number, _ in done] == [0, 1, 2, -1]
    assert all(thread.startswith(DISK_THREADS) for _, thread in done[:3])
    assert done[-1][1] == threading.current_thread().name


def test_stopping_a_disk_queue_mid_work_drops_the_queue_and_runs_last_after() -> None:
    """Stopped while work runs, queued work never runs and the last action follows the work."""
    disk = _DiskQueue()
    running, release = threading.Event(), threading.Event()
    order: list[str] = []

    def slow() -> None:
        running.set()
        release.wait(10)
        order.append("running work")

    first = disk.submit(slow)
    queued = disk.submit(lambda: order.append("queued work"))
    assert running.wait(10)
    disk.stop(lambda: order.append("last"))
    assert order == []  # not before the running work is done
    late = disk.submit(lambda: order.append("late"))  # after the stop: never runs
    release.set()
    first.result(10)
    for _ in range(200):
        if "last" in order:
            break
        time.sleep(0.01)
    assert order == ["running work", "last"]
    assert queued.cancelled()
    assert late.cancelled()


def test_many_disk_queues_share_a_few_threads_in_turn() -> None:
    """Twenty files' work runs on at most the pool's threads, each file's in order."""
    pool = _DiskPool(max_threads=2)
    queues = [_DiskQueue(pool) for _ in range(20)]
    seen: dict[int, list[int]] = {n: [] for n in range(20)}
    threads: set[str] = set()

    def work(file: int, step: int) -> None:
        threads.add(threading.current_thread().name)
        seen[file].append(step)
        time.sleep(0.001)

    futures = [
        queue.submit(work, file, step) for step in range(5) for file, queue in enumerate(queues)
    ]
    for future in futures:
        future.result(10)
    assert all(steps == [0, 1, 2, 3, 4] for steps in seen.values())
    assert 1 <= len(threads) <= 2


def test_idle_disk_threads_end() -> None:
    """A disk thread with nothing to do ends after a short wait: none lingers."""
    pool = _DiskPool(max_threads=1)
    queue = _DiskQueue(pool)
    queue.submit(lambda: None).result(10)
    for _ in range(300):
        if not pool._threads:
            break
        time.sleep(0.01)
    assert pool._threads == 0
    closed: list[bool] = []
    queue.stop(lambda: closed.append(True))  # with no thread left, at once
    assert closed == [True]


def disk_threads() -> list[str]:
    """The download's disk threads still alive."""
    return [t.name for t in threading.enumerate() if t.name.startswith(DISK_THREADS)]


def open_file(descriptor: int) -> str:
    """The name of the file open as ``descriptor`` in this process, or "" if none is."""
    try:
        return os.readlink(f"/proc/self/fd/{descriptor}")
    except FileNotFoundError:
        return ""


async def test_cancelling_a_download_leaves_nothing_behind(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path, disk: str
) -> None:
    """Cancelling mid-download removes the temporary file and re-raises."""
    execution_id = await completed(fake, client, BIG)
    fake.slow_next("storage", 30.0)
    target = tmp_path / "r.json"
    task = asyncio.create_task(client.workflows.download_result(execution_id, target))
    await eventually(lambda: fake.requests_for("storage"))  # held there for 30 s
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not target.exists()
    assert leftovers(tmp_path) == []


# --- arguments, progress, secrets -------------------------------------------------


@pytest.mark.parametrize(
    ("execution_id", "where", "named"),
    [
        ("not-a-uuid", "r.json", "execution_id"),
        (EXECUTION_ID, "missing-folder/r.json", "folder does not exist"),
        (EXECUTION_ID, ".", "directory"),
        (EXECUTION_ID, None, "path"),
    ],
)
async def test_bad_arguments_raise_before_any_request(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    execution_id: str,
    where: str | None,
    named: str,
) -> None:
    """A malformed id or an impossible path raises ValueError before any request."""
    path: Any = None if where is None else tmp_path / where
    with pytest.raises(ValueError, match=named):
        await client.workflows.download_result(execution_id, path)
    assert fake.requests == []


async def test_progress_reports_bytes_and_total_at_a_bounded_rate(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """on_progress (async too) sees growing byte counts, the total, and the end."""
    execution_id = await completed(fake, client, BIG)
    fake.slow_next("storage", 0.25)  # the download takes at least a quarter second
    calls: list[tuple[int, int | None]] = []

    async def record(done: int, total: int | None) -> None:
        calls.append((done, total))

    loop = asyncio.get_running_loop()
    started = loop.time()
    await client.workflows.download_result(execution_id, tmp_path / "r.json", on_progress=record)
    elapsed = loop.time() - started
    assert calls[-1] == (BIG.size, BIG.size)
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert {total for _, total in calls} == {BIG.size}
    assert len(calls) <= elapsed / 0.1 + 3  # at most ten a second, plus the first and last


async def test_signatures_are_masked_in_logs_and_errors(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Retry logs and errors show the storage URL with its signature masked."""
    caplog.set_level(logging.DEBUG)
    execution_id = await completed(fake, client, BIG)
    fake.drop_next("storage", after_bytes=1000)
    fake.fail_next("storage", 503, times=50)
    with pytest.raises(ServerError) as caught:
        await client.workflows.download_result(execution_id, tmp_path / "r.json")
    signature = fake.requests_for("storage")[0].query.split("X-Amz-Signature=")[1]
    texts = [str(caught.value), *(record.getMessage() for record in caplog.records)]
    assert any("X-Amz-Signature=***" in text for text in texts)
    assert not [text for text in texts if signature in text]


async def test_a_redirect_to_plain_http_from_an_https_api_is_refused(
    mocked: Any, tmp_path: Path
) -> None:
    """The $redirect check applies to downloads too."""
    mocked.get(
        f"https://api.transactionlink.io/workflows/{EXECUTION_ID}/result",
        payload={"$redirect": "http://elsewhere.example/r.json?X-Amz-Signature=ab"},
    )
    async with TransactionLinkClient(TOKEN) as client:
        with pytest.raises(ResponseValidationError, match="refusing to follow"):
            await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
    assert leftovers(tmp_path) == []


async def test_run_can_download_to_a_path(
    fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """run(..., download_to=path) returns the DownloadedResult as its result."""
    definition = fake.add_definition(statuses=["RUNNING", "COMPLETED"], result=BIG)
    target = tmp_path / "r.json"
    outcome = await client.workflows.run(definition, download_to=target, poll_interval=0.01)
    assert outcome.result == DownloadedResult(target, BIG.size, redirected=True)
    assert sha256(target) == BIG.sha256()


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes 100-199/1000", (100, 199, 1000)),
        ("bytes 0-9/*", (0, 9, None)),
        ("bytes */1000", None),
        (None, None),
        ("items 1-2/3", None),
    ],
)
def test_content_range_parsing(
    header: str | None, expected: tuple[int, int, int | None] | None
) -> None:
    """Content-Range gives the first and last byte and the total, or nothing when malformed."""
    assert content_range(header) == expected


# --- a real S3-compatible server --------------------------------------------------


@pytest.fixture
def s3_server() -> Iterator[str]:
    """moto's S3 server on 127.0.0.1, started by the test; yields its endpoint URL."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


async def test_redirect_to_a_real_presigned_s3_url(
    s3_server: str, server: ScriptedServer, tmp_path: Path
) -> None:
    """A boto3 pre-signed URL to an object in a real S3 server downloads byte for byte."""
    s3 = boto3.client(
        "s3",
        endpoint_url=s3_server,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="eu-central-1",
    )
    payload = b"".join(BIG.iter_bytes())
    location = {"LocationConstraint": "eu-central-1"}
    await asyncio.to_thread(
        s3.create_bucket, Bucket="tl-results", CreateBucketConfiguration=location
    )
    await asyncio.to_thread(s3.put_object, Bucket="tl-results", Key="r/result.json", Body=payload)
    presigned = s3.generate_presigned_url(
        "get_object", Params={"Bucket": "tl-results", "Key": "r/result.json"}, ExpiresIn=300
    )
    assert "X-Amz-Signature=" in presigned
    assert "%2F" in presigned  # the credential scope: re-quoting would break it
    server.script(*RESULT, reply(200, {"$redirect": presigned}))
    target = tmp_path / "r.json"
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        downloaded = await client.workflows.download_result(EXECUTION_ID, target)
        in_memory = await client.workflows.get_result(EXECUTION_ID)
    assert downloaded == DownloadedResult(target, len(payload), redirected=True)
    assert sha256(target) == BIG.sha256()
    assert in_memory == __import__("json").loads(payload)


async def test_aiohttp_would_requote_without_encoded_urls() -> None:
    """Why URLs are sent encoded: yarl re-quotes %2F in a plain URL (guards the design)."""
    import yarl

    url = "http://127.0.0.1/r?X-Amz-Credential=a%2Fb"
    assert str(yarl.URL(url, encoded=True)) == url
    assert aiohttp.__version__  # the client library under test


# --- the edges of the network and the disk ---------------------------------------


async def test_unreachable_storage_ends_with_a_connection_error(
    server: ScriptedServer, tmp_path: Path
) -> None:
    """Storage that cannot be reached is retried a bounded number of times, then raised."""
    from aiotlink import APIConnectionError

    from .test_integration import free_port

    url = f"http://127.0.0.1:{free_port()}/r.json?X-Amz-Signature=secret-signature"
    server.script(*RESULT, reply(200, {"$redirect": url}))
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        with pytest.raises(APIConnectionError, match="could not connect") as caught:
            await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
    assert "secret-signature" not in str(caught.value)
    assert leftovers(tmp_path) == []


async def test_storage_that_stops_answering_times_out_per_read(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """A storage read that stalls longer than the timeout fails as a timeout, retried."""
    from aiotlink import APITimeoutError

    from .servers import stall

    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?X-Amz-Signature=ab"}))
    storage.script("GET", "/r.json", stall(5.0, reply(200, text="[]")))
    async with TransactionLinkClient(
        TOKEN, base_url=server.url, timeout=0.05, retry_backoff=False
    ) as client:
        with pytest.raises(APITimeoutError):
            await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
    assert len(storage.seen) == client.max_retries + 1


async def test_compressed_storage_answer_is_written_decoded(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """A gzip-encoded answer is written as the JSON it encodes (its length is not checked)."""
    import gzip

    payload = b'{"compressed": "' + b"c" * 10_000 + b'"}'

    async def gzipped(request: web.Request) -> web.StreamResponse:
        return web.Response(body=gzip.compress(payload), headers={"Content-Encoding": "gzip"})

    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?X-Amz-Signature=ab"}))
    storage.script("GET", "/r.json", gzipped)
    target = tmp_path / "r.json"
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        downloaded = await client.workflows.download_result(EXECUTION_ID, target)
    assert target.read_bytes() == payload
    assert downloaded.size == len(payload)
    assert storage.seen[0].headers["Accept-Encoding"] == "identity"


async def test_refresh_that_no_longer_redirects(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """If the API stops redirecting when asked for a fresh URL, that is a clear error."""
    expired = "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
    server.script(
        *RESULT,
        reply(200, {"$redirect": f"{storage.url}/r.json?X-Amz-Signature=ab"}),
        reply(200, {"not": "a redirect"}),
    )
    storage.script("GET", "/r.json", reply(403, text=expired))
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ResponseValidationError, match="no longer redirects"):
            await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "body", ["plain text, not JSON", "", "   ", "<html>" + "x" * 100_000 + "</html>"]
)
async def test_a_result_that_is_not_json_is_refused_and_nothing_written(
    server: ScriptedServer, tmp_path: Path, body: str
) -> None:
    """A result is a JSON document: an empty or non-JSON answer is an error, and no file."""
    server.script(*RESULT, reply(200, text=body))
    target = tmp_path / "r.json"
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ResponseValidationError, match=r"not JSON|empty"):
            await client.workflows.download_result(EXECUTION_ID, target)
    assert not list(await asyncio.to_thread(tmp_path.iterdir))


async def test_a_stored_result_that_is_empty_or_not_json_is_refused(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """Storage answering 200 with nothing, or with an HTML page: an error, and no file."""
    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?X-Amz-Signature=s"}))
    storage.script("GET", "/r.json", reply(200, text=""), reply(200, text="<html>login</html>"))
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        for expected in ("empty", "not JSON"):
            with pytest.raises(ResponseValidationError, match=expected):
                await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
    assert not list(await asyncio.to_thread(tmp_path.iterdir))


@pytest.mark.parametrize(
    ("step", "error"),
    [("fsync", errno.EIO), ("replace", errno.EACCES)],  # the rename: after the close
)
async def test_a_failure_while_finishing_leaves_the_destination_as_it_was(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    disk: str,
    step: str,
    error: int,
) -> None:
    """If the fsync or the rename fails, DownloadError; the old file stays; no temp.

    The file is closed once: closing its number twice could close another file's.
    """
    closed: list[int] = []
    real_close = os.close

    def close(descriptor: int) -> None:
        closed.append(descriptor)
        real_close(descriptor)

    def failing(*args: Any) -> None:
        raise OSError(error, os.strerror(error))

    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    target.write_bytes(b"old")
    monkeypatch.setattr("aiotlink._download.os.close", close)
    monkeypatch.setattr(f"aiotlink._download.os.{step}", failing)
    with pytest.raises(DownloadError, match="could not finish writing") as caught:
        await client.workflows.download_result(execution_id, target)
    assert os.strerror(error) in str(caught.value)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    await eventually(lambda: not disk_threads())
    assert len(closed) == len(set(closed))


def record_folder_syncs(monkeypatch: pytest.MonkeyPatch, error: int | None = None) -> list[str]:
    """The folders fsynced (failing with ``error`` if given); files sync as usual."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(descriptor: int) -> None:
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            synced.append(open_file(descriptor))
            if error is not None:
                raise OSError(error, os.strerror(error))
        real_fsync(descriptor)

    monkeypatch.setattr("aiotlink._download.os.fsync", fsync)
    return synced


async def test_the_rename_is_made_durable_by_syncing_the_folder(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After the rename, the folder is fsynced, so that a crash cannot undo it."""
    synced = record_folder_syncs(monkeypatch)
    execution_id = await completed(fake, client, BIG)
    await client.workflows.download_result(execution_id, tmp_path / "r.json")
    assert synced == [str(tmp_path)]


async def test_a_failed_folder_sync_after_the_rename_only_warns(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Once the whole file is in place, a failed folder fsync is a warning, not an error.

    An error would tell the caller that the destination kept what it had.
    """
    record_folder_syncs(monkeypatch, errno.EIO)
    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    target.write_bytes(b"old")
    downloaded = await client.workflows.download_result(execution_id, target)
    assert downloaded.size == BIG.size
    assert sha256(target) == BIG.sha256()
    assert "could not sync the folder" in caplog.text


async def test_page_cache_writes_are_made_off_the_event_loop(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The default writer writes every byte from the disk threads, never on the loop."""
    writer_threads: set[str] = set()
    real_pwrite = os.pwrite

    def pwrite(descriptor: int, data: memoryview, offset: int) -> int:
        writer_threads.add(threading.current_thread().name)
        assert not is_direct(descriptor)
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr("aiotlink._download.os.pwrite", pwrite)

    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    await client.workflows.download_result(execution_id, target)
    assert sha256(target) == BIG.sha256()
    assert writer_threads
    assert all(name.startswith(DISK_THREADS) for name in writer_threads)


async def test_refusing_a_large_result_costs_the_fake_no_error(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client hanging up on a result over max_bytes leaves no traceback in the fake."""
    from aiotlink import ResultTooLargeError

    # Larger than the socket buffers, so that the fake is still writing when we hang up.
    execution_id = await completed(fake, client, GeneratedResult(30_000_000))
    served = follow_answers(fake, monkeypatch)
    with pytest.raises(ResultTooLargeError):
        await client.workflows.get_result(execution_id, max_bytes=1000)
    # The fake notices the closed connection and ends its answer.
    await eventually(lambda: len(served) == 2 and all(task.done() for task in served))
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == []


def record_write_outs(
    monkeypatch: pytest.MonkeyPatch, *, able: bool = True
) -> list[tuple[str, int, int, bool]]:
    """Each early write-out a download starts, and each fsync, in the order they ran.

    ``able=False``: the system cannot start one (as on a filesystem without it).
    """
    events: list[tuple[str, int, int, bool]] = []
    real_start, real_fsync = _download._start_write_out, os.fsync
    monkeypatch.setattr(_download, "WRITE_OUT_BYTES", 256 * 1024)

    def start_write_out(descriptor: int, start: int, end: int) -> bool:
        assert threading.current_thread().name.startswith(DISK_THREADS)
        started = real_start(descriptor, start, end) if able else False
        events.append(("write out", start, end, started))
        return started

    def fsync(descriptor: int) -> None:
        events.append(("fsync", 0, os.fstat(descriptor).st_size, True))
        real_fsync(descriptor)

    monkeypatch.setattr(_download, "_start_write_out", start_write_out)
    monkeypatch.setattr(os, "fsync", fsync)
    return events


async def test_a_download_sends_each_stretch_to_disk_before_its_fsync(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The disk writes while the rest arrives, so the fsync does not wait for the whole file."""
    events = record_write_outs(monkeypatch)
    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    await client.workflows.download_result(execution_id, target)
    assert sha256(target) == BIG.sha256()
    write_outs = [event for event in events if event[0] == "write out"]
    assert len(write_outs) >= 2
    assert events.index(write_outs[-1]) < events.index(("fsync", 0, BIG.size, True))
    # Stretch after stretch from the start, each at least WRITE_OUT_BYTES, all started.
    ends = [0] + [end for _, _, end, _ in write_outs]
    assert [start for _, start, _, _ in write_outs] == ends[:-1]
    assert all(end - start >= 256 * 1024 for start, end in itertools.pairwise(ends))
    assert ends[-1] <= BIG.size
    # Started where the system has the call (Linux); elsewhere asked once, refused.
    linux = sys.platform.startswith("linux")
    assert all(started == linux for *_, started in write_outs)


async def test_a_system_that_cannot_write_out_early_still_gets_the_whole_file(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One refusal and the download stops asking; the fsync alone makes the file durable.

    The refusal comes only once more writes, each ending a stretch, are queued behind it:
    they must not ask again either.
    """
    events = record_write_outs(monkeypatch, able=False)
    monkeypatch.setattr(_download, "MAX_BATCH_BYTES", 1024 * 1024)  # 256 KiB writes
    handed_over, queued_behind = 0, threading.Event()
    real_hand_over, refuse = _download._PageCacheWriter._hand_over, _download._start_write_out

    def hand_over(writer: _download._PageCacheWriter) -> None:
        nonlocal handed_over
        real_hand_over(writer)
        handed_over += 1
        if handed_over >= 3:
            queued_behind.set()

    def refuse_later(descriptor: int, start: int, end: int) -> bool:
        assert queued_behind.wait(10)
        return refuse(descriptor, start, end)

    monkeypatch.setattr(_download._PageCacheWriter, "_hand_over", hand_over)
    monkeypatch.setattr(_download, "_start_write_out", refuse_later)
    execution_id = await completed(fake, client, BIG)
    target = tmp_path / "r.json"
    await client.workflows.download_result(execution_id, target)
    assert sha256(target) == BIG.sha256()
    assert [event[0] for event in events].count("write out") == 1
    assert ("fsync", 0, BIG.size, True) in events


def test_starting_a_write_out_works_on_a_file_and_says_when_it_cannot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real system call: started on a regular file; refused (False) on a pipe.

    Where there is no such call (not Linux, a libc without it), never started.
    """
    with (tmp_path / "f").open("wb") as file:
        file.write(b"x" * 100_000)
        file.flush()
        assert _download._start_write_out(file.fileno(), 0, 100_000) is (
            sys.platform.startswith("linux")
        )
    reading, writing = os.pipe()
    try:
        assert _download._start_write_out(reading, 0, 10) is False
    finally:
        os.close(reading)
        os.close(writing)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert _download._sync_file_range() is None
    monkeypatch.setattr(sys, "platform", "linux")

    def no_libc(name: str | None, **options: Any) -> Any:
        raise OSError("no such library")

    monkeypatch.setattr(ctypes, "CDLL", no_libc)
    assert _download._sync_file_range() is None
    monkeypatch.setattr(_download, "_SYNC_FILE_RANGE", None)
    with (tmp_path / "f").open("ab") as file:
        assert _download._start_write_out(file.fileno(), 0, 100_000) is False


async def test_a_restarted_download_writes_out_from_its_first_byte_again(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Storage that ignores Range sends the whole object again: stretches start over at 0."""
    events = record_write_outs(monkeypatch)
    payload = b'{"data": "' + b"x" * 2_000_000 + b'"}'
    cut_short_then_whole(server, storage, payload, cut=800_000)
    target = tmp_path / "r.json"
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        await client.workflows.download_result(EXECUTION_ID, target)
    assert target.read_bytes() == payload
    starts = [start for kind, start, _, _ in events if kind == "write out"]
    assert starts.count(0) == 2  # the first answer's stretches, then the whole object's
    assert max(end for kind, _, end, _ in events if kind == "write out") <= len(payload)
