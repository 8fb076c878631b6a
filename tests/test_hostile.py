"""Hostile and broken servers: the loop never freezes, no error carries a secret.

Every read is bounded and every failure is one of our errors. Each test talks to a real
server on 127.0.0.1 that answers as a broken proxy or an attacker would: empty answers,
echoed credentials, endless or deeply nested bodies, absurd ``Retry-After`` hints,
malformed HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import threading
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from aiotlink import (
    APIConnectionError,
    BadRequestError,
    ClientClosedError,
    NotFoundError,
    PermissionDeniedError,
    ResponseTooLargeError,
    ResponseValidationError,
    ResultTooLargeError,
    ServerError,
    TransactionLinkClient,
    TransactionLinkError,
    WaitTimeoutError,
)
from aiotlink._polling import Lookup
from aiotlink._redaction import mask_url
from aiotlink._retry import BACKOFF_CAP, MAX_RETRY_AFTER, backoff_delay
from aiotlink._transport import ERROR_BODY_LIMIT

from .conftest import EXECUTION_ID, TOKEN, execution_body
from .servers import ScriptedServer, eventually, reply

FIND = ("GET", f"/workflows/{EXECUTION_ID}")
CANCEL = ("POST", f"/workflows/{EXECUTION_ID}/cancel")
RESULT = ("GET", f"/workflows/{EXECUTION_ID}/result")
INITIALISE = ("POST", "/workflows")
SIGNATURE = "c2lnbmF0dXJlLXRoYXQtbXVzdC1ub3QtbGVhaw0123abcdef"


# --- what must never escape ----------------------------------------------------


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception reachable through ``__cause__`` and ``__context__``."""
    seen: set[int] = set()
    stack = [error]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend(e for e in (current.__cause__, current.__context__) if e is not None)


