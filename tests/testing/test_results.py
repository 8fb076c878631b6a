"""Results: inline JSON, generated documents, and the redirect to storage."""

from __future__ import annotations

import hashlib
import inspect
import json
import tracemalloc
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import aiohttp
import pytest

from aiotlink.testing import FakeTransactionLink, GeneratedResult
from aiotlink.testing._results import CHUNK_BYTES, InlineResult

from .helpers import auth, error_codes, exact, find, initialise


async def result_answer(
    session: aiohttp.ClientSession, fake: FakeTransactionLink, execution_id: str
) -> tuple[int, bytes]:
    """GET the result of an execution; return the status and the raw body."""
    async with session.get(
        f"{fake.url}/workflows/{execution_id}/result", headers=auth(fake.token)
    ) as response:
        return response.status, await response.read()


async def completed(session: aiohttp.ClientSession, fake: FakeTransactionLink, result: Any) -> str:
    """Initialise an execution that is COMPLETED at once, with ``result``; return its id."""
    definition_id = fake.add_definition(statuses=["COMPLETED"], result=result)
    return str((await initialise(session, fake, definition_id))["id"])


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        ({"a": [1, 2], "b": {"c": "é"}}, '{"a":[1,2],"b":{"c":"é"}}'.encode()),
        ([1, "two"], b'[1,"two"]'),
        ("text", b'"text"'),
        (None, b"null"),
        (0, b"0"),
    ],
)
async def test_an_inline_result_is_any_json_serialised_compactly(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, value: Any, wire: bytes
) -> None:
    """A small result is answered inline, as compact UTF-8 JSON, byte for byte."""
    status, body = await result_answer(session, fake, await completed(session, fake, value))
    assert status == 200
    assert body == wire


async def test_the_default_result_echoes_the_execution(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Without a result, the result echoes the execution's id, definition and parameters."""
    definition_id = fake.add_definition(statuses=["COMPLETED"])
    execution = await initialise(session, fake, definition_id, parameters={"x": 1})
    status, body = await result_answer(session, fake, execution["id"])
    assert status == 200
    assert json.loads(body) == {
        "executionId": execution["id"],
        "workflowDefinitionId": definition_id,
        "parameters": {"x": 1},
    }


@pytest.mark.parametrize("final", ["RUNNING", "AWAITING", "FAILED", "TIMEOUT", "TERMINATED"])
async def test_there_is_no_result_unless_completed(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, final: str
) -> None:
    """The result answers 404 WORKFLOW_RESULT_NOT_FOUND before COMPLETED and after a failure."""
    definition_id = fake.add_definition(statuses=[final], result={"a": 1})
    execution = await initialise(session, fake, definition_id)
    async with session.get(
        f"{fake.url}/workflows/{execution['id']}/result", headers=auth(fake.token)
    ) as response:
        assert response.status == 404
        assert await error_codes(response) == ["WORKFLOW_RESULT_NOT_FOUND"]


async def test_the_result_appears_once_the_walk_completes(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """The result is 404 while running and 200 after the find that shows COMPLETED."""
    definition_id = fake.add_definition(statuses=["RUNNING", "COMPLETED"], result={"a": 1})
    execution = await initialise(session, fake, definition_id)
    assert (await result_answer(session, fake, execution["id"]))[0] == 404
    await find(session, fake, execution["id"])
    assert await result_answer(session, fake, execution["id"]) == (200, b'{"a":1}')


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "1234", "{0b5e0c4e-8b8e-4e2f-9c0e-1c2d3e4f5a6b}"])
async def test_the_result_id_must_be_a_uuid(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, bad_id: str
) -> None:
    """A malformed execution id on the result endpoint answers 400 INVALID_WORKFLOW_ID."""
    async with session.get(
        f"{fake.url}/workflows/{bad_id}/result", headers=auth(fake.token)
    ) as response:
        assert response.status == 400
        assert await error_codes(response) == ["INVALID_WORKFLOW_ID"]


