"""stream_result: a result's raw bytes as an async iterator, bounded, resumed where it can be."""

from __future__ import annotations

import asyncio
import hashlib
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from aiohttp import web
from fastapi import FastAPI, HTTPException
from fastapi.responses import StreamingResponse

from aiotlink import (
    DownloadError,
    NotFoundError,
    ResponseValidationError,
    ResultNotReadyError,
    ResultTooLargeError,
    TransactionLinkClient,
)
from aiotlink._workflows import STREAM_TASK_NAME
from aiotlink.testing import FakeTransactionLink, GeneratedResult

from .conftest import EXECUTION_ID, TOKEN
from .servers import ScriptedServer, eventually, reply, stall_mid_body
from .test_download import completed
from .test_download_trust import (
    CUT,
    OBJECT,
    RESULT,
    V1,
    V2,
    dropped,
    honest_range,
    partial,
    redirect_to,
    whole,
)

BIG = GeneratedResult(3_000_000, seed=11)


@pytest.fixture
async def client(fake: FakeTransactionLink) -> AsyncIterator[TransactionLinkClient]:
    """A client of the fake (conftest: a small redirect threshold), retrying at once."""
    async with TransactionLinkClient(fake.token, base_url=fake.url, retry_backoff=False) as client:
        yield client


async def collect(chunks: AsyncIterator[bytes], sizes: list[int] | None = None) -> bytes:
    """Every chunk joined; their sizes appended to ``sizes``."""
    body = bytearray()
    async for chunk in chunks:
        assert isinstance(chunk, bytes)
        if sizes is not None:
            sizes.append(len(chunk))
        body += chunk
    return bytes(body)


async def stream_whole(server: ScriptedServer) -> bytes:
    """All that stream_result of the scripted execution yields, retrying at once."""
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        return await collect(client.workflows.stream_result(EXECUTION_ID))


async def stream_scripted(server: ScriptedServer, **options: Any) -> tuple[bytes, BaseException]:
    """What stream_result of the scripted execution yielded before the error it raised."""
    body = bytearray()
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        try:
            async for chunk in client.workflows.stream_result(EXECUTION_ID, **options):
                body += chunk
        except Exception as error:
            return bytes(body), error
    raise AssertionError("stream_result raised nothing")


# --- whole results -------------------------------------------------------------------


