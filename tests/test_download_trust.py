"""download_result against storage that lies, unbounded bodies and odd destinations.

A file is the exact object or an error: resumes are taken only for the same object,
from exactly where asked, to its announced end; the size can be capped; only regular
files are replaced; every read follows the client's one retry policy.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from aiotlink import (
    DownloadError,
    ResultTooLargeError,
    ServerError,
    TransactionLinkClient,
)
from aiotlink._download import line_up

from .conftest import EXECUTION_ID, TOKEN
from .servers import ScriptedServer, eventually, reply, stall_mid_body

RESULT = ("GET", f"/workflows/{EXECUTION_ID}/result")
OBJECT = ("GET", "/bucket/result.json")
V1 = b'{"version": 1, "data": "' + b"a" * 300_000 + b'"}'
V2 = b'{"version": 2, "data": "' + b"b" * 300_000 + b'"}'
CUT = 100_000  # where storage drops the connection


def leftovers(folder: Path) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".part")]


def redirect_to(server: ScriptedServer, storage: ScriptedServer) -> None:
    url = f"{storage.url}{OBJECT[1]}?X-Amz-Signature=c2lnbmF0dXJl"
    server.script(*RESULT, reply(200, {"$redirect": url}))


def whole(payload: bytes, etag: str | None) -> Any:
    """A 200 with the whole object."""

    async def handler(_: web.Request) -> web.StreamResponse:
        headers = {} if etag is None else {"ETag": etag}
        return web.Response(body=payload, headers=headers)

    return handler


def dropped(payload: bytes, etag: str | None, *, after: int = CUT) -> Any:
    """A 200 announcing the whole object, cut off after ``after`` bytes."""

    async def handler(request: web.Request) -> web.StreamResponse:
        headers = {"Content-Length": str(len(payload))}
        if etag is not None:
            headers["ETag"] = etag
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        await response.write(payload[:after])
        assert request.transport is not None
        request.transport.close()
        return response

    return handler


def partial(
    payload: bytes,
    *,
    etag: str | None,
    content_range: Callable[[int, int], str],
    start: Callable[[int], int] = lambda asked: asked,
) -> Any:
    """A 206 with the rest of ``payload`` from a start, under a Content-Range it makes."""

    async def handler(request: web.Request) -> web.StreamResponse:
        asked = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        first = start(asked)
        headers = {"Content-Range": content_range(first, len(payload))}
        if etag is not None:
            headers["ETag"] = etag
        return web.Response(status=206, body=payload[first:], headers=headers)

    return handler


async def download(server: ScriptedServer, tmp_path: Path) -> Path:
    """download_result of the scripted execution to ``tmp_path``, retrying without sleeps."""
    target = tmp_path / "r.json"
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        await client.workflows.download_result(EXECUTION_ID, target)
    return target


def honest_range(first: int, total: int) -> str:
    return f"bytes {first}-{total - 1}/{total}"


# --- the decision, as a pure function -----------------------------------------------


def test_a_resume_is_taken_only_for_the_same_object_from_where_asked() -> None:
    """line_up: a 206 continues only with the same ETag, offset, total and length.

    Each case breaks one rule and keeps the others, so that each check alone refuses it.
    """
    good = {"ETag": '"v1"', "Content-Range": "bytes 100-999/1000", "Content-Length": "900"}

    def decide(changes: Mapping[str, str | None], **kwargs: Any) -> str | None:
        headers = {k: v for k, v in {**good, **changes}.items() if v is not None}
        arguments = {"offset": 100, "etag": '"v1"', "total": 1000, **kwargs}
        return line_up(206, headers, **arguments).problem

    assert decide({}) is None
    assert line_up(206, good, offset=100, etag='"v1"', total=1000).total == 1000
    assert decide({"ETag": '"v2"'}) is not None
    assert decide({"ETag": None}) is not None
    assert decide({}, etag=None) is not None  # never resumed without an ETag
    # From elsewhere, with a length that fits what it claims:
    assert decide({"Content-Range": "bytes 50-999/1000", "Content-Length": "950"}) is not None
    assert decide({"Content-Range": "bytes 100-999/*"}) is not None
    assert decide({"Content-Range": "bytes 100-1099/1100", "Content-Length": "1000"}) is not None
    grown = {"Content-Range": "bytes 100-1099/1100", "Content-Length": "1000"}
    assert decide(grown, total=None) is None  # no total seen before: nothing to differ from
    assert decide({"Content-Range": "bytes 100-499/1000", "Content-Length": "400"}) is not None
    assert decide({"Content-Length": "400"}) is not None  # length disagrees with the range
    assert decide({"Content-Range": None}) is not None
    assert decide({"Content-Range": "bytes 100-999/" + "9" * 5000}) is not None  # no int()
    assert decide({"Content-Encoding": "gzip"}) is not None  # ranges of encoded bytes


def test_what_an_answer_may_be_resumed_by() -> None:
    """line_up: only a strong ETag of an unencoded whole answer names a resumable object."""
    assert line_up(200, {"ETag": '"v1"'}, offset=0, etag=None, total=None).etag == '"v1"'
    assert line_up(200, {"ETag": 'W/"v1"'}, offset=0, etag=None, total=None).etag is None
    encoded = {"ETag": '"v1"', "Content-Encoding": "gzip", "Content-Length": "10"}
    decision = line_up(200, encoded, offset=0, etag=None, total=None)
    assert (decision.etag, decision.total) == (None, None)
    whole = {"ETag": '"v1"', "Content-Range": "bytes 0-9/10", "Content-Length": "10"}
    assert line_up(206, whole, offset=0, etag=None, total=None) == (False, 10, '"v1"', None)


def test_the_same_object_again_keeps_its_length() -> None:
    """line_up: a 200 under the ETag already seen keeps that object's length."""
    same = {"ETag": '"v1"'}
    assert line_up(200, same, offset=5, etag='"v1"', total=10).total == 10
    assert line_up(200, {**same, "Content-Length": "7"}, offset=5, etag='"v1"', total=10).problem
    other = {"ETag": '"v2"', "Content-Length": "7"}
    assert line_up(200, other, offset=5, etag='"v1"', total=10) == (True, 7, '"v2"', None)