def texts_of(value: Any, depth: int = 0) -> Iterator[str]:
    """Every text an error shows or holds: str, repr, args and attributes, recursively."""
    if depth > 6:
        return
    if isinstance(value, str | bytes | bytearray):
        yield value.decode("latin-1") if not isinstance(value, str) else value
        return
    if isinstance(value, int | float | bool) or value is None:
        return
    yield repr(value)
    if isinstance(value, BaseException):
        yield str(value)
        yield from texts_of(list(value.args), depth + 1)
    if isinstance(value, dict):
        for key, item in value.items():
            yield from texts_of(key, depth + 1)
            yield from texts_of(item, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from texts_of(item, depth + 1)
    elif hasattr(value, "__dict__"):
        yield from texts_of(vars(value), depth + 1)


def assert_clean(error: BaseException, *secrets: str) -> None:
    """Only our errors in the chain, and no secret in any text of any of them."""
    for link in chain(error):
        assert isinstance(link, TransactionLinkError | ValueError), (
            f"{type(link).__module__}.{type(link).__name__} in the chain of {error!r}"
        )
        assert "aiohttp" not in type(link).__module__
        for text in texts_of(link):
            for secret in secrets:
                assert secret not in text, f"{secret!r} in {type(link).__name__}: {text[:300]!r}"


def in_a_loop_of_its_own(coroutine: Callable[[], Awaitable[Any]], seconds: float) -> Any:
    """Run ``coroutine()`` in a new event loop on a thread; fail if it is not done in time.

    A frozen loop cannot be timed out from inside itself: this one is watched from the
    test's loop (which keeps serving the test's servers meanwhile).
    """
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(asyncio.wait_for(coroutine(), seconds))
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


async def finished(thread: threading.Thread, outcome: dict[str, Any], seconds: float) -> Any:
    """The outcome of :func:`in_a_loop_of_its_own`, or a failure if it froze."""
    await eventually(lambda: not thread.is_alive(), timeout=seconds + 5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- servers that misbehave ------------------------------------------------------


def empty(status: int) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """An answer with no body at all: a 204, or a 200 with Content-Length 0."""

    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(status=status)

    return handler


def echoing(status: int, spell: Callable[[str], str]) -> Any:
    """An error page that echoes the Authorization header, spelt by ``spell``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        echoed = spell(request.headers.get("Authorization", ""))
        return web.Response(
            status=status,
            # The echo first: a snippet of the page is what an error keeps.
            text=f"{echoed} <- your Authorization header; <html>bad request</html>",
        )

    return handler


def json_escaped(text: str) -> str:
    return "".join(f"\\u{ord(c):04x}" for c in text)


def percent_encoded(text: str) -> str:
    return "".join(f"%{ord(c):02X}" for c in text)


def html_escaped(text: str) -> str:
    return "".join(f"&#{ord(c)};" for c in text)


def html_named(text: str) -> str:
    return text.replace("_", "&lowbar;")


def endless(total: int, *, announce: bool) -> tuple[Any, list[int]]:
    """A body of ``total`` bytes, sent lazily, and the count of bytes actually sent."""
    sent: list[int] = [0]

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=200)
        response.content_type = "application/json"
        if announce:
            response.content_length = total
        await response.prepare(request)
        block = b" " * (1024 * 1024)
        try:
            await response.write(b'{"a": "')
            while sent[0] < total:
                await response.write(block)
                sent[0] += len(block)
        except (ConnectionResetError, RuntimeError):
            pass  # the client stopped reading and went away: as it should
        return response

    return handler, sent


DEEP = b'{"a":' * 1000 + b"1" + b"}" * 1000


@pytest.fixture
async def hostile() -> AsyncIterator[ScriptedServer]:
    """A scripted server standing in for a hostile API."""
    async with ScriptedServer() as running:
        yield running


async def every_endpoint(client: TransactionLinkClient, tmp_path: Path) -> list[Any]:
    """Call each endpoint once; the outcome of each (a value or the error)."""
    workflows = client.workflows
    calls: list[Callable[[], Awaitable[Any]]] = [
        lambda: workflows.find(EXECUTION_ID),
        lambda: workflows.initialise("definition"),
        lambda: workflows.get_result(EXECUTION_ID),
        lambda: workflows.download_result(EXECUTION_ID, tmp_path / "result.json"),
        lambda: workflows.wait_for_completion(EXECUTION_ID, timeout=5),
    ]
    outcomes = []
    for call in calls:
        try:
            outcomes.append(await call())
        except Exception as error:
            outcomes.append(error)
    return outcomes


def script_every_endpoint(server: ScriptedServer, handler: Any) -> None:
    for method, path in (FIND, CANCEL, RESULT, INITIALISE):
        server.script(method, path, handler)


# --- empty answers ---------------------------------------------------------------


@pytest.mark.parametrize("status", [204, 200])
async def test_empty_answers_twice_in_a_row_end_in_errors_not_a_frozen_loop(
    hostile: ScriptedServer, tmp_path: Path, status: int
) -> None:
    """An empty answer to every endpoint, twice over: errors each time, the loop never stuck.

    aiohttp hands every empty answer one shared payload whose end it reports once per
    process; a read loop that waits for that report spins forever on the second.
    """
    script_every_endpoint(hostile, empty(status))

    async def twice() -> list[list[Any]]:
        async with TransactionLinkClient(TOKEN, base_url=hostile.url, max_retries=0) as client:
            return [await every_endpoint(client, tmp_path) for _ in range(2)]

    thread, outcome = in_a_loop_of_its_own(twice, seconds=20)
    rounds = await finished(thread, outcome, seconds=20)
    for outcomes in rounds:
        assert all(isinstance(o, ResponseValidationError) for o in outcomes), outcomes
    assert not list(await asyncio.to_thread(tmp_path.iterdir)), "an empty answer left a file"


@pytest.mark.parametrize("status", [204, 200])
async def test_cancel_accepts_an_empty_answer(hostile: ScriptedServer, status: int) -> None:
    """cancel answers 200 with no body: an empty success is what it expects."""
    hostile_client = TransactionLinkClient(TOKEN, base_url=hostile.url)
    hostile.script(*CANCEL, empty(status))
    async with hostile_client:
        assert await hostile_client.workflows.cancel(EXECUTION_ID) is None
        assert await hostile_client.workflows.cancel(EXECUTION_ID) is None


async def test_a_result_that_is_not_json_is_an_error(
    hostile: ScriptedServer, tmp_path: Path
) -> None:
    """An HTML page where the result should be: no file, an error saying so."""
    hostile.script(*RESULT, reply(200, text="<html>" + "x" * 200_000 + "</html>"))
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        with pytest.raises(ResponseValidationError, match="not JSON"):
            await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
        with pytest.raises(ResponseValidationError, match="not valid JSON"):
            await client.workflows.get_result(EXECUTION_ID)
    assert not list(await asyncio.to_thread(tmp_path.iterdir))


# --- echoed secrets --------------------------------------------------------------


@pytest.mark.parametrize(
    "spell",
    [str, json_escaped, percent_encoded, html_escaped, html_named, str.upper],
    ids=["plain", "json-escaped", "percent-encoded", "html", "html-named", "upper-case"],
)
async def test_an_echoed_token_is_in_no_error(
    hostile: ScriptedServer, tmp_path: Path, spell: Callable[[str], str]
) -> None:
    """A 400 page echoing the Authorization header, in any spelling: no token in any error."""
    script_every_endpoint(hostile, echoing(400, spell))
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        outcomes = await every_endpoint(client, tmp_path)
        try:
            await client.workflows.cancel(EXECUTION_ID)
        except BadRequestError as error:
            outcomes.append(error)
    assert len(outcomes) == 6
    for error in outcomes:
        assert isinstance(error, BadRequestError), error
        assert_clean(error, TOKEN, spell(TOKEN))
    # Not vacuous: the page really carried the token, so it was scrubbed.
    headers = {"Authorization": TOKEN}
    url = hostile.url + FIND[1]
    async with aiohttp.ClientSession() as plain, plain.get(url, headers=headers) as page:
        assert spell(TOKEN) in await page.text()


async def test_an_echoed_legacy_jwt_is_in_no_error(hostile: ScriptedServer) -> None:
    """A legacy JWT goes as ``Bearer <jwt>``; echoed back, neither form shows."""
    jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJl"
    hostile.script(*FIND, echoing(401, percent_encoded))
    async with TransactionLinkClient(jwt, base_url=hostile.url) as client:
        with pytest.raises(TransactionLinkError) as caught:
            await client.workflows.find(EXECUTION_ID)
    assert_clean(caught.value, jwt, percent_encoded(jwt))


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: nonsense\r\n\r\n{}",
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 10_000 + b"\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["bad-length", "header-over-8-kb"],
)
async def test_a_malformed_answer_chains_no_aiohttp_error(answer: bytes) -> None:
    """A malformed HTTP answer: APIConnectionError with nothing of aiohttp in its chain.

    aiohttp's response errors carry the request's headers, Authorization included. The
    message says the answer was malformed, not that the connection was lost.
    """

    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(garbage, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with TransactionLinkClient(
            TOKEN, base_url=f"http://127.0.0.1:{port}", max_retries=1, retry_backoff=False
        ) as client:
            with pytest.raises(APIConnectionError) as caught:
                await client.workflows.find(EXECUTION_ID)
    finally:
        server.close()
        await server.wait_closed()
    assert caught.value.__context__ is None
    assert caught.value.__cause__ is None
    assert "malformed answer" in str(caught.value)
    assert "connection lost" not in str(caught.value)
    assert_clean(caught.value, TOKEN)


def signed_url(storage: ScriptedServer, query: str) -> str:
    return f"{storage.url}/bucket/result.json?{query}"


@pytest.mark.parametrize(
    "query",
    [
        f"X-Amz-Signature={SIGNATURE}&X-Amz-Expires=300",
        f"X%2DAmz%2DSignature={SIGNATURE}",
        f"X-Amz-Expires=300;X-Amz-Signature={SIGNATURE}",
        f"token={SIGNATURE}",
        f"x-goog-signature={SIGNATURE}",
    ],
    ids=["plain", "percent-encoded-key", "semicolon", "token", "lower-case"],
)
async def test_storage_signatures_are_in_no_error(
    hostile: ScriptedServer, storage: ScriptedServer, tmp_path: Path, query: str
) -> None:
    """Every spelling of a signature is masked, in the URL and in an echoing error body."""
    url = signed_url(storage, query)
    hostile.script(*RESULT, reply(200, {"$redirect": url}))
    storage.script(
        "GET",
        "/bucket/result.json",
        reply(
            403,
            text=(
                "<Error><Code>SignatureDoesNotMatch</Code><Message>The request signature "
                f"we calculated does not match {SIGNATURE}</Message>"
                f"<SignatureProvided>{SIGNATURE}</SignatureProvided></Error>"
            ),
        ),
    )
    async with TransactionLinkClient(TOKEN, base_url=hostile.url, max_retries=0) as client:
        with pytest.raises(PermissionDeniedError) as from_memory:
            await client.workflows.get_result(EXECUTION_ID)
        with pytest.raises(PermissionDeniedError) as from_disk:
            await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
    for caught in (from_memory, from_disk):
        assert_clean(caught.value, SIGNATURE, TOKEN)
        assert "SignatureDoesNotMatch" in str(caught.value)


# --- absurd hints ------------------------------------------------------------------


ABSURD_RETRY_AFTER = [
    "Mon, 01 Jan 99999999999 00:00:00 GMT",
    "Fri, 31 Dec 9999 23:59:59 GMT",
    "1000000000",
    "1e999",
    "99999999999999999999999999999999",
    "-5",
    "soon",
]


@pytest.mark.parametrize("retry_after", ABSURD_RETRY_AFTER)
async def test_absurd_retry_after_on_a_success_is_harmless(
    hostile: ScriptedServer, retry_after: str
) -> None:
    """A 200 with any Retry-After: the call succeeds, no builtin error escapes."""
    hostile.script(*FIND, reply(200, execution_body(), headers={"Retry-After": retry_after}))
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        execution = await client.workflows.find(EXECUTION_ID)
        lookup: Lookup = await client.workflows._find(EXECUTION_ID)
    assert execution.id == EXECUTION_ID
    assert lookup.retry_after is None or 0 <= lookup.retry_after <= 86400


@pytest.mark.parametrize("retry_after", ABSURD_RETRY_AFTER)
async def test_absurd_retry_after_on_an_error_gives_our_error(
    hostile: ScriptedServer, retry_after: str
) -> None:
    """A 503 or 429 with any Retry-After raises our error at once, never sleeping for it."""
    hostile.script(*FIND, reply(503, text="busy", headers={"Retry-After": retry_after}))
    async with TransactionLinkClient(TOKEN, base_url=hostile.url, max_retries=0) as client:
        async with asyncio.timeout(5):
            with pytest.raises(ServerError) as caught:
                await client.workflows.find(EXECUTION_ID)
    assert caught.value.retry_after is None or 0 <= caught.value.retry_after <= 86400
    str(caught.value)


async def test_a_long_retry_after_between_polls_never_ends_the_wait(
    hostile: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """503s asking for ten minutes, then for a year: the wait goes on and ends COMPLETED."""
    hostile.script(
        *FIND,
        reply(200, execution_body(status="RUNNING")),
        reply(503, text="busy", headers={"Retry-After": "600"}),
        reply(503, text="busy", headers={"Retry-After": "31536000"}),
        reply(429, text="slow down", headers={"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}),
        reply(200, execution_body(status="COMPLETED")),
    )
    slept: list[float] = []
    async with TransactionLinkClient(TOKEN, base_url=hostile.url, retry_backoff=False) as client:
        poller = client.workflows._poller
        real_schedule = poller._schedule

        def schedule_quickly(execution_id: str, retry_after: float | None) -> None:
            # Record the gap the poller chose, then poll at once rather than wait it out.
            real_schedule(execution_id, retry_after)
            now = asyncio.get_running_loop().time()
            slept.append(poller._table.due[execution_id] - now)
            poller._poll_at(execution_id, now)

        monkeypatch.setattr(poller, "_schedule", schedule_quickly)
        async with asyncio.timeout(10):
            execution = await client.workflows.wait_for_completion(EXECUTION_ID, timeout=60)
    assert execution.status == "COMPLETED"
    assert len(slept) == 4
    assert all(gap <= MAX_RETRY_AFTER for gap in slept), slept
    assert max(slept) > MAX_RETRY_AFTER * 0.99, "the hints were honoured up to the cap"


async def test_a_huge_retry_after_on_a_poll_answer_is_capped(hostile: ScriptedServer) -> None:
    """``Retry-After: 1000000000`` on a 200: the next poll comes within the cap, not in 2057."""
    hostile.script(
        *FIND, reply(200, execution_body(status="RUNNING"), headers={"Retry-After": "1000000000"})
    )
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        wait = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID))
        poller = client.workflows._poller
        await eventually(lambda: poller._due_polls._heap)
        gap = poller._due_polls._heap[0][0] - asyncio.get_running_loop().time()
        wait.cancel()
        with pytest.raises(asyncio.CancelledError):
            await wait
    assert 0 < gap <= MAX_RETRY_AFTER


# --- deep and huge bodies ------------------------------------------------------------


async def test_deeply_nested_answers_are_our_error(hostile: ScriptedServer, tmp_path: Path) -> None:
    """A 2 KB body nested 1,000 deep to every endpoint: our error, never RecursionError."""
    script_every_endpoint(hostile, reply(200, text=DEEP.decode()))
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        outcomes = await every_endpoint(client, tmp_path)
    # get_result hands back whatever JSON the result is: too deep is still our error.
    assert all(isinstance(o, ResponseValidationError) for o in outcomes), outcomes
    for error in outcomes:
        assert_clean(error, TOKEN)


async def test_deeply_nested_error_bodies_still_map_by_status(hostile: ScriptedServer) -> None:
    """A 400 whose body nests 1,000 deep: BadRequestError, with a snippet."""
    hostile.script(*FIND, reply(400, text=DEEP.decode()))
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        with pytest.raises(BadRequestError):
            await client.workflows.find(EXECUTION_ID)


async def test_deeply_nested_parameters_are_a_value_error(hostile: ScriptedServer) -> None:
    """Parameters nested 5,000 deep: ValueError naming them, before any request."""
    parameters: dict[str, Any] = {}
    inner = parameters
    for _ in range(5000):
        inner["a"] = {}
        inner = inner["a"]
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        with pytest.raises(ValueError, match="parameters"):
            await client.workflows.initialise("definition", parameters=parameters)
        with pytest.raises(ValueError, match="parameters"):
            await client.workflows.run("definition", parameters=parameters)
    assert hostile.seen == []


HUGE = 400 * 2**20


@pytest.mark.parametrize("announce", [True, False], ids=["content-length", "chunked"])
async def test_huge_answers_are_refused_having_read_little(
    hostile: ScriptedServer, announce: bool
) -> None:
    """A 400 MiB answer to find, initialise, cancel or a poll: refused, not read whole."""
    handler, sent = endless(HUGE, announce=announce)
    script_every_endpoint(hostile, handler)
    async with TransactionLinkClient(TOKEN, base_url=hostile.url, max_retries=0) as client:
        workflows = client.workflows
        calls: list[Callable[[], Awaitable[Any]]] = [
            lambda: workflows.find(EXECUTION_ID),
            lambda: workflows.initialise("definition"),
            lambda: workflows.cancel(EXECUTION_ID),
            lambda: workflows.wait_for_completion(EXECUTION_ID, timeout=10),
        ]
        for call in calls:
            with pytest.raises(ResponseTooLargeError, match="max_response_bytes") as caught:
                async with asyncio.timeout(20):
                    await call()
            assert not isinstance(caught.value, ResultTooLargeError)
            assert caught.value.max_bytes == client.max_response_bytes
    # Each of the four stopped reading within a few MiB of the bound (socket buffers).
    assert sent[0] < 4 * (client.max_response_bytes + 16 * 2**20)


async def test_the_response_bound_is_configurable(hostile: ScriptedServer) -> None:
    """``max_response_bytes`` moves the bound both ways."""
    hostile.script(*FIND, reply(200, execution_body(name="x" * 5000)))
    async with TransactionLinkClient(TOKEN, base_url=hostile.url, max_response_bytes=1000) as small:
        with pytest.raises(ResponseTooLargeError, match="max_response_bytes=1000"):
            await small.workflows.find(EXECUTION_ID)
    async with TransactionLinkClient(TOKEN, base_url=hostile.url, max_response_bytes=6000) as big:
        assert (await big.workflows.find(EXECUTION_ID)).name == "x" * 5000


async def test_a_result_keeps_its_own_bound(hostile: ScriptedServer) -> None:
    """get_result reads up to its ``max_bytes``, beyond the client's answer bound."""
    result = {"blob": "x" * 200_000}
    hostile.script(*RESULT, reply(200, result))
    async with TransactionLinkClient(
        TOKEN, base_url=hostile.url, max_response_bytes=1000
    ) as client:
        assert await client.workflows.get_result(EXECUTION_ID) == result
        with pytest.raises(ResultTooLargeError, match="download_result"):
            await client.workflows.get_result(EXECUTION_ID, max_bytes=100_000)


async def test_a_result_body_that_never_ends_is_refused(hostile: ScriptedServer) -> None:
    """A chunked result that goes on forever: ResultTooLargeError once past ``max_bytes``."""
    handler, sent = endless(HUGE, announce=False)
    hostile.script(*RESULT, handler)
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        with pytest.raises(ResultTooLargeError):
            await client.workflows.get_result(EXECUTION_ID, max_bytes=2**20)
    assert sent[0] < 32 * 2**20


async def test_a_compressed_bomb_is_refused_with_memory_bounded(hostile: ScriptedServer) -> None:
    """64 MiB gzipped to 64 KB: refused past the bound of decoded bytes, never inflated whole."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: the gzip container
    bomb = compressor.compress(b" " * (64 * 2**20)) + compressor.flush()
    gzip_headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}

    async def handler(_: web.Request) -> web.StreamResponse:
        return web.Response(body=bomb, headers=gzip_headers)

    hostile.script(*FIND, handler)
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        tracemalloc.start()
        try:
            with pytest.raises(ResponseTooLargeError):
                await client.workflows.find(EXECUTION_ID)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert len(bomb) < 2**20
    assert peak < 3 * client.max_response_bytes


# --- careless callers ----------------------------------------------------------------


@pytest.mark.parametrize(
    "expires_at",
    [
        timedelta.max,
        timedelta.min,
        datetime.min.replace(tzinfo=timezone(timedelta(hours=23))),
        datetime.max.replace(tzinfo=timezone(timedelta(hours=-23))),
    ],
    ids=["timedelta.max", "timedelta.min", "datetime.min", "datetime.max"],
)
async def test_an_expiry_out_of_any_range_is_a_value_error(
    hostile: ScriptedServer, expires_at: datetime | timedelta
) -> None:
    """Expiries whose arithmetic overflows: ValueError naming expires_at, no request."""
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        with pytest.raises(ValueError, match="expires_at"):
            await client.workflows.initialise("definition", expires_at=expires_at)
    assert hostile.seen == []


def test_a_base_url_with_credentials_is_refused() -> None:
    """A user or password in base_url would show in every error and log line."""
    with pytest.raises(ValueError, match="user or password") as caught:
        TransactionLinkClient(TOKEN, base_url="https://me:hunter22@api.example.com")
    assert "hunter22" not in str(caught.value)


# --- found by review: bodies in pieces, sessions that cannot send, odd statuses -------


def in_two_pieces(status: int, cut: int) -> Any:
    """An error page echoing the Authorization header, sent in two writes with a pause.

    The first write ends ``cut`` characters into the token: a single read of whatever has
    arrived would keep that part, past the reach of scrubbing.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        page = f"<html>proxy saw Authorization: {request.headers['Authorization']}</html>"
        first, rest = page.split("tot_", 1)
        response = web.StreamResponse(status=status)
        response.content_type = "text/html"
        await response.prepare(request)
        await response.write((first + "tot_" + rest[:cut]).encode())
        await asyncio.sleep(0.05)
        await response.write(rest[cut:].encode())
        return response

    return handler


async def test_a_token_split_across_reads_is_still_scrubbed(
    hostile: ScriptedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An echoed token cut between two writes: no part of it in any error or log line."""
    caplog.set_level(logging.DEBUG, logger="aiotlink")
    script_every_endpoint(hostile, in_two_pieces(502, cut=12))
    async with TransactionLinkClient(TOKEN, base_url=hostile.url, max_retries=0) as client:
        outcomes = await every_endpoint(client, tmp_path)
    part = TOKEN[:16]  # "tot_" and the twelve characters of the first write
    for error in outcomes:
        assert isinstance(error, ServerError | WaitTimeoutError), error
        assert_clean(error, part)
    assert any("will poll again" in record.getMessage() for record in caplog.records)
    for record in caplog.records:
        assert part not in record.getMessage()


async def test_storage_answering_empty_twice_never_freezes_the_loop(
    hostile: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """A redirect to storage that answers 204, twice: errors, and the loop never stuck."""
    url = f"{storage.url}/bucket/result.json?X-Amz-Signature={SIGNATURE}"
    hostile.script(*RESULT, reply(200, {"$redirect": url}))
    storage.script("GET", "/bucket/result.json", empty(204))

    async def twice() -> list[Any]:
        async with TransactionLinkClient(TOKEN, base_url=hostile.url, max_retries=0) as client:
            return [await every_endpoint(client, tmp_path) for _ in range(2)]

    thread, outcome = in_a_loop_of_its_own(twice, seconds=20)
    rounds = await finished(thread, outcome, seconds=20)
    for outcomes in rounds:
        assert isinstance(outcomes[2], ResponseValidationError)  # get_result
        assert isinstance(outcomes[3], ResponseValidationError)  # download_result
    assert not list(await asyncio.to_thread(tmp_path.iterdir))


async def test_closing_the_client_during_a_retry_gives_our_error(hostile: ScriptedServer) -> None:
    """Closed while a call sleeps before its retry: ClientClosedError, not a RuntimeError."""
    hostile.script(*FIND, reply(503, text="busy", headers={"Retry-After": "0.2"}))
    client = TransactionLinkClient(TOKEN, base_url=hostile.url)
    call = asyncio.create_task(client.workflows.find(EXECUTION_ID))
    await eventually(lambda: hostile.requests_to(*FIND))
    await client.close()
    with pytest.raises(ClientClosedError):
        await call
    assert len(hostile.requests_to(*FIND)) == 1


async def test_a_closed_caller_session_gives_our_error(hostile: ScriptedServer) -> None:
    """A session the caller closed: ClientClosedError from calls and waits, no request."""
    session = aiohttp.ClientSession()
    await session.close()
    async with TransactionLinkClient(TOKEN, base_url=hostile.url, session=session) as client:
        with pytest.raises(ClientClosedError):
            await client.workflows.find(EXECUTION_ID)
        with pytest.raises(ClientClosedError):
            await client.workflows.wait_for_completion(EXECUTION_ID, timeout=5)
    assert hostile.seen == []


async def test_a_session_of_another_event_loop_gives_our_error(hostile: ScriptedServer) -> None:
    """A session made in a loop that has ended: a typed error, never a builtin."""

    async def make() -> aiohttp.ClientSession:
        return aiohttp.ClientSession()

    session = await asyncio.to_thread(asyncio.run, make())
    try:
        client = TransactionLinkClient(TOKEN, base_url=hostile.url, session=session, max_retries=0)
        async with client:
            with pytest.raises(TransactionLinkError) as caught:
                await client.workflows.find(EXECUTION_ID)
        assert_clean(caught.value, TOKEN)
    finally:
        with contextlib.suppress(RuntimeError):  # its loop is gone: closing may complain
            await session.close()


async def test_a_caller_session_raising_for_status_still_maps_statuses(
    hostile: ScriptedServer,
) -> None:
    """``raise_for_status=True`` on the caller's session: a 404 is NotFoundError, not retried."""
    hostile.script(*FIND, reply(404, {"errors": [{"code": "NOT_FOUND", "message": "no"}]}))
    async with (
        aiohttp.ClientSession(raise_for_status=True) as session,
        TransactionLinkClient(TOKEN, base_url=hostile.url, session=session) as client,
    ):
        with pytest.raises(NotFoundError):
            await client.workflows.find(EXECUTION_ID)
        with pytest.raises(NotFoundError):
            await client.workflows.wait_for_completion(EXECUTION_ID, timeout=5)
    assert len(hostile.requests_to(*FIND)) == 2


@pytest.mark.parametrize("status", [501, 507, 520, 524])
async def test_any_server_error_between_polls_never_ends_the_wait(
    hostile: ScriptedServer, status: int
) -> None:
    """A 5xx outside the usual four between polls is skipped too; the wait ends COMPLETED."""
    hostile.script(
        *FIND,
        reply(200, execution_body(status="RUNNING")),
        reply(status, text="<html>origin down</html>"),
        reply(200, execution_body(status="COMPLETED")),
    )
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        execution = await client.workflows.wait_for_completion(
            EXECUTION_ID, timeout=10, poll_interval=0.01
        )
    assert execution.status == "COMPLETED"


def test_the_backoff_of_a_thousandth_retry_is_still_a_number() -> None:
    """Retry 2,000 waits at most the cap: no OverflowError from 2.0 ** 1999."""
    assert backoff_delay(2000, random_fraction=1.0) == BACKOFF_CAP


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"default_headers": 5}, "default_headers"),
        ({"default_headers": "ab"}, "default_headers"),
        ({"retry_backoff": "no"}, "retry_backoff"),
    ],
)
def test_arguments_of_the_wrong_type_name_themselves(options: dict[str, Any], named: str) -> None:
    """Arguments of the wrong type: a TypeError naming the argument."""
    with pytest.raises(TypeError, match=named):
        TransactionLinkClient(TOKEN, **options)


