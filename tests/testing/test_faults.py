"""Fault injection: planned statuses, dropped connections and slow answers."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import pytest

from aiotlink.testing import FakeTransactionLink, GeneratedResult
from aiotlink.testing._faults import retry_after_value
from aiotlink.testing._results import CHUNK_BYTES

from ..servers import eventually, follow_answers
from .helpers import auth, error_codes, exact, find, initialise


async def running(session: aiohttp.ClientSession, fake: FakeTransactionLink) -> str:
    """Initialise an execution that stays RUNNING; return its id."""
    definition_id = fake.add_definition(statuses=["RUNNING"])
    return str((await initialise(session, fake, definition_id))["id"])


async def find_status(
    session: aiohttp.ClientSession, fake: FakeTransactionLink, execution_id: str
) -> int:
    """Find an execution and return only the status code."""
    async with session.get(
        f"{fake.url}/workflows/{execution_id}", headers=auth(fake.token)
    ) as response:
        await response.read()
        return response.status


async def cancel_status(
    session: aiohttp.ClientSession, fake: FakeTransactionLink, execution_id: str
) -> int:
    """Cancel an execution and return only the status code."""
    async with session.post(
        f"{fake.url}/workflows/{execution_id}/cancel", headers=auth(fake.token)
    ) as response:
        await response.read()
        return response.status


async def test_fail_next_answers_the_status_the_given_number_of_times(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """fail_next(times=2) answers the next two requests of the route with it, then normally."""
    execution_id = await running(session, fake)
    fake.fail_next("find", 503, times=2)
    assert fake.pending_faults("find") == 2
    for _ in range(2):
        async with session.get(
            f"{fake.url}/workflows/{execution_id}", headers=auth(fake.token)
        ) as response:
            assert response.status == 503
            assert await error_codes(response) == ["SERVICE_UNAVAILABLE"]
    assert fake.pending_faults("find") == 0
    assert await find_status(session, fake, execution_id) == 200


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        (5, "5"),
        (0, "0"),
        (datetime(2026, 11, 28, 6, 0, 30, tzinfo=UTC), "Sat, 28 Nov 2026 06:00:30 GMT"),
        ("soon", "soon"),
    ],
)
async def test_429_carries_retry_after(
    fake: FakeTransactionLink,
    session: aiohttp.ClientSession,
    retry_after: int | datetime | str,
    header: str,
) -> None:
    """A 429 fault carries Retry-After as seconds, an HTTP date, or the raw value given."""
    fake.fail_next("initialise", 429, retry_after=retry_after)
    async with session.post(f"{fake.url}/workflows", json={}, headers=auth(fake.token)) as response:
        assert response.status == 429
        assert response.headers["Retry-After"] == header
        assert await error_codes(response) == ["TOO_MANY_REQUESTS"]


async def test_a_fault_without_retry_after_has_no_header(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A status fault without retry_after sends no Retry-After header."""
    fake.fail_next("initialise", 500)
    async with session.post(f"{fake.url}/workflows", json={}, headers=auth(fake.token)) as response:
        assert response.status == 500
        assert "Retry-After" not in response.headers
        assert await error_codes(response) == ["INTERNAL_SERVER_ERROR"]


@pytest.mark.parametrize("status", [500, 502, 503])
async def test_an_html_body_looks_like_a_proxy_page(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, status: int
) -> None:
    """body="html" answers a proxy's HTML error page with text/html."""
    fake.fail_next("result", status, body="html")
    async with session.get(f"{fake.url}/workflows/x/result") as response:
        assert response.status == status
        assert response.headers["Content-Type"] == "text/html"
        page = await response.text()
    assert page.startswith("<html>")
    assert f"<h1>{status} " in page