async def test_an_inline_result_streams_byte_exact(
    fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A small result comes as the API sent it: its raw JSON bytes."""
    execution_id = await completed(fake, client, {"decision": "APPROVED", "score": 0.97})
    body = await collect(client.workflows.stream_result(execution_id))
    assert body == b'{"decision":"APPROVED","score":0.97}'


async def test_a_redirected_result_streams_from_storage_in_chunks_of_at_most_chunk_size(
    fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A $redirect is followed without credentials; no chunk is over chunk_size."""
    execution_id = await completed(fake, client, BIG)
    sizes: list[int] = []
    body = await collect(client.workflows.stream_result(execution_id, chunk_size=10_000), sizes)
    assert hashlib.sha256(body).hexdigest() == BIG.sha256()
    assert max(sizes) == 10_000
    assert sum(sizes) == BIG.size
    (storage_request,) = fake.requests_for("storage")
    assert "Authorization" not in storage_request.headers


async def test_no_result_yet_raises_on_the_first_chunk(
    fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Before the execution completes: ResultNotReadyError (a NotFoundError) at once."""
    definition = fake.add_definition(statuses=["RUNNING", "COMPLETED"])
    execution = await client.workflows.initialise(definition)
    with pytest.raises(ResultNotReadyError):
        await collect(client.workflows.stream_result(execution.id))
    with pytest.raises(NotFoundError):
        await collect(client.workflows.stream_result(execution.id))


@pytest.mark.parametrize(
    ("arguments", "name"),
    [
        (("not-a-uuid",), "execution_id"),
        ((EXECUTION_ID,), "chunk_size"),
        ((EXECUTION_ID,), "max_bytes"),
    ],
)
async def test_bad_arguments_raise_when_called_before_any_request(
    server: ScriptedServer, arguments: tuple[Any, ...], name: str
) -> None:
    """Arguments are checked at the call itself, not at the first chunk."""
    options: dict[str, Any] = {"chunk_size": 0} if name == "chunk_size" else {}
    if name == "max_bytes":
        options = {"max_bytes": -1}
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ValueError, match=name):
            client.workflows.stream_result(*arguments, **options)
    assert server.seen == []


# --- resuming, and where it cannot ---------------------------------------------------


async def test_a_dropped_body_resumes_with_range_on_the_same_etag(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """Storage cut mid-body that honours Range with the ETag: the stream goes on, exact."""
    redirect_to(server, storage)
    resumed = partial(V1, etag='"v1"', content_range=honest_range)
    storage.script(*OBJECT, dropped(V1, '"v1"'), resumed)
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        body = await collect(client.workflows.stream_result(EXECUTION_ID, chunk_size=4096))
    assert body == V1
    seen = storage.requests_to(*OBJECT)
    assert [request.headers.get("Range") for request in seen] == [None, f"bytes={CUT}-"]
    assert seen[1].headers["If-Range"] == '"v1"'


async def test_the_same_object_sent_whole_again_skips_what_was_yielded(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """Storage that ignores Range but keeps its ETag: the bytes already yielded are skipped."""
    redirect_to(server, storage)
    storage.script(*OBJECT, dropped(V1, '"v1"'), whole(V1, '"v1"'))
    assert await stream_whole(server) == V1


async def test_a_lying_etag_on_resume_raises_download_error_without_splicing(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """A resume answered from another object: DownloadError; what came is V1's start only."""
    redirect_to(server, storage)
    storage.script(
        *OBJECT,
        dropped(V1, '"v1"'),
        partial(V2, etag='"v2"', content_range=honest_range),
        whole(V2, '"v2"'),
    )
    body, error = await stream_scripted(server)
    assert isinstance(error, DownloadError)
    assert error.path is None
    assert "ETag changed" in str(error)
    assert body  # some was yielded: that is why it cannot start over
    assert V1.startswith(body)
    assert len(storage.requests_to(*OBJECT)) == 2  # no third read: it cannot help


async def test_without_an_etag_a_dropped_stream_raises_download_error(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """Storage that names no ETag cannot be resumed once bytes were yielded."""
    redirect_to(server, storage)
    storage.script(*OBJECT, dropped(V1, None), whole(V1, None))
    body, error = await stream_scripted(server)
    assert isinstance(error, DownloadError)
    assert "cannot be resumed" in str(error)
    assert V1.startswith(body)
    assert all("Range" not in seen.headers for seen in storage.requests_to(*OBJECT))


async def test_an_inline_answer_cut_short_after_yielding_raises_download_error(
    server: ScriptedServer,
) -> None:
    """The API promises no ranges: an inline body cut after a chunk went out cannot go on."""
    server.script(*RESULT, dropped(V1, '"v1"'), whole(V1, '"v1"'))
    body, error = await stream_scripted(server)
    assert isinstance(error, DownloadError)
    assert V1.startswith(body)
    assert len(body) >= 64 * 1024


async def test_a_drop_before_any_byte_was_yielded_is_simply_retried(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """Nothing handed on yet: an answer without an ETag starts over like a download."""
    redirect_to(server, storage)
    storage.script(*OBJECT, dropped(V1, None, after=0), whole(V1, None))
    assert await stream_whole(server) == V1


async def test_an_expired_url_is_refreshed(
    fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A 403 from storage asks the API for a new URL, and the stream goes on from there."""
    execution_id = await completed(fake, client, BIG)
    fake.drop_next("storage", after_bytes=500_000)
    fake.fail_next("storage", 403)
    body = await collect(client.workflows.stream_result(execution_id))
    assert hashlib.sha256(body).hexdigest() == BIG.sha256()
    assert len(fake.requests_for("result")) == 2


async def test_an_endless_body_stops_at_max_bytes(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """Storage that never ends its body: ResultTooLargeError once past max_bytes."""
    sent = 0
    hung_up = asyncio.Event()

    async def endless(request: web.Request) -> web.StreamResponse:
        nonlocal sent
        response = web.StreamResponse(headers={"ETag": '"forever"'})
        response.enable_chunked_encoding()
        await response.prepare(request)
        await response.write(b'["')
        try:
            while True:
                await response.write(b"x" * 8192)
                sent += 8192
        finally:
            hung_up.set()

    redirect_to(server, storage)
    storage.script(*OBJECT, endless)
    body, error = await stream_scripted(server, max_bytes=200_000, chunk_size=8192)
    assert isinstance(error, ResultTooLargeError)
    assert "max_bytes=200000" in str(error)
    assert len(body) <= 200_000
    # It stopped reading and hung up; it did not drain the endless body. What the
    # server got to send is what the kernel buffers of the connection took (Linux may
    # grow a loopback receive buffer to net.ipv4.tcp_rmem's maximum, 32 MiB here).
    await asyncio.wait_for(hung_up.wait(), 10)
    assert sent < 64 * 2**20


async def test_an_announced_length_over_max_bytes_yields_nothing(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """A Content-Length over max_bytes is refused before any byte is yielded."""
    redirect_to(server, storage)
    storage.script(*OBJECT, whole(V1, '"v1"'))
    body, error = await stream_scripted(server, max_bytes=1000)
    assert isinstance(error, ResultTooLargeError)
    assert error.size == len(V1)
    assert body == b""


async def test_an_empty_result_is_refused(server: ScriptedServer) -> None:
    """A result is a JSON document: an empty body raises ResponseValidationError."""
    server.script(*RESULT, reply(200, text=""))
    _, error = await stream_scripted(server)
    assert isinstance(error, ResponseValidationError)


# --- stopping early ------------------------------------------------------------------


def downloads() -> list[asyncio.Task[Any]]:
    """The tasks of stream_result's downloads still running."""
    return [task for task in asyncio.all_tasks() if task.get_name() == STREAM_TASK_NAME]


async def test_leaving_the_loop_early_stops_the_download(
    fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """break (then aclose) cancels the download's task; nothing is left running."""
    execution_id = await completed(fake, client, BIG)
    chunks = client.workflows.stream_result(execution_id, chunk_size=1000)
    first = await anext(chunks)
    assert first.startswith(b"{")
    assert len(downloads()) == 1
    await chunks.aclose()
    assert downloads() == []


async def test_cancelling_the_reader_cancels_the_download(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """A reader cancelled while it waits for a chunk leaves no task and no warning."""
    reached = asyncio.Event()
    redirect_to(server, storage)
    storage.script(*OBJECT, stall_mid_body(V1[:CUT], len(V1), reached))
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        got = bytearray()

        async def read() -> None:
            async for chunk in client.workflows.stream_result(EXECUTION_ID):
                got.extend(chunk)

        reader = asyncio.create_task(read())
        await reached.wait()
        await eventually(lambda: len(got) == CUT)  # it has all that came, and waits
        reader.cancel()
        assert len(downloads()) == 1
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert downloads() == []
    assert bytes(got) == V1[:CUT]


# --- memory --------------------------------------------------------------------------


async def test_memory_stays_bounded_by_a_few_chunks_for_a_slow_reader(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """A 24 MiB result read slowly holds well under a MiB besides: the reader sets the pace."""
    size = 24 * 2**20
    payload = memoryview(b"[" + b"7" * (size - 2) + b"]")

    async def body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(size), "ETag": '"m"'})
        await response.prepare(request)
        for start in range(0, size, 65_536):
            await response.write(payload[start : start + 65_536])
        return response

    redirect_to(server, storage)
    storage.script(*OBJECT, body)
    digest = hashlib.sha256()
    total = 0
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        tracemalloc.start()
        try:
            baseline, _ = tracemalloc.get_traced_memory()
            async for chunk in client.workflows.stream_result(EXECUTION_ID, chunk_size=16_384):
                assert len(chunk) <= 16_384
                digest.update(chunk)
                total += len(chunk)
                for _ in range(4):  # a slow reader: the network could run far ahead
                    await asyncio.sleep(0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert total == size
    assert digest.digest() == hashlib.sha256(payload).digest()
    assert peak - baseline < 2 * 2**20, peak - baseline  # the whole would be 24 MiB


# --- through a web framework ---------------------------------------------------------


async def test_a_fastapi_streaming_response_serves_the_result(
    fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """StreamingResponse(stream_result(...)) serves the exact bytes through ASGI."""
    app = FastAPI()

    @app.get("/results/{execution_id}")
    async def result(execution_id: str) -> StreamingResponse:
        chunks = client.workflows.stream_result(execution_id)
        try:
            first = await anext(chunks)  # errors become statuses before the answer starts
        except NotFoundError as error:
            raise HTTPException(404, "no result") from error

        async def body() -> AsyncIterator[bytes]:
            yield first
            async for chunk in chunks:
                yield chunk

        return StreamingResponse(body(), media_type="application/json")

    execution_id = await completed(fake, client, BIG)
    running = fake.add_definition(statuses=["RUNNING", "COMPLETED"])
    pending = (await client.workflows.initialise(running)).id
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        answer = await http.get(f"/results/{execution_id}")
        not_yet = await http.get(f"/results/{pending}")
    assert answer.status_code == 200
    assert answer.headers["content-type"] == "application/json"
    assert hashlib.sha256(answer.content).hexdigest() == BIG.sha256()
    assert not_yet.status_code == 404


async def test_a_chunk_size_past_the_cap_is_refused_before_any_request(
    server: ScriptedServer,
) -> None:
    """A huge chunk_size (once an OverflowError inside aiohttp) is a ValueError at the call."""
    from aiotlink._workflows import MAX_STREAM_CHUNK_BYTES

    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        for size in (MAX_STREAM_CHUNK_BYTES + 1, 2**63, 2**70):
            with pytest.raises(ValueError, match="chunk_size must be at most"):
                client.workflows.stream_result(EXECUTION_ID, chunk_size=size)
        # The cap itself is allowed.
        client.workflows.stream_result(EXECUTION_ID, chunk_size=MAX_STREAM_CHUNK_BYTES)
    assert server.seen == []


def refuse_range(payload: bytes) -> Any:
    """A 416 for any Range, as storage answers one it will not serve."""

    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(
            status=416,
            text="<Error><Code>InvalidRange</Code></Error>",
            headers={"Content-Range": f"bytes */{len(payload)}"},
        )

    return handler


async def test_a_refused_resume_after_yielding_raises_download_error(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """A 416 for the Range of a resume: DownloadError (bytes yielded), not a bare APIError."""
    redirect_to(server, storage)
    storage.script(*OBJECT, dropped(V1, '"v1"'), refuse_range(V1), whole(V1, '"v1"'))
    body, error = await stream_scripted(server)
    assert isinstance(error, DownloadError), repr(error)
    assert "416" in str(error)
    assert V1.startswith(body)


async def test_a_refused_resume_starts_a_download_over(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Any
) -> None:
    """download_result, given a 416 for its resume, takes the object whole again."""
    redirect_to(server, storage)
    storage.script(*OBJECT, dropped(V1, '"v1"'), refuse_range(V1), whole(V1, '"v1"'))
    target = tmp_path / "r.json"
    async with TransactionLinkClient(TOKEN, base_url=server.url, retry_backoff=False) as client:
        await client.workflows.download_result(EXECUTION_ID, target)
    assert target.read_bytes() == V1
    ranges = [seen.headers.get("Range") for seen in storage.requests_to(*OBJECT)]
    assert ranges == [None, f"bytes={CUT}-", None]


async def test_a_stream_left_after_its_download_failed_logs_nothing(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """The reader leaves after the download failed: no "exception never retrieved"."""
    import gc

    redirect_to(server, storage)
    storage.script(*OBJECT, dropped(V1, '"v1"', after=100))  # two pieces, then gone
    loop = asyncio.get_running_loop()
    reported: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        async with TransactionLinkClient(
            TOKEN, base_url=server.url, retry_backoff=False, max_retries=0
        ) as client:
            chunks = client.workflows.stream_result(EXECUTION_ID, chunk_size=50)
            await anext(chunks)
            await anext(chunks)
            await eventually(lambda: downloads() == [])  # failed, nobody has heard
            await chunks.aclose()
            del chunks
            gc.collect()
            await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
    assert reported == []
