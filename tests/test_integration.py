"""The client against real HTTP servers on 127.0.0.1: auth, retries, errors, redirects."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import socket
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aioresponses import aioresponses

from aiotlink import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseValidationError,
    ResultTooLargeError,
    ServerError,
    TransactionLinkClient,
    WorkflowStatus,
)

from .conftest import EXECUTION_ID, TOKEN, execution_body
from .servers import ScriptedServer, drop, eventually, reply, stall

FIND = ("GET", f"/workflows/{EXECUTION_ID}")
INITIALISE = ("POST", "/workflows")
CANCEL = ("POST", f"/workflows/{EXECUTION_ID}/cancel")
RESULT = ("GET", f"/workflows/{EXECUTION_ID}/result")
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"
S3_EXPIRED = "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
ERROR_BODY = {"fingerprint": "fp-1", "errors": [{"code": "BOOM", "message": "it broke"}]}
# A pre-signed query string as S3 makes it: %2F inside, which re-quoting would change.
SIGNED_QUERY = (
    "X-Amz-Algorithm=AWS4-HMAC-SHA256"
    "&X-Amz-Credential=AKIAEXAMPLE%2F20261128%2Feu-west-1%2Fs3%2Faws4_request"
    "&X-Amz-Date=20261128T053000Z&X-Amz-Expires=300&X-Amz-SignedHeaders=host"
    "&X-Amz-Signature=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
)


def storage_handler(payload: bytes, *, expected_query: str = SIGNED_QUERY) -> Any:
    """Storage that acts like S3 for a pre-signed GET: exact query, no Authorization."""

    async def handler(request: web.Request) -> web.StreamResponse:
        denied = "<Error><Code>AccessDenied</Code><Message>{}</Message></Error>"
        if "Authorization" in request.headers:
            return web.Response(status=403, text=denied.format("Only one auth mechanism"))
        if request.raw_path.partition("?")[2] != expected_query:
            return web.Response(status=403, text=denied.format("SignatureDoesNotMatch"))
        return web.Response(body=payload, content_type="application/json")

    return handler


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- auth ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("token", "expected_header"),
    [
        (TOKEN, TOKEN),
        (
            "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
            "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln",
        ),
        ("Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.c2ln"),
    ],
)
async def test_auth_header_forms(server: ScriptedServer, token: str, expected_header: str) -> None:
    """tot_ tokens go raw, JWTs as Bearer, a Bearer value as is; User-Agent names us."""
    server.script(*FIND, reply(200, execution_body()))
    async with TransactionLinkClient(token, base_url=server.url) as client:
        await client.workflows.find(EXECUTION_ID)
    (seen,) = server.requests_to(*FIND)
    assert seen.headers["Authorization"] == expected_header
    assert seen.headers["User-Agent"].startswith("aiotlink/")


async def test_default_headers_reach_every_api_call(server: ScriptedServer) -> None:
    """default_headers (e.g. an Accept picking the API version) go on every API call."""
    server.script(*FIND, reply(200, execution_body()))
    server.script(*CANCEL, reply(200))
    accept = "application/json;version=3"
    async with TransactionLinkClient(
        TOKEN, base_url=server.url, default_headers={"Accept": accept}
    ) as client:
        await client.workflows.find(EXECUTION_ID)
        await client.workflows.cancel(EXECUTION_ID)
    assert [seen.headers["Accept"] for seen in server.seen] == [accept, accept]


# --- the four endpoints ----------------------------------------------------------


async def test_initialise_sends_the_spec_body_and_decodes_the_answer(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """initialise posts camelCase JSON with the spec's content type and decodes the answer."""
    server.script(*INITIALISE, reply(200, execution_body(status="INITIALISED")))
    record_id = "9f1e2d3c-4b5a-4678-9abc-def012345678"
    execution = await client.workflows.initialise(
        "kyc-basic",
        locale="fr",
        parameters={"a": [1, 2]},
        record_id=record_id,
        expires_at=timedelta(hours=2),
    )
    assert execution.status is WorkflowStatus.INITIALISED
    (seen,) = server.requests_to(*INITIALISE)
    assert seen.headers["Content-Type"] == "application/json;charset=UTF-8"
    body = json.loads(seen.body)
    assert body["workflowDefinitionId"] == "kyc-basic"
    assert body["locale"] == "fr"
    assert body["parameters"] == {"a": [1, 2]}
    assert body["recordId"] == record_id
    sent_expiry = datetime.fromisoformat(body["expiresAt"])
    assert body["expiresAt"].endswith("Z")
    assert timedelta(minutes=119) < sent_expiry - datetime.now(UTC) <= timedelta(hours=2)