def test_a_whole_answer_restarts_a_resumed_download() -> None:
    """line_up: a 200 to a Range request is the whole object afresh: start over."""
    decision = line_up(
        200, {"Content-Length": "10", "ETag": '"v2"'}, offset=5, etag='"v1"', total=10
    )
    assert (decision.restart, decision.total, decision.etag, decision.problem) == (
        True,
        10,
        '"v2"',
        None,
    )


# --- storage that lies ---------------------------------------------------------------


@pytest.mark.parametrize(
    "liar",
    [
        partial(V2, etag='"v2"', content_range=honest_range),  # ignores If-Range
        partial(V1, etag='"v1"', content_range=lambda first, _: f"bytes {first}-*/*"),
        partial(V1, etag='"v1"', content_range=lambda first, total: f"bytes {first}-{total - 1}/*"),
        partial(V1, etag='"v1"', content_range=honest_range, start=lambda asked: asked - 10),
        partial(V1 + b" ", etag='"v1"', content_range=honest_range),  # another total
    ],
    ids=["etag-changed", "malformed-range", "unknown-total", "wrong-offset", "total-changed"],
)
async def test_a_lying_resume_is_never_spliced(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path, liar: Any
) -> None:
    """A 206 that is not the rest of the same object: the download starts over, whole."""
    redirect_to(server, storage)
    storage.script(*OBJECT, dropped(V1, '"v1"'), liar, whole(V1, '"v1"'))
    target = tmp_path / "r.json"
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        downloaded = await client.workflows.download_result(EXECUTION_ID, target)
    assert target.read_bytes() == V1
    assert downloaded.size == len(V1)
    ranges = [seen.headers.get("Range") for seen in storage.requests_to(*OBJECT)]
    assert ranges == [None, f"bytes={CUT}-", None]  # the lie, then a fresh start


async def test_a_range_that_runs_past_its_announced_end_is_not_kept(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """A 206 without a Content-Length that sends more than its range: started over."""

    async def overlong(request: web.Request) -> web.StreamResponse:
        asked = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        headers = {"ETag": '"v1"', "Content-Range": honest_range(asked, len(V1))}
        response = web.StreamResponse(status=206, headers=headers)
        response.enable_chunked_encoding()  # no Content-Length to stop the parser
        await response.prepare(request)
        await response.write(V1[asked:] + b"trailing garbage")
        return response

    redirect_to(server, storage)
    storage.script(*OBJECT, dropped(V1, '"v1"'), overlong, whole(V1, '"v1"'))
    target = await download(server, tmp_path)
    assert target.read_bytes() == V1
    # Refused as it ran past its end: the next read starts over, it does not resume.
    ranges = [seen.headers.get("Range") for seen in storage.requests_to(*OBJECT)]
    assert ranges == [None, f"bytes={CUT}-", None]


async def test_an_object_changed_between_attempts_is_written_as_the_new_one_whole(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """Dropped on v1, then v2 everywhere: the file is all of v2, none of v1."""
    redirect_to(server, storage)
    storage.script(
        *OBJECT,
        dropped(V1, '"v1"'),
        partial(V2, etag='"v2"', content_range=honest_range),
        whole(V2, '"v2"'),
    )
    target = await download(server, tmp_path)
    assert target.read_bytes() == V2


async def test_without_an_etag_a_dropped_download_starts_over(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """Storage that names no ETag is never asked for a Range: nothing could check it."""
    redirect_to(server, storage)
    storage.script(*OBJECT, dropped(V1, None), whole(V1, None))
    target = await download(server, tmp_path)
    assert target.read_bytes() == V1
    assert all("Range" not in seen.headers for seen in storage.requests_to(*OBJECT))


async def test_storage_that_always_lies_ends_in_a_download_error(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """Drops and bad ranges on every attempt: DownloadError once the retries run out."""
    redirect_to(server, storage)
    storage.script(
        *OBJECT,
        dropped(V1, '"v1"'),
        partial(V2, etag='"v2"', content_range=honest_range),
        dropped(V1, '"v1"'),
        partial(V2, etag='"v2"', content_range=honest_range),
    )
    target = tmp_path / "r.json"
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        with pytest.raises(DownloadError, match="never sent the result whole") as caught:
            await client.workflows.download_result(EXECUTION_ID, target)
        assert len(storage.requests_to(*OBJECT)) == client.max_retries + 1
    assert caught.value.path == target
    assert os.listdir(tmp_path) == []


# --- a cap on the size ---------------------------------------------------------------


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "chunked"])
@pytest.mark.parametrize("redirected", [True, False], ids=["storage", "inline"])
async def test_a_result_over_max_bytes_leaves_no_file(
    server: ScriptedServer,
    storage: ScriptedServer,
    tmp_path: Path,
    announced: bool,
    redirected: bool,
) -> None:
    """Over download_result's max_bytes: ResultTooLargeError, nothing on disk."""

    async def body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if announced:
            response.content_length = len(V1)
        await response.prepare(request)
        for start in range(0, len(V1), 10_000):
            await response.write(V1[start : start + 10_000])
        return response

    if redirected:
        redirect_to(server, storage)
        storage.script(*OBJECT, body)
    else:
        server.script(*RESULT, body)
    target = tmp_path / "r.json"
    target.write_bytes(b"old")
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ResultTooLargeError, match="max_bytes=100000") as caught:
            await client.workflows.download_result(EXECUTION_ID, target, max_bytes=100_000)
        downloaded = await client.workflows.download_result(
            EXECUTION_ID, tmp_path / "fits.json", max_bytes=len(V1)
        )
    assert caught.value.size == (len(V1) if announced else None)
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []
    assert downloaded.size == len(V1)


@pytest.mark.parametrize("max_bytes", [0, -1, True, 1.5, "10"])
async def test_a_malformed_max_bytes_is_refused_before_any_request(
    server: ScriptedServer, tmp_path: Path, max_bytes: Any
) -> None:
    """max_bytes must be a whole number of at least 1 (or None)."""
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ValueError, match="max_bytes"):
            await client.workflows.download_result(
                EXECUTION_ID, tmp_path / "r.json", max_bytes=max_bytes
            )
    assert server.seen == []