@pytest.mark.parametrize(
    "query",
    ["Authorization=3_b2-download-auth-secret", "key=AIzaSyB-secret-api-key"],
)
def test_other_credentials_in_a_query_are_masked(query: str) -> None:
    """Backblaze's Authorization= and Google's key= are credentials too."""
    secret = query.split("=", 1)[1]
    masked = mask_url(f"https://storage.example.com/b/o.json?{query}&x-id=GetObject")
    assert secret not in masked
    assert "x-id=GetObject" in masked


# --- found by the second review ------------------------------------------------------


async def test_a_token_cut_by_the_error_body_bound_leaves_no_fragment(
    hostile: ScriptedServer, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A token that straddles the 64 KiB bound of error bodies: none of it kept."""
    caplog.set_level(logging.DEBUG, logger="aiotlink")

    async def padded(request: web.Request) -> web.StreamResponse:
        echoed = request.headers["Authorization"].encode()
        body = b" " * (ERROR_BODY_LIMIT - len(echoed) + 1) + echoed + b"</html>"
        return web.Response(status=502, body=body, content_type="text/html")

    script_every_endpoint(hostile, padded)
    async with TransactionLinkClient(TOKEN, base_url=hostile.url, max_retries=0) as client:
        outcomes = await every_endpoint(client, tmp_path)
    fragment = TOKEN[:8]  # "tot_test": any longer start of the token would show it
    for error in outcomes:
        assert isinstance(error, ServerError | WaitTimeoutError), error
        assert_clean(error, fragment)
    for record in caplog.records:
        assert fragment not in record.getMessage()


@pytest.mark.parametrize("field", ["status", "id", "name"])
async def test_an_answer_carrying_the_token_is_refused(
    hostile: ScriptedServer, caplog: pytest.LogCaptureFixture, field: str
) -> None:
    """A 200 whose execution carries the client's token (plain or escaped): refused."""
    caplog.set_level(logging.DEBUG, logger="aiotlink")

    async def echo(request: web.Request) -> web.StreamResponse:
        body = json.dumps(execution_body(**{field: request.headers["Authorization"]}))
        if field == "name":  # escaped: the parser would decode it back into the token
            body = body.replace(TOKEN, json_escaped(TOKEN))
        return web.Response(body=body.encode(), content_type="application/json")

    hostile.script(*FIND, echo)
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        with pytest.raises(ResponseValidationError, match="carries the client's own token") as a:
            await client.workflows.find(EXECUTION_ID)
        with pytest.raises(ResponseValidationError) as b:
            await client.workflows.wait_for_completion(EXECUTION_ID, timeout=5)
    for caught in (a, b):
        assert_clean(caught.value, TOKEN)
    for record in caplog.records:
        assert TOKEN not in record.getMessage()


async def test_a_downloads_storage_error_is_scrubbed_of_the_token(
    hostile: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """Storage never gets the token, but an error page of its quoting one is scrubbed too."""
    url = f"{storage.url}/bucket/result.json?X-Amz-Signature={SIGNATURE}"
    hostile.script(*RESULT, reply(200, {"$redirect": url}))
    page = f"<Error><Code>InvalidRequest</Code><Message>bad auth {TOKEN}</Message></Error>"
    storage.script("GET", "/bucket/result.json", reply(400, text=page))
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        with pytest.raises(BadRequestError) as from_disk:
            await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
        with pytest.raises(BadRequestError) as from_memory:
            await client.workflows.get_result(EXECUTION_ID)
    for caught in (from_disk, from_memory):
        assert "InvalidRequest" in str(caught.value)
        assert_clean(caught.value, TOKEN, SIGNATURE)


@pytest.mark.parametrize(
    "base_url",
    [
        "ftp://me:hunter22secret@api.example.com",
        "https://me:hunter22secret@api.example.com:99999",
        "tot_hunter22secret",
        "https://api.example.com/?key=hunter22secret",
    ],
)
def test_a_malformed_base_url_is_not_echoed(base_url: str) -> None:
    """The value may be a credential put in the wrong place: the error does not show it."""
    with pytest.raises(ValueError, match="base_url") as caught:
        TransactionLinkClient(TOKEN, base_url=base_url)
    assert "hunter22" not in str(caught.value)


@pytest.mark.parametrize(
    "flag", ["raise_on_failure", "cancel_on_timeout", "cancel_remote_on_cancel"]
)
async def test_a_flag_that_is_not_a_bool_is_refused_before_any_request(
    hostile: ScriptedServer, flag: str
) -> None:
    """``cancel_on_timeout="no"`` is truthy: refused, rather than cancelling anything."""
    async with TransactionLinkClient(TOKEN, base_url=hostile.url) as client:
        with pytest.raises(TypeError, match=flag):
            await client.workflows.wait_for_completion(EXECUTION_ID, timeout=1, **{flag: "no"})
        with pytest.raises(TypeError, match=flag):
            await client.workflows.run("definition", **{flag: "no"})
    assert hostile.seen == []


async def test_a_download_through_a_session_raising_for_status_maps_statuses(
    hostile: ScriptedServer, tmp_path: Path
) -> None:
    """download_result on a caller's raise_for_status session: 404 is NotFoundError, once."""
    hostile.script(*RESULT, reply(404, {"errors": [{"code": "NOT_FOUND", "message": "no"}]}))
    async with (
        aiohttp.ClientSession(raise_for_status=True) as session,
        TransactionLinkClient(TOKEN, base_url=hostile.url, session=session) as client,
    ):
        with pytest.raises(NotFoundError):
            await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
    assert len(hostile.requests_to(*RESULT)) == 1


async def test_a_download_on_a_closed_caller_session_gives_our_error(
    hostile: ScriptedServer, tmp_path: Path
) -> None:
    """download_result on a session the caller closed: ClientClosedError, no request."""
    session = aiohttp.ClientSession()
    await session.close()
    async with TransactionLinkClient(TOKEN, base_url=hostile.url, session=session) as client:
        with pytest.raises(ClientClosedError):
            await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
    assert hostile.seen == []
    assert os.listdir(tmp_path) == []