async def test_an_empty_body_is_empty(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """body="empty" answers the status with no body and no content type."""
    fake.fail_next("cancel", 503, body="empty", retry_after=1)
    async with session.post(f"{fake.url}/workflows/x/cancel") as response:
        assert response.status == 503
        assert response.headers["Content-Length"] == "0"
        assert "Content-Type" not in response.headers
        assert await response.read() == b""


async def test_storage_faults_speak_s3(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """On storage, body="auto" is an S3 XML error; body="json" an ErrorResponse."""
    fake.fail_next("storage", 503)
    fake.fail_next("storage", 500, body="json")
    async with session.get(f"{fake.storage_url}/any") as response:
        assert response.status == 503
        assert response.headers["Content-Type"] == "application/xml"
        assert "<Code>ServiceUnavailable</Code>" in await response.text()
    async with session.get(f"{fake.storage_url}/any") as response:
        assert response.status == 500
        assert await error_codes(response) == ["INTERNAL_SERVER_ERROR"]


async def test_an_api_fault_can_be_xml(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """body="xml" on an API route answers an S3-style XML error."""
    fake.fail_next("find", 502, body="xml")
    async with session.get(f"{fake.url}/workflows/x") as response:
        assert response.status == 502
        assert "<Code>BadGateway</Code>" in await response.text()


async def test_a_status_fault_comes_before_authentication(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A planned fault answers even a request without credentials, as a proxy in front would."""
    fake.fail_next("find", 429)
    async with session.get(f"{fake.url}/workflows/x") as response:
        assert response.status == 429


async def test_aiohttp_retries_a_dropped_get_once(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """aiohttp silently retries a GET once after a drop: the fake sees two finds, the test a 200."""
    execution_id = await running(session, fake)
    fake.drop_next("find")
    assert await find_status(session, fake, execution_id) == 200
    assert len(fake.requests_for("find")) == 2


@pytest.mark.parametrize(
    ("route", "times"), [("initialise", 1), ("find", 2), ("cancel", 1), ("result", 2)]
)
async def test_drop_next_closes_before_answering(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, route: str, times: int
) -> None:
    """drop_next closes without an answer (twice for a GET, which aiohttp retries once)."""
    execution_id = await running(session, fake)
    fake.drop_next(route, times=times)
    method, url = {
        "initialise": ("POST", f"{fake.url}/workflows"),
        "find": ("GET", f"{fake.url}/workflows/{execution_id}"),
        "cancel": ("POST", f"{fake.url}/workflows/{execution_id}/cancel"),
        "result": ("GET", f"{fake.url}/workflows/{execution_id}/result"),
    }[route]
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with session.request(method, url, headers=auth(fake.token)):
            pass
    assert len(fake.requests_for(route)) == times + (route == "initialise")
    assert await find_status(session, fake, execution_id) == 200


async def test_drop_next_mid_body_sends_part_of_the_body(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """after_bytes sends the headers with the full length and that much body, then closes."""
    execution_id = await running(session, fake)
    full = json.dumps(await find(session, fake, execution_id))
    fake.drop_next("find", after_bytes=10)
    async with session.get(
        f"{fake.url}/workflows/{execution_id}", headers=auth(fake.token)
    ) as response:
        assert response.status == 200
        assert int(response.headers["Content-Length"]) > 10
        assert await response.content.readexactly(10) == b'{"id":"' + execution_id[:3].encode()
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()
    assert full


@pytest.mark.parametrize("after_bytes", [0, 10**9])
async def test_a_mid_body_drop_never_sends_the_whole_body(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, after_bytes: int
) -> None:
    """after_bytes 0 sends only headers; a number past the end still leaves the body short."""
    execution_id = await running(session, fake)
    fake.drop_next("find", after_bytes=after_bytes)
    async with session.get(
        f"{fake.url}/workflows/{execution_id}", headers=auth(fake.token)
    ) as response:
        assert response.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            await response.read()


async def test_a_mid_body_drop_of_an_empty_answer_closes_unanswered(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """after_bytes on cancel's empty answer cancels, then closes without answering."""
    execution_id = await running(session, fake)
    fake.drop_next("cancel", after_bytes=0)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await cancel_status(session, fake, execution_id)
    assert fake.status_of(execution_id) == "CANCELLED"


async def test_a_drop_before_answering_processes_nothing(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A drop without after_bytes leaves the execution as it was."""
    execution_id = await running(session, fake)
    fake.drop_next("cancel")
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await cancel_status(session, fake, execution_id)
    assert fake.status_of(execution_id) == "RUNNING"


async def read_into(response: aiohttp.ClientResponse, received: bytearray) -> None:
    """Append a response's body to ``received`` chunk by chunk, as far as it goes."""
    async for chunk in response.content.iter_chunked(CHUNK_BYTES):
        received += chunk


async def test_storage_drops_mid_stream(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A storage download cut after 1 MiB and a bit yields exactly those bytes, then an error."""
    generated = GeneratedResult(3 * CHUNK_BYTES)
    definition_id = fake.add_definition(statuses=["COMPLETED"], result=generated)
    execution = await initialise(session, fake, definition_id)
    async with session.get(
        f"{fake.url}/workflows/{execution['id']}/result", headers=auth(fake.token)
    ) as response:
        url = (await response.json())["$redirect"]
    fake.drop_next("storage", after_bytes=CHUNK_BYTES + 5)
    received = bytearray()
    async with session.get(exact(url)) as response:
        assert response.headers["Content-Length"] == str(3 * CHUNK_BYTES)
        with pytest.raises(aiohttp.ClientPayloadError):
            await read_into(response, received)
    assert bytes(received) == b"".join(generated.iter_bytes(0, CHUNK_BYTES + 5))
    fake.drop_next("storage", times=2)
    with pytest.raises(aiohttp.ServerDisconnectedError):
        async with session.get(exact(url)):
            pass


async def test_slow_next_delays_then_answers(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """slow_next waits at least the given seconds, then gives the normal answer."""
    execution_id = await running(session, fake)
    fake.slow_next("find", seconds=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await find_status(session, fake, execution_id) == 200
    assert loop.time() - started >= 0.2


async def test_a_slow_answer_times_a_client_out_and_close_ends_it(
    session: aiohttp.ClientSession,
) -> None:
    """A client with a short timeout gives up on a slow answer; closing the fake ends the wait."""
    fake = FakeTransactionLink()
    await fake.start()
    try:
        fake.slow_next("find", seconds=60)
        with pytest.raises(asyncio.TimeoutError):
            async with session.get(
                f"{fake.url}/workflows/x",
                headers=auth(fake.token),
                timeout=aiohttp.ClientTimeout(total=0.2),
            ):
                pass
    finally:
        await asyncio.wait_for(fake.close(), timeout=10)


async def test_faults_are_consumed_in_order(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Faults of one route are used one per request, in the order they were planned."""
    execution_id = await running(session, fake)
    fake.fail_next("cancel", 503)
    fake.drop_next("cancel")
    fake.fail_next("cancel", 429)
    fake.slow_next("cancel", 0)
    assert await cancel_status(session, fake, execution_id) == 503
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await cancel_status(session, fake, execution_id)
    assert await cancel_status(session, fake, execution_id) == 429
    assert fake.pending_faults("cancel") == 1
    assert await cancel_status(session, fake, execution_id) == 200
    assert fake.pending_faults("cancel") == 0


async def test_faults_stay_on_their_route(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A fault planned for one route leaves the others alone; clear_faults forgets all."""
    execution_id = await running(session, fake)
    fake.fail_next("result", 500)
    assert await find_status(session, fake, execution_id) == 200
    assert fake.pending_faults("result") == 1
    fake.clear_faults()
    assert fake.pending_faults("result") == 0


@pytest.mark.parametrize(
    ("plan", "message"),
    [
        (lambda fake: fake.fail_next("nope"), "unknown route"),
        (lambda fake: fake.fail_next("find", 200), "status"),
        (lambda fake: fake.fail_next("find", 599), "status"),
        (lambda fake: fake.fail_next("find", body="yaml"), "body"),
        (lambda fake: fake.fail_next("find", times=0), "times"),
        (lambda fake: fake.fail_next("find", times=True), "times"),
        (lambda fake: fake.fail_next("find", retry_after=-1), "Retry-After"),
        (lambda fake: fake.fail_next("find", retry_after=1.5), "Retry-After"),
        (lambda fake: fake.fail_next("find", retry_after=datetime(2030, 1, 1)), "aware"),
        (lambda fake: fake.drop_next("find", after_bytes=-1), "after_bytes"),
        (lambda fake: fake.slow_next("find", -1), "seconds"),
        (lambda fake: fake.slow_next("find", math.inf), "seconds"),
        (lambda fake: fake.pending_faults("hosted"), "unknown route"),
    ],
)
def test_bad_fault_plans_raise(
    fake: FakeTransactionLink, plan: Callable[[FakeTransactionLink], object], message: str
) -> None:
    """Planning a fault with an unknown route, status, body, count or delay raises ValueError."""
    with pytest.raises(ValueError, match=message):
        plan(fake)
    for route in ("initialise", "find", "cancel", "result", "storage"):
        assert fake.pending_faults(route) == 0


def test_retry_after_value_formats_seconds_and_dates() -> None:
    """Retry-After is whole seconds or an HTTP date in GMT, whatever the datetime's zone."""
    assert retry_after_value(None) is None
    assert retry_after_value(120) == "120"
    paris = datetime(2026, 11, 28, 7, 0, tzinfo=UTC).astimezone(
        __import__("datetime").timezone(timedelta(hours=1))
    )
    assert retry_after_value(paris) == "Sat, 28 Nov 2026 07:00:00 GMT"


async def test_a_client_hanging_up_mid_answer_logs_no_error(
    fake: FakeTransactionLink,
    session: aiohttp.ClientSession,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A client that gives up on a slow answer costs the fake no error traceback."""
    execution_id = await running(session, fake)
    fake.slow_next("find", seconds=0.2)
    served = follow_answers(fake, monkeypatch)
    with pytest.raises(asyncio.TimeoutError):
        async with session.get(
            f"{fake.url}/workflows/{execution_id}",
            headers=auth(fake.token),
            timeout=aiohttp.ClientTimeout(total=0.05),
        ):
            pass  # never reached: the timeout fires first
    # The fake wakes up, writes to the closed connection and ends its answer.
    await eventually(lambda: served and served[0].done())
    assert [r for r in caplog.records if r.levelname == "ERROR"] == []