# --- the destination -----------------------------------------------------------------


def make_fifo(folder: Path) -> Path:
    path = folder / "fifo.json"
    os.mkfifo(path)
    return path


def make_socket(folder: Path) -> Path:
    path = folder / "socket.json"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.close()
    return path


def make_folder(folder: Path) -> Path:
    path = folder / "folder.json"
    path.mkdir()
    return path


SPECIAL_FILES = pytest.mark.parametrize(
    "make",
    [make_fifo, make_socket, make_folder, lambda _: Path("/dev/null")],
    ids=["fifo", "socket", "directory", "device"],
)


@SPECIAL_FILES
async def test_a_destination_that_is_no_regular_file_is_refused_before_any_request(
    server: ScriptedServer, tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    """A FIFO, socket, directory or device is never replaced: ValueError, no request."""
    path = make(tmp_path)
    before = os.lstat(path)
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ValueError, match="path is"):
            await client.workflows.download_result(EXECUTION_ID, path)
        with pytest.raises(ValueError, match="path is"):
            await client.workflows.run("definition", download_to=path)
    after = os.lstat(path)
    assert (stat.S_IFMT(after.st_mode), after.st_ino) == (
        stat.S_IFMT(before.st_mode),
        before.st_ino,
    )
    assert server.seen == []


@SPECIAL_FILES
async def test_a_link_to_a_special_file_is_refused_before_any_request(
    server: ScriptedServer, tmp_path: Path, make: Callable[[Path], Path]
) -> None:
    """A link to a FIFO, socket, directory or device (``/dev/stdout``) stays as it was."""
    link = tmp_path / "link.json"
    link.symlink_to(make(tmp_path))
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ValueError, match="path is a link to"):
            await client.workflows.download_result(EXECUTION_ID, link)
    assert link.is_symlink()
    assert server.seen == []


async def test_a_symbolic_link_is_replaced_not_written_through(
    server: ScriptedServer, tmp_path: Path
) -> None:
    """The link itself becomes the file; what it pointed to is left as it was."""
    server.script(*RESULT, reply(200, {"fresh": True}))
    pointed_to = tmp_path / "elsewhere.json"
    pointed_to.write_bytes(b"precious")
    link = tmp_path / "r.json"
    link.symlink_to(pointed_to)
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        await client.workflows.download_result(EXECUTION_ID, link)
    assert not link.is_symlink()
    assert link.read_bytes() == b'{"fresh": true}'
    assert pointed_to.read_bytes() == b"precious"


async def test_a_name_near_the_limit_still_downloads(
    server: ScriptedServer, tmp_path: Path
) -> None:
    """A 250-character name: its temporary file's name is cut short, the download works."""
    server.script(*RESULT, reply(200, [1, 2, 3]))
    target = tmp_path / ("r" * 245 + ".json")
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        await client.workflows.download_result(EXECUTION_ID, target)
    assert target.read_bytes() == b"[1, 2, 3]"
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "destination",
    [
        lambda folder: folder / ("r" * 300 + ".json"),
        lambda _: Path("/proc/x.json"),
        lambda _: Path("/sys/x.json"),
    ],
    ids=["name-too-long", "proc", "sys"],
)
async def test_os_errors_at_the_destination_are_download_errors(
    server: ScriptedServer, tmp_path: Path, destination: Callable[[Path], Path]
) -> None:
    """What the OS refuses at the destination: DownloadError naming it, the OS error as cause."""
    server.script(*RESULT, reply(200, [1, 2, 3]))
    target = destination(tmp_path)
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(DownloadError) as caught:
            await client.workflows.download_result(EXECUTION_ID, target)
    assert str(target) in str(caught.value)
    assert caught.value.path == target
    assert isinstance(caught.value.__cause__, OSError)
    assert leftovers(tmp_path) == []