async def test_a_result_at_the_threshold_is_inline(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A result of exactly redirect_threshold bytes (10,000 here) is answered inline."""
    generated = GeneratedResult(10_000, seed=4)
    status, body = await result_answer(session, fake, await completed(session, fake, generated))
    assert status == 200
    assert hashlib.sha256(body).hexdigest() == generated.sha256()


async def test_a_larger_result_redirects_to_another_origin(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A result over the threshold answers a pre-signed URL on the storage port, S3 style."""
    generated = GeneratedResult(10_001)
    status, body = await result_answer(session, fake, await completed(session, fake, generated))
    assert status == 200
    url = json.loads(body)["$redirect"]
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == fake.storage_url != fake.url
    assert parts.hostname == "127.0.0.1"
    names = [name for name, _ in parse_qsl(parts.query)]
    assert names == [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
    ]
    query = dict(parse_qsl(parts.query))
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert query["X-Amz-Expires"] == "300"
    assert query["X-Amz-SignedHeaders"] == "host"
    assert len(query["X-Amz-Signature"]) == 64
    assert "X-Amz-Credential=AKIAFAKETRANSACTIONLINK%2F" in parts.query
    assert query["X-Amz-Credential"].endswith("/s3/aws4_request")


async def test_a_redirected_result_downloads_byte_exact(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Fetching the $redirect URL as given, without credentials, yields the exact bytes."""
    generated = GeneratedResult(3 * CHUNK_BYTES + 12_345, seed=9)
    _, body = await result_answer(session, fake, await completed(session, fake, generated))
    async with session.get(exact(json.loads(body)["$redirect"])) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(generated.size_bytes)
        assert response.headers["ETag"] == generated.etag
        data = await response.read()
    assert hashlib.sha256(data).hexdigest() == generated.sha256()
    json.loads(data)


async def test_each_result_call_signs_a_fresh_url(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, clock: Any
) -> None:
    """Two result calls a second apart give two URLs to the same object, with one ETag."""
    execution_id = await completed(session, fake, GeneratedResult(20_000))
    urls = []
    for _ in range(2):
        urls.append(json.loads((await result_answer(session, fake, execution_id))[1])["$redirect"])
        clock.advance(1)
    assert urls[0] != urls[1]
    assert urls[0].split("?")[0] == urls[1].split("?")[0]
    etags = set()
    for url in urls:
        async with session.get(exact(url)) as response:
            etags.add(response.headers["ETag"])
    assert len(etags) == 1


async def test_a_big_result_streams_without_being_held(session: aiohttp.ClientSession) -> None:
    """A 64 MiB result flows through the fake with memory bounded by a few chunks."""
    generated = GeneratedResult(64 * CHUNK_BYTES, seed=1)
    expected = generated.sha256()
    async with FakeTransactionLink() as fake:
        execution_id = await completed(session, fake, generated)
        _, body = await result_answer(session, fake, execution_id)
        digest = hashlib.sha256()
        tracemalloc.start()
        try:
            async with session.get(exact(json.loads(body)["$redirect"])) as response:
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    digest.update(chunk)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert digest.hexdigest() == expected
    assert peak < 16 * CHUNK_BYTES


def test_a_generated_result_is_exact_valid_and_deterministic() -> None:
    """A GeneratedResult is valid JSON of exactly its size, the same for the same seed."""
    for size in (20, 21, 1000, CHUNK_BYTES + 19, 2 * CHUNK_BYTES + 3):
        document = b"".join(GeneratedResult(size).iter_bytes())
        assert len(document) == size
        assert json.loads(document)["seed"] == 0
        assert document == b"".join(GeneratedResult(size).iter_bytes())
    assert GeneratedResult(1000, seed=1).sha256() != GeneratedResult(1000, seed=2).sha256()
    assert GeneratedResult(1000, seed=1).etag != GeneratedResult(1000, seed=2).etag


def test_a_generated_result_is_produced_by_a_generator_in_bounded_chunks() -> None:
    """iter_bytes is a lazy generator whose chunks stay near 1 MiB, wherever a range starts."""
    generated = GeneratedResult(5 * CHUNK_BYTES + 7)
    assert inspect.isgenerator(generated.iter_bytes(12_345))
    sizes = [len(chunk) for chunk in generated.iter_bytes(12_345)]
    assert max(sizes) <= CHUNK_BYTES + 32
    assert sum(sizes) == generated.size_bytes - 12_345


def test_generated_ranges_match_the_whole_document() -> None:
    """Any byte range of a GeneratedResult equals that slice of the whole document."""
    generated = GeneratedResult(2 * CHUNK_BYTES + 100, seed=5)
    document = b"".join(generated.iter_bytes())
    size = generated.size_bytes
    for start, stop in [
        (0, 0),
        (0, 5),
        (3, 40),
        (CHUNK_BYTES - 5, CHUNK_BYTES + 30),
        (size - 10, size),
        (17, size),
        (size, size),
    ]:
        assert b"".join(generated.iter_bytes(start, stop)) == document[start:stop]
    segments = {
        document[index : index + 16] for index in range(18, size - CHUNK_BYTES, CHUNK_BYTES)
    }
    assert len(segments) == 2  # each segment differs from the others


def test_generated_results_refuse_bad_arguments() -> None:
    """Too small a size, a negative seed, or a range outside the document raise ValueError."""
    with pytest.raises(ValueError, match="at least 20"):
        GeneratedResult(19)
    with pytest.raises(ValueError, match="seed"):
        GeneratedResult(100, seed=-1)
    with pytest.raises(ValueError, match="outside"):
        list(GeneratedResult(100).iter_bytes(50, 101))
    with pytest.raises(ValueError, match="outside"):
        list(InlineResult(b"{}").iter_bytes(2, 1))


def test_an_inline_result_reads_by_range() -> None:
    """An inline result serves ranges and has an MD5 ETag, and its repr shows only its size."""
    inline = InlineResult(b'{"a":1}')
    assert b"".join(inline.iter_bytes(2, 5)) == b'a":'
    digest = hashlib.md5(b'{"a":1}', usedforsecurity=False).hexdigest()
    assert inline.etag == f'"{digest}"'
    assert repr(inline) == "InlineResult(data=<7 bytes>)"