async def test_interactive_answer_has_link_and_token(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """An interactive execution decodes with its link and token, and says it is interactive."""
    server.script(
        *INITIALISE,
        reply(200, execution_body(link="https://tl.example/x", token="exec-token")),
    )
    execution = await client.workflows.initialise("kyc-hosted")
    assert execution.is_interactive
    assert execution.link == "https://tl.example/x"
    assert execution.token == "exec-token"
    assert "exec-token" not in repr(execution)


async def test_cancel_posts_to_the_cancel_path(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """cancel POSTs to /workflows/{id}/cancel and returns None on 200 with no body."""
    server.script(*CANCEL, reply(200))
    assert await client.workflows.cancel(EXECUTION_ID) is None
    assert len(server.requests_to(*CANCEL)) == 1


async def test_integers_beyond_64_bits_survive(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """JSON allows integers of any size: a result with one beyond 64 bits decodes exactly."""
    server.script(*RESULT, reply(200, text='{"ledger": 123456789012345678901234567890}'))
    assert await client.workflows.get_result(EXECUTION_ID) == {
        "ledger": 123456789012345678901234567890
    }


async def test_inline_result_is_decoded(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """get_result returns the decoded JSON of an inline result."""
    server.script(*RESULT, reply(200, {"score": 0.93, "checks": ["id", "face"]}))
    assert await client.workflows.get_result(EXECUTION_ID) == {
        "score": 0.93,
        "checks": ["id", "face"],
    }


# --- errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
    ],
)
async def test_error_answers_raise_their_class_at_once(
    server: ScriptedServer, client: TransactionLinkClient, status: int, error_class: type
) -> None:
    """4xx answers map to their error class, carry the body's details, and are not retried."""
    server.script(*FIND, reply(status, ERROR_BODY))
    with pytest.raises(error_class) as caught:
        await client.workflows.find(EXECUTION_ID)
    error = caught.value
    assert (error.status, error.fingerprint, error.method) == (status, "fp-1", "GET")
    assert [(e.code, e.message) for e in error.errors] == [("BOOM", "it broke")]
    assert error.url == f"{server.url}/workflows/{EXECUTION_ID}"
    assert f"{status} BOOM: it broke [fingerprint fp-1]" in str(error)
    assert len(server.requests_to(*FIND)) == 1


@pytest.mark.parametrize(("route", "status"), [(FIND, 302), (INITIALISE, 307)])
async def test_an_api_redirect_is_an_error_and_is_never_followed(
    server: ScriptedServer,
    storage: ScriptedServer,
    client: TransactionLinkClient,
    route: tuple[str, str],
    status: int,
) -> None:
    """A 3xx from the API raises APIError with its status; the call never follows it."""
    # Following the redirect would find an answer there, and take the token along.
    storage.script(*route, reply(200, execution_body()))
    server.script(*route, reply(status, headers={"Location": f"{storage.url}{route[1]}"}))
    if route == FIND:
        call = client.workflows.find(EXECUTION_ID)
    else:
        call = client.workflows.initialise("kyc")
    with pytest.raises(APIError) as caught:
        await call
    assert caught.value.status == status
    assert len(server.requests_to(*route)) == 1
    assert [seen for seen in storage.seen if "Authorization" in seen.headers] == []
    assert storage.seen == []


async def test_html_502_from_a_proxy_maps_by_status(server: ScriptedServer) -> None:
    """A non-JSON 502 still raises ServerError, showing a snippet of the page."""
    page = "<html><body><h1>502 Bad Gateway</h1></body></html>"
    server.script(*FIND, reply(502, text=page, headers={"Content-Type": "text/html"}))
    async with TransactionLinkClient(
        TOKEN, base_url=server.url, max_retries=1, retry_backoff=False
    ) as client:
        with pytest.raises(ServerError) as caught:
            await client.workflows.find(EXECUTION_ID)
    assert caught.value.status == 502
    assert caught.value.fingerprint is None
    assert "502 Bad Gateway" in str(caught.value)


async def test_a_2xx_that_does_not_fit_names_the_field(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """A 2xx body missing a required field raises ResponseValidationError naming $.status."""
    body = execution_body()
    del body["status"]
    server.script(*FIND, reply(200, body))
    with pytest.raises(ResponseValidationError, match=r"\$\.status"):
        await client.workflows.find(EXECUTION_ID)


async def test_a_2xx_that_is_not_json(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """A 2xx body that is not JSON raises ResponseValidationError."""
    server.script(*FIND, reply(200, text="<html>maintenance</html>"))
    with pytest.raises(ResponseValidationError, match="not valid JSON"):
        await client.workflows.find(EXECUTION_ID)


# --- retries --------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504])
async def test_transient_statuses_are_retried(
    server: ScriptedServer, client: TransactionLinkClient, status: int
) -> None:
    """GETs are retried on 408/429/5xx and succeed once the server recovers."""
    server.script(*FIND, reply(status, ERROR_BODY), reply(status), reply(200, execution_body()))
    execution = await client.workflows.find(EXECUTION_ID)
    assert execution.id == EXECUTION_ID
    assert len(server.requests_to(*FIND)) == 3


async def test_retries_stop_after_max_retries(server: ScriptedServer) -> None:
    """After max_retries retries the last error is raised: 1 + max_retries requests."""
    server.script(*FIND, reply(503, ERROR_BODY))
    async with TransactionLinkClient(
        TOKEN, base_url=server.url, max_retries=2, retry_backoff=False
    ) as client:
        with pytest.raises(ServerError):
            await client.workflows.find(EXECUTION_ID)
    assert len(server.requests_to(*FIND)) == 3


async def test_per_call_options(server: ScriptedServer, client: TransactionLinkClient) -> None:
    """with_options(max_retries=0) makes one call without retries; the client is unchanged."""
    server.script(*FIND, reply(503), reply(200, execution_body()))
    with pytest.raises(ServerError):
        await client.with_options(max_retries=0).workflows.find(EXECUTION_ID)
    assert len(server.requests_to(*FIND)) == 1
    await client.workflows.find(EXECUTION_ID)
    assert len(server.requests_to(*FIND)) == 2


async def test_connection_dropped_is_retried_for_gets(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """A GET whose connection drops before the answer is retried."""
    server.script(*FIND, drop(), reply(200, execution_body()))
    assert (await client.workflows.find(EXECUTION_ID)).id == EXECUTION_ID
    assert len(server.requests_to(*FIND)) == 2


async def test_retry_after_is_honoured_and_logged(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A 429's Retry-After sets the wait before the retry, and the retry is logged."""
    server.script(*FIND, reply(429, headers={"Retry-After": "0.2"}), reply(200, execution_body()))
    caplog.set_level(logging.INFO, logger="aiotlink")
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.workflows.find(EXECUTION_ID)
        waited = loop.time() - started
    assert waited >= 0.2
    (record,) = [r for r in caplog.records if r.name == "aiotlink"]
    assert "HTTP 429" in record.getMessage()
    assert "0.20 s" in record.getMessage()


class RecordingSleeps:
    """Stands in for ``asyncio`` in ``aiotlink._retry``: records each sleep asked for.

    The sleeps themselves only yield, so a test can ask for a long one and not wait it.
    """

    def __init__(self) -> None:
        self.asked: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.asked.append(seconds)
        await asyncio.sleep(0)

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


async def test_retry_after_as_http_date(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Retry-After given as an HTTP date is honoured: the retry waits until that moment."""
    when = (datetime.now(UTC) + timedelta(seconds=10)).replace(microsecond=0)
    server.script(
        *FIND,
        reply(503, headers={"Retry-After": format_datetime(when, usegmt=True)}),
        reply(200, execution_body()),
    )
    sleeps = RecordingSleeps()
    monkeypatch.setattr("aiotlink._retry.asyncio", sleeps)
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        earliest = datetime.now(UTC)
        await client.workflows.find(EXECUTION_ID)
        latest = datetime.now(UTC)
    (asked,) = sleeps.asked
    # Until the date, counted from when the answer came: some 9 to 10 s.
    assert (when - latest).total_seconds() <= asked <= (when - earliest).total_seconds()
    assert len(server.requests_to(*FIND)) == 2


async def test_long_retry_after_is_raised_not_slept(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """A Retry-After over 60 s raises RateLimitError with the wait instead of sleeping."""
    server.script(*FIND, reply(429, ERROR_BODY, headers={"Retry-After": "120"}))
    with pytest.raises(RateLimitError) as caught:
        await client.workflows.find(EXECUTION_ID)
    assert caught.value.retry_after == 120
    assert "retry after 120 s" in str(caught.value)
    assert len(server.requests_to(*FIND)) == 1


async def test_initialise_is_not_retried_after_a_5xx(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """initialise is not retried after a 5xx, and the error says it may have been created."""
    server.script(*INITIALISE, reply(503, ERROR_BODY), reply(200, execution_body()))
    with pytest.raises(ServerError) as caught:
        await client.workflows.initialise("kyc-basic")
    assert caught.value.may_have_been_created
    assert "may have been created" in str(caught.value)
    assert len(server.requests_to(*INITIALISE)) == 1


async def test_initialise_is_not_retried_after_a_dropped_connection(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """A connection lost after initialise was sent is not retried: it may have been created."""
    server.script(*INITIALISE, drop(), reply(200, execution_body()))
    with pytest.raises(APIConnectionError) as caught:
        await client.workflows.initialise("kyc-basic")
    assert caught.value.request_sent
    assert "may have been created" in str(caught.value)
    assert len(server.requests_to(*INITIALISE)) == 1


async def test_initialise_is_not_retried_after_a_timeout(server: ScriptedServer) -> None:
    """initialise that times out waiting for the answer raises APITimeoutError at once."""
    server.script(*INITIALISE, stall(1.0, reply(200, execution_body())))
    async with TransactionLinkClient(
        TOKEN, base_url=server.url, timeout=0.1, retry_backoff=False
    ) as client:
        with pytest.raises(TimeoutError) as caught:
            await client.workflows.initialise("kyc-basic")
    assert isinstance(caught.value, APITimeoutError)
    assert caught.value.may_have_been_created
    assert len(server.requests_to(*INITIALISE)) == 1


async def test_initialise_is_retried_on_429(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """A 429 proves the server did not process initialise, so it is retried."""
    server.script(*INITIALISE, reply(429, ERROR_BODY), reply(200, execution_body()))
    execution = await client.workflows.initialise("kyc-basic")
    assert execution.id == EXECUTION_ID
    assert len(server.requests_to(*INITIALISE)) == 2


async def test_connection_refused_is_retried_then_raised() -> None:
    """No server at all: every attempt fails to connect; the error says so, not 'created'."""
    url = f"http://127.0.0.1:{free_port()}"
    async with TransactionLinkClient(TOKEN, base_url=url, retry_backoff=False) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.workflows.initialise("kyc-basic")
    assert not caught.value.request_sent
    assert not caught.value.may_have_been_created
    assert "could not connect" in str(caught.value)


async def test_timeouts_are_retried_for_gets(server: ScriptedServer) -> None:
    """A GET that times out is retried; the last timeout is an APITimeoutError."""
    server.script(*FIND, stall(1.0, reply(200, execution_body())))
    async with TransactionLinkClient(
        TOKEN, base_url=server.url, timeout=0.05, max_retries=2, retry_backoff=False
    ) as client:
        with pytest.raises(APITimeoutError, match="timed out"):
            await client.workflows.find(EXECUTION_ID)
    assert len(server.requests_to(*FIND)) == 3


async def test_cancelling_during_a_retry_wait_stops_at_once(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Cancelling the caller while it waits to retry raises CancelledError; no more requests."""
    server.script(*FIND, reply(503, headers={"Retry-After": "30"}))
    caplog.set_level(logging.INFO, logger="aiotlink")
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        task = asyncio.create_task(client.workflows.find(EXECUTION_ID))
        # The 503 is in and the retry is logged as it starts its 30 s wait.
        await eventually(lambda: "in 30.00 s" in caplog.text)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert len(server.requests_to(*FIND)) == 1


async def test_asyncio_timeout_around_a_call_is_not_retried(server: ScriptedServer) -> None:
    """asyncio.timeout() around a slow call ends it with TimeoutError and no retry."""
    server.script(*FIND, stall(2.0, reply(200, execution_body())))
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(TimeoutError) as caught:
            async with asyncio.timeout(0.1):
                await client.workflows.find(EXECUTION_ID)
    assert not isinstance(caught.value, APITimeoutError)
    assert len(server.requests_to(*FIND)) == 1


# --- secrets --------------------------------------------------------------------


async def test_token_never_reaches_logs_reprs_or_errors(
    server: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The token appears in no log record, repr or error text, even if a proxy echoes it."""
    echo = f"<html>bad gateway; you sent Authorization: {TOKEN}</html>"
    server.script(*FIND, reply(502, text=echo))
    caplog.set_level(logging.DEBUG)
    client = TransactionLinkClient(TOKEN, base_url=server.url, max_retries=2, retry_backoff=False)
    async with client:
        with pytest.raises(ServerError) as caught:
            await client.workflows.find(EXECUTION_ID)
    texts = [str(caught.value), repr(caught.value), repr(client), str(client)]
    texts += [record.getMessage() for record in caplog.records]
    texts += [repr(client.with_options(max_retries=0))]
    assert caplog.records  # the retries were logged
    assert not [text for text in texts if TOKEN in text]


# --- results and the redirect ---------------------------------------------------


async def test_redirect_is_followed_without_credentials(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """A $redirect is fetched exactly as given, with no Authorization or default headers."""
    payload = json.dumps({"big": "x" * 1000}).encode()
    server.script(
        *RESULT, reply(200, {"$redirect": f"{storage.url}/bucket/result.json?{SIGNED_QUERY}"})
    )
    storage.script("GET", "/bucket/result.json", storage_handler(payload))
    async with TransactionLinkClient(
        TOKEN, base_url=server.url, default_headers={"X-Tenant": "t-1"}
    ) as client:
        result = await client.workflows.get_result(EXECUTION_ID)
    assert hashlib.sha256(json.dumps(result).encode()).digest() == hashlib.sha256(payload).digest()
    (seen,) = storage.seen
    assert "Authorization" not in seen.headers
    assert "X-Tenant" not in seen.headers
    assert seen.raw_path.partition("?")[2] == SIGNED_QUERY


async def test_redirect_with_a_caller_session_carrying_credentials(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """A caller's session with its own Authorization default does not leak it to storage."""
    payload = b'{"ok": true}'
    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?{SIGNED_QUERY}"}))
    storage.script("GET", "/r.json", storage_handler(payload))
    async with aiohttp.ClientSession(headers={"Authorization": "Basic c2VjcmV0"}) as session:
        client = TransactionLinkClient(TOKEN, base_url=server.url, session=session)
        assert await client.workflows.get_result(EXECUTION_ID) == {"ok": True}
        await client.close()
        assert not session.closed
    assert "Authorization" not in storage.seen[0].headers


async def test_storage_refusal_is_a_permission_error_with_a_masked_url(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """An expired URL's 403 XML raises PermissionDeniedError; the signature is masked."""
    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?{SIGNED_QUERY}"}))
    storage.script(
        "GET",
        "/r.json",
        reply(
            403,
            text="<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>",
        ),
    )
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(PermissionDeniedError) as caught:
            await client.workflows.get_result(EXECUTION_ID)
    text = str(caught.value)
    assert "AccessDenied: Request has expired" in text
    assert "0123456789abcdef" not in text
    assert "AKIAEXAMPLE" not in text
    assert "X-Amz-Signature=***" in caught.value.url


async def test_redirect_storage_error_is_retried(
    server: ScriptedServer, storage: ScriptedServer, client: TransactionLinkClient
) -> None:
    """A 503 from storage is retried like any GET."""
    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?{SIGNED_QUERY}"}))
    storage.script("GET", "/r.json", reply(503), storage_handler(b"[1, 2]"))
    assert await client.workflows.get_result(EXECUTION_ID) == [1, 2]
    assert len(storage.seen) == 2


async def test_redirect_to_plain_http_is_refused_for_an_https_api(mocked: aioresponses) -> None:
    """An https API's $redirect to an http URL is refused before any storage request."""
    mocked.get(
        f"https://api.transactionlink.io/workflows/{EXECUTION_ID}/result",
        payload={"$redirect": f"http://evil.example/r?{SIGNED_QUERY}"},
    )
    async with TransactionLinkClient(TOKEN) as client:
        with pytest.raises(ResponseValidationError, match="refusing to follow") as caught:
            await client.workflows.get_result(EXECUTION_ID)
    assert len(mocked.requests) == 1
    assert "0123456789abcdef" not in str(caught.value)


@pytest.mark.parametrize("declared_length", [True, False])
async def test_result_over_max_bytes(
    server: ScriptedServer, storage: ScriptedServer, declared_length: bool
) -> None:
    """A result over max_bytes raises ResultTooLargeError pointing to download_result."""
    big = b"[" + b"1," * 5000 + b"1]"

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        if declared_length:
            response.content_length = len(big)
        await response.prepare(request)
        for start in range(0, len(big), 1000):
            await response.write(big[start : start + 1000])
        await response.write_eof()
        return response

    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?{SIGNED_QUERY}"}))
    storage.script("GET", "/r.json", chunked)
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ResultTooLargeError, match="download_result") as caught:
            await client.workflows.get_result(EXECUTION_ID, max_bytes=4096)
    assert caught.value.max_bytes == 4096
    assert caught.value.size == (len(big) if declared_length else None)
    assert "0123456789abcdef" not in str(caught.value)


async def test_inline_result_over_max_bytes(
    server: ScriptedServer, client: TransactionLinkClient
) -> None:
    """max_bytes bounds an inline result too."""
    server.script(*RESULT, reply(200, {"data": "y" * 2000}))
    with pytest.raises(ResultTooLargeError):
        await client.workflows.get_result(EXECUTION_ID, max_bytes=1000)


async def test_storage_answer_that_is_not_json(
    server: ScriptedServer, storage: ScriptedServer, client: TransactionLinkClient
) -> None:
    """A storage body that is not JSON raises ResponseValidationError with a masked URL."""
    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?{SIGNED_QUERY}"}))
    storage.script("GET", "/r.json", reply(200, text="not json"))
    with pytest.raises(ResponseValidationError) as caught:
        await client.workflows.get_result(EXECUTION_ID)
    assert "X-Amz-Signature=***" in str(caught.value)