# --- one retry policy ----------------------------------------------------------------


async def test_the_download_follows_the_clients_max_retries(
    server: ScriptedServer, tmp_path: Path
) -> None:
    """max_retries=0 and a 503 with Retry-After: one request, as get_result makes."""
    server.script(*RESULT, reply(503, text="busy", headers={"Retry-After": "2"}))
    async with TransactionLinkClient(TOKEN, base_url=server.url, max_retries=0) as client:
        async with asyncio.timeout(1):
            with pytest.raises(ServerError):
                await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
            with pytest.raises(ServerError):
                await client.workflows.get_result(EXECUTION_ID)
    assert len(server.requests_to(*RESULT)) == 2


async def test_the_download_sleeps_what_retry_after_asks(
    server: ScriptedServer,
    storage: ScriptedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Storage's 503 with Retry-After: 7 is waited out (recorded, not slept) and retried."""
    slept: list[float] = []

    async def record(seconds: float) -> None:
        slept.append(seconds)

    monkeypatch.setattr("aiotlink._retry.asyncio.sleep", record)
    redirect_to(server, storage)
    storage.script(
        *OBJECT, reply(503, text="busy", headers={"Retry-After": "7"}), whole(V1, '"v1"')
    )
    target = tmp_path / "r.json"
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        await client.workflows.download_result(EXECUTION_ID, target)
    assert slept == [7.0]
    assert target.read_bytes() == V1


async def test_a_retry_after_over_the_cap_ends_the_download_at_once(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """Retry-After: 120 from storage is over the 60 s cap: the error, no retry, no file."""
    redirect_to(server, storage)
    storage.script(*OBJECT, reply(503, text="busy", headers={"Retry-After": "120"}))
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ServerError) as caught:
            await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
    assert caught.value.retry_after == 120
    assert len(storage.requests_to(*OBJECT)) == 1
    assert os.listdir(tmp_path) == []


async def test_a_range_that_ends_early_is_never_a_success(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """A chunked 206 that ends cleanly short of its end: resumed again, the file whole."""

    async def short(request: web.Request) -> web.StreamResponse:
        asked = int(request.headers["Range"].removeprefix("bytes=").rstrip("-"))
        headers = {"ETag": '"v1"', "Content-Range": honest_range(asked, len(V1))}
        response = web.StreamResponse(status=206, headers=headers)
        response.enable_chunked_encoding()  # no Content-Length: only the range tells
        await response.prepare(request)
        await response.write(V1[asked : asked + 1000])
        return response

    redirect_to(server, storage)
    storage.script(
        *OBJECT, dropped(V1, '"v1"'), short, partial(V1, etag='"v1"', content_range=honest_range)
    )
    target = await download(server, tmp_path)
    assert target.read_bytes() == V1
    ranges = [seen.headers.get("Range") for seen in storage.requests_to(*OBJECT)]
    assert ranges == [None, f"bytes={CUT}-", f"bytes={CUT + 1000}-"]


async def test_a_weak_etag_is_never_resumed_by(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """A weak ETag does not promise the same bytes: a drop starts over, no Range."""
    redirect_to(server, storage)
    storage.script(
        *OBJECT,
        dropped(V1, 'W/"v1"'),
        partial(V2, etag='W/"v1"', content_range=honest_range),
        whole(V2, 'W/"v1"'),
    )
    target = await download(server, tmp_path)
    assert target.read_bytes() in (V1, V2)
    assert all("Range" not in seen.headers for seen in storage.requests_to(*OBJECT))


async def test_the_same_etag_answered_short_is_not_a_success(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """Dropped, then a 200 of the same ETag with no length that ends early: retried."""

    async def cut_clean(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"ETag": '"v1"'})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(V1[:CUT])
        return response

    redirect_to(server, storage)
    storage.script(*OBJECT, dropped(V1, '"v1"'), cut_clean, whole(V1, '"v1"'))
    storage_ignores_range = storage  # every answer above is a 200: storage ignores Range
    target = await download(server, tmp_path)
    assert target.read_bytes() == V1
    assert len(storage_ignores_range.requests_to(*OBJECT)) == 3


async def test_an_encoded_storage_answer_is_never_resumed(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """Storage that gzips despite Accept-Encoding: identity: a drop starts over, decoded."""
    import gzip

    packed = gzip.compress(V1)

    async def gzipped(request: web.Request) -> web.StreamResponse:
        headers = {"ETag": '"v1"', "Content-Encoding": "gzip", "Content-Length": str(len(packed))}
        response = web.StreamResponse(headers=headers)
        await response.prepare(request)
        if storage.requests_to(*OBJECT).__len__() == 1:
            await response.write(packed[: len(packed) // 2])
            assert request.transport is not None
            request.transport.close()
        else:
            await response.write(packed)
        return response

    redirect_to(server, storage)
    storage.script(*OBJECT, gzipped)
    target = await download(server, tmp_path)
    assert target.read_bytes() == V1
    assert all("Range" not in seen.headers for seen in storage.requests_to(*OBJECT))


async def test_run_passes_its_cap_to_the_download(server: ScriptedServer, tmp_path: Path) -> None:
    """run(download_to=..., max_bytes=...) caps the file as download_result does."""
    from .conftest import execution_body

    server.script("POST", "/workflows", reply(200, execution_body(status="COMPLETED")))
    server.script(
        "GET", f"/workflows/{EXECUTION_ID}", reply(200, execution_body(status="COMPLETED"))
    )
    server.script(*RESULT, reply(200, {"blob": "x" * 10_000}))
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ResultTooLargeError, match="max_bytes=1000"):
            await client.workflows.run(
                "definition", download_to=tmp_path / "r.json", max_bytes=1000
            )
        run = await client.workflows.run("definition", download_to=tmp_path / "r.json")
    assert run.result.size > 10_000


async def test_a_path_ending_in_a_separator_is_refused(
    server: ScriptedServer, tmp_path: Path
) -> None:
    """``"link/"`` names a directory, even where pathlib would drop the slash."""
    (tmp_path / "folder").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "folder")
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ValueError, match="separator"):
            await client.workflows.download_result(EXECUTION_ID, f"{link}/")
    assert link.is_symlink()
    assert server.seen == []


# --- memory and threads bounded by the client ----------------------------------------


async def test_many_downloads_share_the_clients_budget_and_a_few_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Twelve downloads at once: never more buffered than the budget, nor more threads."""
    import threading

    from aiotlink._budget import ByteBudget
    from aiotlink._download import DISK_THREADS
    from aiotlink.testing import FakeTransactionLink, GeneratedResult

    most = [0]
    real_take = ByteBudget.take
    threads: set[str] = set()
    real_pwrite = os.pwrite

    async def take(self: ByteBudget, size: int) -> None:
        await real_take(self, size)
        most[0] = max(most[0], self.used)

    def pwrite(descriptor: int, data: Any, offset: int) -> int:
        threads.add(threading.current_thread().name)
        alive = [t for t in threading.enumerate() if t.name.startswith("aiotlink-disk")]
        assert len(alive) <= DISK_THREADS
        return real_pwrite(descriptor, data, offset)

    monkeypatch.setattr(ByteBudget, "take", take)
    monkeypatch.setattr("aiotlink._download.os.pwrite", pwrite)
    budget = 512 * 1024
    result = GeneratedResult(2_000_000, seed=5)
    async with FakeTransactionLink(redirect_threshold=100_000) as fake:
        definition = fake.add_definition(statuses=["COMPLETED"], result=result)
        client = TransactionLinkClient(fake.token, base_url=fake.url, download_buffer_bytes=budget)
        async with client:
            ids = [(await client.workflows.initialise(definition)).id for _ in range(12)]
            downloads = await asyncio.gather(
                *(
                    client.workflows.download_result(i, tmp_path / f"{n}.json")
                    for n, i in enumerate(ids)
                )
            )
            assert client._sessions.download_budget.used == 0  # all given back
    assert all(d.size == result.size for d in downloads)
    assert 0 < most[0] <= budget
    assert threads  # written from the disk threads, never more alive than DISK_THREADS


async def test_budget_waits_in_turn_and_gives_back_on_cancel() -> None:
    """take() waits for room in order; a waiter cancelled leaves nothing taken."""
    from aiotlink._budget import ByteBudget

    budget = ByteBudget(100)
    await budget.take(60)
    await budget.take(40)  # fits exactly
    first = asyncio.create_task(budget.take(50))
    second = asyncio.create_task(budget.take(10))
    await asyncio.sleep(0)
    assert not first.done()
    assert not second.done()
    second.cancel()
    budget.give(60)
    await first
    assert budget.used == 90
    with pytest.raises(asyncio.CancelledError):
        await second
    budget.give(90)
    await budget.take(1000)  # larger than the whole budget: let through alone
    assert budget.used == 1000


async def test_budget_given_back_from_a_thread_wakes_the_loop_only_for_a_waiter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A disk thread's give-back wakes the loop only when a download waits for room."""
    import threading

    from aiotlink._budget import ByteBudget

    loop = asyncio.get_running_loop()
    wakes: list[object] = []
    real_call_soon_threadsafe = loop.call_soon_threadsafe

    def call_soon_threadsafe(callback: Any, *args: Any, **kwargs: Any) -> Any:
        wakes.append(callback)
        return real_call_soon_threadsafe(callback, *args, **kwargs)

    budget = ByteBudget(100)
    await budget.take(100)

    def give_from_a_thread(size: int) -> None:
        thread = threading.Thread(target=budget.give_from_any_thread, args=(loop, size))
        thread.start()
        thread.join()

    monkeypatch.setattr(loop, "call_soon_threadsafe", call_soon_threadsafe)
    give_from_a_thread(30)  # nobody waits: no wake-up
    assert wakes == []
    assert budget.used == 70
    waiter = asyncio.create_task(budget.take(60))
    await asyncio.sleep(0)
    assert not waiter.done()
    give_from_a_thread(5)  # still no room for the waiter: no wake-up either
    assert wakes == []
    give_from_a_thread(35)  # room for the waiter: the loop is woken to let it in
    give_from_a_thread(10)  # a wake-up is on its way: no second one
    await asyncio.wait_for(waiter, 5)
    assert len(wakes) == 1
    assert budget.used == 80
    assert budget.try_take(20)
    assert not budget.try_take(1)  # full: not taken
    blocked = asyncio.create_task(budget.take(10))
    await asyncio.sleep(0)
    give_from_a_thread(50)
    assert not budget.try_take(1)  # room, but a waiter comes first
    await asyncio.wait_for(blocked, 5)
    assert budget.used == 60


async def test_a_download_waiting_for_room_leaves_its_socket_unread(
    server: ScriptedServer,
    storage: ScriptedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """While the budget has no room, aiohttp reads no more of the body into its buffer.

    Then it reads on, with storage's read timeout back in force, and the file is whole.
    """
    from aiohttp.streams import StreamReader

    fed = [0]
    real_feed_data = StreamReader.feed_data

    def feed_data(self: StreamReader, data: bytes, *args: Any) -> Any:
        fed[0] += len(data)
        return real_feed_data(self, data, *args)

    monkeypatch.setattr(StreamReader, "feed_data", feed_data)
    payload = b'["' + b"x" * 3_000_000 + b'"]'
    redirect_to(server, storage)
    storage.script(*OBJECT, whole(payload, '"v1"'))
    async with TransactionLinkClient(TOKEN, base_url=server.url, timeout=5) as client:
        budget = client._sessions.download_budget
        await budget.take(budget.limit)  # all of it: the download's first write must wait
        download = asyncio.create_task(
            client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
        )
        await eventually(lambda: budget._waiting)
        waiting_since = fed[0]
        await asyncio.sleep(0.5)
        assert fed[0] == waiting_since  # nothing more read while it waits
        assert fed[0] < len(payload) // 2
        budget.give(budget.limit)
        done = await asyncio.wait_for(download, 10)
    assert done.size == len(payload)
    assert (tmp_path / "r.json").read_bytes() == payload


async def test_one_download_queues_at_most_its_cap_for_a_slow_disk(
    server: ScriptedServer,
    storage: ScriptedServer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A disk slower than the network: the download waits for its own writes to land."""
    import threading
    import time

    from aiotlink import _download

    cap = 256 * 1024
    monkeypatch.setattr(_download, "MAX_QUEUED_BYTES", cap)
    monkeypatch.setattr(_download, "MAX_BATCH_BYTES", cap)  # writes of 64 KiB
    real_write = _download._write_gathered
    lock = threading.Lock()
    queued, most = [0], [0]

    def slow_write(descriptor: int, chunks: list[bytes], offset: int) -> None:
        time.sleep(0.01)
        real_write(descriptor, chunks, offset)
        with lock:
            queued[0] -= sum(map(len, chunks))

    real_submit = _download._DiskQueue.submit

    def submit(self: Any, work: Any, *args: Any, **options: Any) -> Any:
        if getattr(work, "__func__", None) is _download._PageCacheWriter._write:  # a batch
            with lock:
                queued[0] += sum(map(len, args[0]))
                most[0] = max(most[0], queued[0])
        return real_submit(self, work, *args, **options)

    monkeypatch.setattr(_download, "_write_gathered", slow_write)
    monkeypatch.setattr(_download._DiskQueue, "submit", submit)
    payload = b'["' + b"x" * 3_000_000 + b'"]'
    redirect_to(server, storage)
    storage.script(*OBJECT, whole(payload, '"v1"'))
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        done = await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
        assert client._sessions.download_budget.used == 0
    assert done.size == len(payload)
    assert (tmp_path / "r.json").read_bytes() == payload
    # The cap, and one socket read (256 KiB at most) that may go over it as handed over.
    assert 0 < most[0] <= cap + 256 * 1024


async def test_socket_reads_shrink_as_downloads_share_a_turn_of_the_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every socket with data is read in one turn: the more downloads, the smaller reads.

    LOOP_TURN_READ_BYTES is shared among the client's downloads (64 KiB a read at
    least, asyncio's 256 KiB at most), set on each storage connection's transport.
    """
    from aiotlink import _download
    from aiotlink.testing import FakeTransactionLink, GeneratedResult

    seen: list[tuple[int, int]] = []
    real_limit = _download._limit_socket_reads

    def limit(response: Any, size: int) -> None:
        real_limit(response, size)
        connection = response.connection
        if connection is not None:  # the API's answer, a redirect, is read whole already
            seen.append((size, connection.transport.max_size))

    monkeypatch.setattr(_download, "_limit_socket_reads", limit)
    monkeypatch.setattr(_download, "LOOP_TURN_READ_BYTES", 3 * 100 * 1024)
    result = GeneratedResult(2_000_000, seed=3)
    async with FakeTransactionLink(redirect_threshold=100_000) as fake:
        definition = fake.add_definition(statuses=["COMPLETED"], result=result)
        async with TransactionLinkClient(fake.token, base_url=fake.url) as client:
            ids = [(await client.workflows.initialise(definition)).id for _ in range(3)]
            alone = await client.workflows.download_result(ids[0], tmp_path / "alone.json")
            together = await asyncio.gather(
                *(client.workflows.download_result(i, tmp_path / f"{i}.json") for i in ids)
            )
    assert alone.size == result.size
    assert all(d.size == result.size for d in together)
    assert seen[0] == (256 * 1024, 256 * 1024)  # alone: asyncio's largest read
    assert sorted(seen[1:]) == [(100 * 1024, 100 * 1024)] * 3  # three share the turn


def test_a_transport_without_a_read_size_is_left_alone() -> None:
    """uvloop's transports read with their own size: nothing is set, nothing raised."""
    from types import SimpleNamespace

    from aiotlink._download import _limit_socket_reads

    transport = object()
    response: Any = SimpleNamespace(connection=SimpleNamespace(transport=transport))
    _limit_socket_reads(response, 64 * 1024)
    assert not hasattr(transport, "max_size")
    released: Any = SimpleNamespace(connection=None)  # a body read whole: no connection
    _limit_socket_reads(released, 64 * 1024)


async def test_a_cancelled_download_gives_back_what_it_gathered(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """Bytes taken from the budget for a batch never written come back on cancel."""
    arrived = asyncio.Event()
    redirect_to(server, storage)
    # Less than one write's batch, of 10 MiB announced.
    storage.script(*OBJECT, stall_mid_body(b'["' + b"x" * 300_000, 10 * 2**20, arrived))
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        budget = client._sessions.download_budget
        download = asyncio.create_task(
            client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
        )
        await asyncio.wait_for(arrived.wait(), 10)
        await eventually(lambda: budget.used >= 300_000)  # gathered, counted
        download.cancel()
        with pytest.raises(asyncio.CancelledError):
            await download
        await eventually(lambda: budget.used == 0)
    assert leftovers(tmp_path) == []


async def test_direct_io_is_asked_for_and_checked(server: ScriptedServer, tmp_path: Path) -> None:
    """direct_io must be True, False or None; download_buffer_bytes a whole number."""
    not_a_bool: Any = "yes"  # wrong on purpose: truthy, and refused
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(TypeError, match="direct_io"):
            await client.workflows.download_result(
                EXECUTION_ID,
                tmp_path / "r.json",
                direct_io=not_a_bool,
            )
    with pytest.raises(ValueError, match="download_buffer_bytes"):
        TransactionLinkClient(TOKEN, download_buffer_bytes=0)
    assert server.seen == []


async def test_direct_downloads_reserve_their_buffers_at_once_and_never_deadlock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nine direct downloads on a 32 MiB budget, and one on 6 MiB: all finish.

    A direct download that took its 4 MiB buffers one by one could wait for its second
    on others that wait for theirs, with the whole budget held.
    """
    from aiotlink._download import DIRECT_BUFFER_BYTES
    from aiotlink.testing import FakeTransactionLink, GeneratedResult

    assert DIRECT_BUFFER_BYTES == 4 * 2**20  # the real size: the deadlock needs it
    monkeypatch.setattr("aiotlink._download.DIRECT_IO", True)
    result = GeneratedResult(10_000_000, seed=9)
    async with FakeTransactionLink(redirect_threshold=100_000) as fake:
        definition = fake.add_definition(statuses=["COMPLETED"], result=result)
        for budget, count in ((32 * 2**20, 9), (6 * 2**20, 1)):
            client = TransactionLinkClient(
                fake.token, base_url=fake.url, download_buffer_bytes=budget
            )
            async with client, asyncio.timeout(60):
                ids = [(await client.workflows.initialise(definition)).id for _ in range(count)]
                downloads = await asyncio.gather(
                    *(
                        client.workflows.download_result(i, tmp_path / f"{budget}-{n}.json")
                        for n, i in enumerate(ids)
                    )
                )
                assert client._sessions.download_budget.used == 0
            assert all(d.size == result.size for d in downloads)


def test_writes_go_on_while_another_files_fsync_runs() -> None:
    """The fsync before a rename runs on threads of its own: no write waits behind it."""
    import threading

    from aiotlink._download import _DiskPool, _DiskQueue

    writes, syncs = _DiskPool(max_threads=1), _DiskPool(max_threads=1)
    syncing, release = threading.Event(), threading.Event()

    def slow_fsync() -> str:
        syncing.set()
        release.wait(10)
        return "synced"

    ending, writing = _DiskQueue(writes, syncs), _DiskQueue(writes, syncs)
    synced = ending.submit(slow_fsync, sync=True)
    assert syncing.wait(10)
    assert writing.submit(lambda: "written").result(10) == "written"  # not held up
    assert not synced.done()
    release.set()
    assert synced.result(10) == "synced"
    after = ending.submit(lambda: "in order")  # the same file's next work: after its sync
    assert after.result(10) == "in order"


def test_a_failing_last_action_keeps_the_disk_thread() -> None:
    """Closing that fails after a stop mid-write: logged, and the pool's thread lives on."""
    import threading

    from aiotlink._download import _DiskPool, _DiskQueue

    pool = _DiskPool(max_threads=1)
    stuck, other = _DiskQueue(pool), _DiskQueue(pool)
    running, release = threading.Event(), threading.Event()

    def slow() -> None:
        running.set()
        release.wait(10)

    def failing_close() -> None:
        raise OSError(5, "Input/output error")

    work = stuck.submit(slow)
    assert running.wait(10)
    stuck.stop(failing_close)
    release.set()
    assert work.result(10) is None
    assert other.submit(lambda: "ran").result(10) == "ran"


def test_a_child_forked_after_disk_work_gets_threads_of_its_own() -> None:
    """A process forked while a disk thread idles starts its pool afresh: work runs."""
    from aiotlink._download import _DiskQueue

    _DiskQueue().submit(lambda: None).result(10)  # a disk thread now idles
    child = os.fork()
    # The parent checks what the child did through the child's exit status.
    if child == 0:  # pragma: no cover -- the forked child exits by os._exit, unrecorded
        try:
            _DiskQueue().submit(lambda: None).result(5)
        except BaseException:
            os._exit(1)
        os._exit(0)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_gathered_chunks_written_whole_after_short_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pwrite that writes less than asked: the rest still lands where it belongs."""
    from aiotlink import _download

    real_pwrite = os.pwrite
    calls: list[tuple[int, int]] = []

    def short_pwrite(descriptor: int, data: memoryview, offset: int) -> int:
        calls.append((len(data), offset))
        # At most 3 bytes a call, as a signal or a full pipe might leave it.
        return real_pwrite(descriptor, data[:3], offset)

    chunks = [b"abcde", b"fghijkl", b"mnop"]
    path = tmp_path / "gathered"
    path.write_bytes(b"0123")
    descriptor = os.open(path, os.O_WRONLY)
    monkeypatch.setattr(_download.os, "pwrite", short_pwrite)
    try:
        _download._write_gathered(descriptor, chunks, 4)
    finally:
        os.close(descriptor)
    assert path.read_bytes() == b"0123" + b"".join(chunks)
    # Chunk by chunk, each one's rest after its short write, never a chunk skipped.
    assert calls == [(5, 4), (2, 7), (7, 9), (4, 12), (1, 15), (4, 16), (1, 19)]


async def test_downloads_past_the_budgets_streams_wait_their_turn(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """A budget of 1 MiB lets two downloads stream at once (STREAM_SHARE_BYTES).

    The others wait before they ask the API for the URL: no request, no temporary file,
    no connection; a waiting download cancelled leaves nothing behind, and the rest
    follow in turn as the first finish.
    """
    from aiotlink._budget import STREAM_SHARE_BYTES

    budget = 1024 * 1024
    assert budget // STREAM_SHARE_BYTES == 2
    in_flight, most = [0], [0]
    release = asyncio.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        in_flight[0] += 1
        most[0] = max(most[0], in_flight[0])
        try:
            await release.wait()
            return web.Response(body=V1, headers={"ETag": '"v1"'})
        finally:
            in_flight[0] -= 1

    redirect_to(server, storage)
    storage.script(*OBJECT, held)
    client = TransactionLinkClient(TOKEN, base_url=server.url, download_buffer_bytes=budget)
    async with client:
        downloads = [
            asyncio.create_task(
                client.workflows.download_result(EXECUTION_ID, tmp_path / f"{n}.json")
            )
            for n in range(5)
        ]
        await eventually(lambda: in_flight[0] == 2)
        await asyncio.sleep(0.1)  # time for a third to start, were it let
        assert len(server.requests_to(*RESULT)) == 2
        assert len(leftovers(tmp_path)) == 2
        downloads[2].cancel()  # while it waits its turn
        release.set()
        finished = await asyncio.gather(*downloads, return_exceptions=True)
    assert isinstance(finished[2], asyncio.CancelledError)
    assert [d.size for d in finished if not isinstance(d, BaseException)] == [len(V1)] * 4
    assert most[0] == 2
    assert len(storage.requests_to(*OBJECT)) == len(server.requests_to(*RESULT)) == 4
    assert leftovers(tmp_path) == []
    assert not (tmp_path / "2.json").exists()


async def test_a_failed_download_gives_its_turn_to_the_next(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """A budget with one turn: storage fails the first download, the next still runs."""
    redirect_to(server, storage)
    storage.script(*OBJECT, reply(503, text="busy"), whole(V1, '"v1"'))
    client = TransactionLinkClient(
        TOKEN, base_url=server.url, max_retries=0, download_buffer_bytes=64 * 1024
    )
    async with client, asyncio.timeout(10):
        first, second = await asyncio.gather(
            client.workflows.download_result(EXECUTION_ID, tmp_path / "first.json"),
            client.workflows.download_result(EXECUTION_ID, tmp_path / "second.json"),
            return_exceptions=True,
        )
    assert isinstance(first, ServerError)
    assert not isinstance(second, BaseException)
    assert (tmp_path / "second.json").read_bytes() == V1
    assert not (tmp_path / "first.json").exists()
    assert leftovers(tmp_path) == []
