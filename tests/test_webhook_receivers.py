"""The webhook receivers, and the waits they wake.

ASGI (under uvicorn, and mounted in Starlette) and aiohttp, served on 127.0.0.1 and
posted to over real connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, cast

import aiohttp
import pytest
import uvicorn
from aiohttp import web
from starlette.applications import Starlette
from starlette.routing import Mount, Route

from aiotlink import TransactionLinkClient, WebhookEvent, WorkflowStatus
from aiotlink import _webhooks as webhooks_module
from aiotlink._polling import NUDGE_MIN_GAP

from .conftest import EXECUTION_ID, TOKEN, execution_body
from .servers import ScriptedServer, eventually, reply, stall
from .webhook_signing import Signer, event_body, rsa_private_key

OnEvent = Callable[[WebhookEvent], Any]
Serve = Callable[..., contextlib.AbstractAsyncContextManager[str]]


@pytest.fixture
def signer(client: TransactionLinkClient) -> Signer:
    signer = Signer(rsa_private_key())
    client.webhooks.add_key(signer.kid, signer.public_pem)
    return signer


@contextlib.asynccontextmanager
async def asgi_server(app: Any) -> AsyncIterator[str]:
    """``app`` under uvicorn on a free port of 127.0.0.1: its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    # A test's connection left open must not hold the server's shutdown.
    config = uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        await eventually(lambda: server.started)
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        await serving
        listener.close()


@contextlib.asynccontextmanager
async def served_asgi(client: TransactionLinkClient, on_event: OnEvent, **options: Any) -> Any:
    async with asgi_server(client.webhooks.asgi_app(on_event, **options)) as url:
        yield f"{url}/"


@contextlib.asynccontextmanager
async def served_in_starlette(
    client: TransactionLinkClient, on_event: OnEvent, **options: Any
) -> Any:
    # As the README says to: a route for the exact path (a mount would redirect it).
    receiver = client.webhooks.asgi_app(on_event, **options)
    app = Starlette(routes=[Route("/hooks", receiver), Mount("/mounted", receiver)])
    async with asgi_server(app) as url:
        yield f"{url}/hooks"


@contextlib.asynccontextmanager
async def served_aiohttp(client: TransactionLinkClient, on_event: OnEvent, **options: Any) -> Any:
    app = web.Application()
    app.router.add_route("*", "/hooks", client.webhooks.aiohttp_handler(on_event, **options))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"
    finally:
        await runner.cleanup()


@pytest.fixture(params=[served_asgi, served_in_starlette, served_aiohttp])
def serve(request: pytest.FixtureRequest) -> Serve:
    return cast(Serve, request.param)


async def post(
    url: str, body: bytes, signature: str | None, method: str = "POST"
) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if signature is not None:
        headers["JWS-SIGNATURE"] = signature
    async with (
        aiohttp.ClientSession() as session,
        session.request(method, url, data=body, headers=headers) as answer,
    ):
        return answer.status, await answer.text()


class Recorder:
    def __init__(self) -> None:
        self.events: list[WebhookEvent] = []

    async def __call__(self, event: WebhookEvent) -> None:
        self.events.append(event)


async def test_a_signed_delivery_is_handed_over_and_answered_204(
    client: TransactionLinkClient, signer: Signer, serve: Serve
) -> None:
    received = Recorder()
    body = event_body(EXECUTION_ID)

    async with serve(client, received) as url:
        status, _ = await post(url, body, signer.sign(body))

    assert status == 204
    (event,) = received.events
    assert event.payload == json.loads(body)
    assert event.status is WorkflowStatus.COMPLETED


async def test_mounted_under_a_prefix_it_answers_the_slash_path(
    client: TransactionLinkClient, signer: Signer
) -> None:
    received = Recorder()
    body = event_body(EXECUTION_ID)

    async with served_in_starlette(client, received) as url:
        mounted = url.replace("/hooks", "/mounted/")
        assert (await post(mounted, body, signer.sign(body)))[0] == 204

    assert len(received.events) == 1


async def test_a_plain_function_is_called_too(
    client: TransactionLinkClient, signer: Signer, serve: Serve
) -> None:
    received: list[WebhookEvent] = []
    body = event_body(EXECUTION_ID)

    async with serve(client, received.append) as url:
        assert (await post(url, body, signer.sign(body)))[0] == 204

    assert [event.delivery_key for event in received] != []


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
async def test_other_methods_are_answered_405(
    client: TransactionLinkClient, signer: Signer, serve: Serve, method: str
) -> None:
    received = Recorder()
    body = event_body(EXECUTION_ID)

    async with serve(client, received) as url:
        status, _ = await post(url, body, signer.sign(body), method=method)

    assert status == 405
    assert received.events == []


async def test_a_missing_or_bad_signature_is_answered_401_and_logged_without_the_payload(
    client: TransactionLinkClient,
    signer: Signer,
    serve: Serve,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiotlink")
    received = Recorder()
    body = event_body(EXECUTION_ID, secret="personal-data")
    signature = signer.sign(body)

    async with serve(client, received) as url:
        answers = [
            await post(url, body, None),
            await post(url, body + b" ", signature),
            await post(url, body, signature.replace(".", "")),
        ]

    assert [status for status, _ in answers] == [401, 401, 401]
    assert all(text == "invalid or missing signature" for _, text in answers)
    assert received.events == []
    refusals = [r.getMessage() for r in caplog.records if "refused a webhook" in r.getMessage()]
    assert len(refusals) == 3
    assert not any("personal-data" in r.getMessage() for r in caplog.records)


async def test_two_signature_headers_are_refused(
    client: TransactionLinkClient, signer: Signer, serve: Serve
) -> None:
    received = Recorder()
    body = event_body(EXECUTION_ID)
    signature = signer.sign(body)

    async with serve(client, received) as url, aiohttp.ClientSession() as session:
        headers = [("JWS-SIGNATURE", signature), ("JWS-SIGNATURE", signature)]
        async with session.post(url, data=body, headers=headers) as answer:
            assert answer.status == 401

    assert received.events == []


async def test_a_body_over_the_limit_is_answered_413_without_reading_it(
    client: TransactionLinkClient, signer: Signer, serve: Serve
) -> None:
    received = Recorder()
    body = event_body(EXECUTION_ID)

    async with serve(client, received, max_body_bytes=len(body) - 1) as url:
        assert (await post(url, body, signer.sign(body)))[0] == 413
        # A Content-Length of 1 GiB, and only a few bytes sent: the answer comes anyway.
        host, port = url.split("//")[1].split("/")[0].split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        path = "/" + url.split("//")[1].split("/", 1)[1]
        writer.write(
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {2**30}\r\n"
            f"JWS-SIGNATURE: {signer.sign(body)}\r\n\r\n{{".encode()
        )
        await writer.drain()
        async with asyncio.timeout(5):
            status_line = await reader.readline()
        writer.close()
        # And a chunked body with no length, over the limit: 413 once it passes.
        async with aiohttp.ClientSession() as session:

            async def chunks() -> AsyncIterator[bytes]:
                for _ in range(3):
                    yield body

            async with session.post(
                url, data=chunks(), headers={"JWS-SIGNATURE": signer.sign(body)}
            ) as answer:
                chunked_status = answer.status

    assert status_line.split()[1] == b"413"
    assert chunked_status == 413
    assert received.events == []


async def test_a_failing_handler_is_answered_500_and_logged(
    client: TransactionLinkClient,
    signer: Signer,
    serve: Serve,
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = event_body(EXECUTION_ID)

    async def on_event(event: WebhookEvent) -> None:
        raise RuntimeError("the queue is down")

    async with serve(client, on_event) as url:
        status, _ = await post(url, body, signer.sign(body))

    assert status == 500
    (record,) = [r for r in caplog.records if "handler failed" in r.getMessage()]
    assert record.exc_info is not None
    assert "the queue is down" in str(record.exc_info[1])


async def test_a_slow_handler_is_cancelled_and_answered_503(
    client: TransactionLinkClient, signer: Signer, serve: Serve
) -> None:
    body = event_body(EXECUTION_ID)
    cancelled = asyncio.Event()

    async def on_event(event: WebhookEvent) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async with serve(client, on_event, handler_timeout=0.2) as url:
        status, _ = await post(url, body, signer.sign(body))

    assert status == 503
    assert cancelled.is_set()


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"max_body_bytes": 0}, "max_body_bytes"),
        ({"handler_timeout": -1}, "handler_timeout"),
        ({"handler_timeout": None}, "handler_timeout"),
    ],
)
def test_receiver_options_are_checked(
    client: TransactionLinkClient, options: dict[str, Any], problem: str
) -> None:
    with pytest.raises((ValueError, TypeError), match=problem):
        client.webhooks.asgi_app(print, **options)
    for not_callable in ("print", None):
        handler: Any = not_callable
        with pytest.raises(ValueError, match="on_event"):
            client.webhooks.aiohttp_handler(handler)


# Waits woken by webhooks


@pytest.fixture
def lookups(server: ScriptedServer) -> Callable[[], int]:
    return lambda: len(server.requests_to("GET", f"/workflows/{EXECUTION_ID}"))


def script_statuses(server: ScriptedServer, *statuses: str) -> None:
    server.script(
        "GET",
        f"/workflows/{EXECUTION_ID}",
        *(reply(200, execution_body(status=status)) for status in statuses),
    )


async def test_a_delivery_ends_a_rare_polling_wait_at_once(
    client: TransactionLinkClient,
    server: ScriptedServer,
    signer: Signer,
    serve: Serve,
    lookups: Callable[[], int],
) -> None:
    script_statuses(server, "RUNNING", "COMPLETED")
    seen_by_handler: list[int] = []

    async def on_event(event: WebhookEvent) -> None:
        seen_by_handler.append(lookups())

    async with serve(client, on_event) as url:
        wait = asyncio.create_task(
            client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60)
        )
        await eventually(lambda: lookups() == 1)
        body = event_body(EXECUTION_ID, "COMPLETED")
        assert (await post(url, body, signer.sign(body)))[0] == 204
        async with asyncio.timeout(10):  # the next scheduled poll is a minute away
            execution = await wait

    assert execution.status is WorkflowStatus.COMPLETED
    assert lookups() == 2
    assert seen_by_handler == [1]  # the nudge came before on_event (its lookup in flight)


async def test_nudge_without_a_wait_costs_nothing(
    client: TransactionLinkClient, server: ScriptedServer
) -> None:
    assert client.workflows.nudge(EXECUTION_ID) is False
    await asyncio.sleep(0.05)
    assert server.seen == []


async def test_a_burst_of_nudges_costs_one_lookup(
    client: TransactionLinkClient, server: ScriptedServer, lookups: Callable[[], int]
) -> None:
    script_statuses(server, "RUNNING")
    wait = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60))
    await eventually(lambda: lookups() == 1)
    await asyncio.sleep(0.05)  # the first answer is in; the next poll a minute away

    woke = [client.workflows.nudge(EXECUTION_ID) for _ in range(100)]
    await asyncio.sleep(0.3)

    assert all(woke)
    assert lookups() == 2
    wait.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await wait


async def test_nudges_during_a_lookup_cost_one_more_after_it(
    client: TransactionLinkClient, server: ScriptedServer, lookups: Callable[[], int]
) -> None:
    server.script(
        "GET",
        f"/workflows/{EXECUTION_ID}",
        stall(0.3, reply(200, execution_body(status="RUNNING"))),
        reply(200, execution_body(status="COMPLETED")),
    )

    wait = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60))
    await eventually(lambda: lookups() == 1)  # in flight: its answer may predate the nudge
    for _ in range(10):
        client.workflows.nudge(EXECUTION_ID)
    async with asyncio.timeout(10):
        execution = await wait

    assert execution.status is WorkflowStatus.COMPLETED
    assert lookups() == 2


async def test_a_non_terminal_status_wakes_only_waits_that_want_changes(
    client: TransactionLinkClient, server: ScriptedServer, lookups: Callable[[], int]
) -> None:
    script_statuses(server, "RUNNING", "AWAITING", "COMPLETED")
    wait = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60))
    await eventually(lambda: lookups() == 1)
    await asyncio.sleep(0.05)

    assert client.workflows.nudge(EXECUTION_ID, status="AWAITING") is True
    await asyncio.sleep(0.2)
    assert lookups() == 1  # only the end is wanted: nothing to learn from AWAITING

    statuses: list[WorkflowStatus] = []
    watching = asyncio.create_task(
        client.workflows.wait_for_completion(
            EXECUTION_ID, poll_interval=60, on_status=lambda e: statuses.append(e.status)
        )
    )
    await eventually(lambda: statuses == [WorkflowStatus.RUNNING])
    assert client.workflows.nudge(EXECUTION_ID, status=WorkflowStatus.RUNNING) is True
    await asyncio.sleep(0.2)
    assert lookups() == 1  # RUNNING is already known
    client.workflows.nudge(EXECUTION_ID, status="AWAITING")
    await eventually(lambda: statuses == [WorkflowStatus.RUNNING, WorkflowStatus.AWAITING])
    assert lookups() == 2
    client.workflows.nudge(uuid_upper(EXECUTION_ID), status="COMPLETED")
    async with asyncio.timeout(10):
        results = await asyncio.gather(wait, watching)

    assert [execution.status for execution in results] == [WorkflowStatus.COMPLETED] * 2
    assert lookups() == 3


def uuid_upper(text: str) -> str:
    return text.upper()


async def test_nudge_honours_retry_after(
    client: TransactionLinkClient, server: ScriptedServer, lookups: Callable[[], int]
) -> None:
    server.script(
        "GET",
        f"/workflows/{EXECUTION_ID}",
        reply(200, execution_body(status="RUNNING"), headers={"Retry-After": "1"}),
        reply(200, execution_body(status="COMPLETED")),
    )
    wait = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60))
    await eventually(lambda: lookups() == 1)
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    nudged_at = loop.time()

    client.workflows.nudge(EXECUTION_ID)
    async with asyncio.timeout(10):
        await wait

    assert loop.time() - nudged_at >= 0.9  # not before the second the server asked for
    assert lookups() == 2


async def test_a_nudge_from_another_thread_reaches_the_waits(
    client: TransactionLinkClient, server: ScriptedServer, lookups: Callable[[], int]
) -> None:
    script_statuses(server, "RUNNING", "COMPLETED")
    wait = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60))
    await eventually(lambda: lookups() == 1)
    await asyncio.sleep(0.05)

    woke = await asyncio.to_thread(client.workflows.nudge, EXECUTION_ID)
    other = "00000000-0000-4000-8000-00000000abcd"
    unknown = await asyncio.to_thread(client.workflows.nudge, other)
    async with asyncio.timeout(10):
        execution = await wait

    assert (woke, unknown) == (True, False)
    assert execution.status is WorkflowStatus.COMPLETED


@pytest.mark.parametrize("bad", ["", "a/b", None, 7])
def test_nudge_checks_its_arguments(client: TransactionLinkClient, bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        client.workflows.nudge(bad)
    with pytest.raises(ValueError, match="status"):
        client.workflows.nudge(EXECUTION_ID, status="")


async def test_views_share_keys_and_nudge_each_others_waits(
    server: ScriptedServer, lookups: Callable[[], int]
) -> None:
    script_statuses(server, "RUNNING", "COMPLETED")
    signer = Signer(rsa_private_key())
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        client.webhooks.add_key(signer.kid, signer.public_pem)
        view = client.with_options(timeout=5)
        wait = asyncio.create_task(
            view.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60)
        )
        await eventually(lambda: lookups() == 1)
        await asyncio.sleep(0.05)
        async with served_aiohttp(client, lambda event: None) as url:
            body = event_body(EXECUTION_ID)
            assert (await post(url, body, signer.sign(body)))[0] == 204
            async with asyncio.timeout(10):
                await wait
        assert (await view.webhooks.verify(body, signer.sign(body))).key_id == signer.kid


async def test_waits_on_the_fake_finish_on_its_webhooks() -> None:
    from aiotlink.testing import FakeTransactionLink

    received: list[WebhookEvent] = []
    async with (
        FakeTransactionLink(webhook_retry_seconds=0.05) as fake,
        TransactionLinkClient(fake.token, base_url=fake.url) as client,
        served_aiohttp(client, received.append) as url,
    ):
        fake.set_webhook_url(url)
        kyc = fake.add_definition(
            "kyc", statuses=["RUNNING", "AWAITING", "COMPLETED"], step_seconds=0.2
        )
        execution = await client.workflows.initialise(kyc)
        async with asyncio.timeout(10):  # polling alone: a minute
            done = await client.workflows.wait_for_completion(execution.id, poll_interval=60)
        await fake.webhooks_settled(timeout=5)

    assert done.status is WorkflowStatus.COMPLETED
    assert [event.status for event in received] == [
        WorkflowStatus.RUNNING,
        WorkflowStatus.AWAITING,
        WorkflowStatus.COMPLETED,
    ]
    assert {event.key_id for event in received} == {fake.webhook_key_id}
    # The first lookup, and one for the completion: the other events wake no one.
    assert len(fake.requests_for("find")) == 2
    assert all(delivery.outcome == "delivered" for delivery in fake.webhook_deliveries)


async def test_a_nudged_lookup_waiting_for_a_connection_goes_first(server: ScriptedServer) -> None:
    ids = [f"00000000-0000-4000-8000-00000000000{number}" for number in range(4)]
    for number, execution_id in enumerate(ids):
        answer = reply(200, execution_body(id=execution_id, status="COMPLETED"))
        server.script(
            "GET", f"/workflows/{execution_id}", stall(0.2, answer) if number == 0 else answer
        )
    async with TransactionLinkClient(TOKEN, base_url=server.url, connection_limit=1) as client:
        waits = [asyncio.create_task(client.workflows.wait_for_completion(id_)) for id_ in ids]
        await eventually(lambda: len(server.seen) == 1)  # the first holds the one connection

        assert client.workflows.nudge(ids[3]) is True
        assert client.workflows.nudge(ids[3]) is True  # once in line is enough
        async with asyncio.timeout(10):
            await asyncio.gather(*waits)

    order = [seen.path.rsplit("/", 1)[1] for seen in server.seen]
    assert order == [ids[0], ids[3], ids[1], ids[2]]  # no lookup twice


# What a review found: each of these failed, or no test caught its check.


async def test_a_blank_status_is_no_status_and_the_delivery_is_handed_over(
    client: TransactionLinkClient, signer: Signer, serve: Serve
) -> None:
    received = Recorder()
    body = event_body(EXECUTION_ID, status="   ")

    async with serve(client, received) as url:
        status, _ = await post(url, body, signer.sign(body))

    assert status == 204
    (event,) = received.events
    assert event.status is None


async def test_a_handler_raising_its_own_timeout_error_is_a_failure(
    client: TransactionLinkClient, signer: Signer, serve: Serve
) -> None:
    body = event_body(EXECUTION_ID)

    async def on_event(event: WebhookEvent) -> None:
        raise TimeoutError("the queue timed out")

    async with serve(client, on_event) as url:
        status, _ = await post(url, body, signer.sign(body))

    assert status == 500


async def test_a_wait_started_with_the_id_in_upper_case_is_woken(
    client: TransactionLinkClient, server: ScriptedServer, lookups: Callable[[], int]
) -> None:
    script_statuses(server, "RUNNING", "COMPLETED")
    wait = asyncio.create_task(
        client.workflows.wait_for_completion(EXECUTION_ID.upper(), poll_interval=60)
    )
    await eventually(lambda: lookups() == 1)
    await asyncio.sleep(0.05)

    assert client.workflows.nudge(uuid.UUID(EXECUTION_ID)) is True
    async with asyncio.timeout(10):
        assert (await wait).status is WorkflowStatus.COMPLETED


async def test_a_flood_of_nudges_costs_a_few_lookups_a_second(
    client: TransactionLinkClient, server: ScriptedServer, lookups: Callable[[], int]
) -> None:
    script_statuses(server, "RUNNING")
    wait = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60))
    await eventually(lambda: lookups() == 1)
    loop = asyncio.get_running_loop()
    started = loop.time()

    while loop.time() - started < 1.0:
        client.workflows.nudge(EXECUTION_ID)
        await asyncio.sleep(0.005)

    assert lookups() - 1 <= 1.0 / NUDGE_MIN_GAP + 1
    wait.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await wait


async def test_a_replayed_delivery_costs_no_lookup(
    client: TransactionLinkClient,
    server: ScriptedServer,
    signer: Signer,
    lookups: Callable[[], int],
) -> None:
    script_statuses(server, "RUNNING")
    wait = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60))
    await eventually(lambda: lookups() == 1)
    body = event_body(EXECUTION_ID)
    received = Recorder()

    async with served_aiohttp(client, received) as url:
        for _ in range(5):
            assert (await post(url, body, signer.sign(body)))[0] == 204
            await asyncio.sleep(NUDGE_MIN_GAP)

    assert lookups() == 2  # one for the first delivery; the replays are handed over only
    assert len(received.events) == 5
    wait.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await wait


async def test_waits_are_nudged_even_when_the_handler_fails(
    client: TransactionLinkClient,
    server: ScriptedServer,
    signer: Signer,
    lookups: Callable[[], int],
) -> None:
    script_statuses(server, "RUNNING", "COMPLETED")

    async def on_event(event: WebhookEvent) -> None:
        raise RuntimeError("down")

    async with served_aiohttp(client, on_event) as url:
        wait = asyncio.create_task(
            client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60)
        )
        await eventually(lambda: lookups() == 1)
        await asyncio.sleep(0.05)
        body = event_body(EXECUTION_ID)
        assert (await post(url, body, signer.sign(body)))[0] == 500
        async with asyncio.timeout(10):
            assert (await wait).status is WorkflowStatus.COMPLETED


async def raw_post(url: str, head: str, part: bytes) -> tuple[bytes, bytes]:
    """Send ``head`` and ``part`` of a body, and read the answer's head: status, headers."""
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(f"POST {path} HTTP/1.1\r\nHost: x\r\n{head}\r\n".encode() + part)
    await writer.drain()
    try:
        async with asyncio.timeout(5):  # the rest of the body is never sent
            status_line = await reader.readline()
            headers = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    return status_line.split()[1], headers.lower()


async def test_no_signature_is_refused_before_the_body_is_read(
    client: TransactionLinkClient, serve: Serve
) -> None:
    async with serve(client, Recorder()) as url:
        status, _ = await raw_post(url, "Content-Length: 1000\r\nConnection: close\r\n", b"{")

    assert status == b"401"


async def test_a_413_closes_the_connection(
    client: TransactionLinkClient, signer: Signer, serve: Serve
) -> None:
    body = event_body(EXECUTION_ID)
    async with serve(client, Recorder(), max_body_bytes=10) as url:
        head = f"Content-Length: {2**30}\r\nJWS-SIGNATURE: {signer.sign(body)}\r\n"
        status, headers = await raw_post(url, head, b"{")

    assert status == b"413"
    assert b"connection: close" in headers  # the rest of the body is not waited for


async def test_a_body_that_trickles_in_is_answered_408(
    client: TransactionLinkClient,
    signer: Signer,
    serve: Serve,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhooks_module, "RECEIVE_SECONDS", 0.2)
    body = event_body(EXECUTION_ID)
    async with serve(client, Recorder()) as url:
        head = f"Content-Length: {len(body)}\r\nJWS-SIGNATURE: {signer.sign(body)}\r\n"
        status, _ = await raw_post(url, head, body[:5])

    assert status == b"408"


async def test_a_key_that_takes_too_long_is_answered_503(
    server: ScriptedServer, serve: Serve, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks_module, "VERIFY_SECONDS", 0.2)
    signer = Signer(rsa_private_key())
    server.script("GET", f"/auth/webhooks/key/{signer.kid}", stall(2, reply(text="x")))
    body = event_body(EXECUTION_ID)

    async with (
        TransactionLinkClient(TOKEN, base_url=server.url) as client,
        serve(client, Recorder()) as url,
    ):
        status, _ = await post(url, body, signer.sign(body))

    assert status == 503


@pytest.mark.parametrize(("length", "status"), [("\u00b2", 400), ("9" * 5000, 413), ("-1", 400)])
async def test_a_malformed_content_length_is_answered(
    client: TransactionLinkClient, length: str, status: int
) -> None:
    app = client.webhooks.asgi_app(Recorder())
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"{}", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "headers": [(b"content-length", length.encode()), (b"jws-signature", b"a..b")],
    }
    await app(scope, receive, send)

    assert sent[0]["status"] == status


async def test_after_a_nudge_polls_keep_to_the_schedule(
    client: TransactionLinkClient, server: ScriptedServer, lookups: Callable[[], int]
) -> None:
    script_statuses(server, "RUNNING")
    wait = asyncio.create_task(
        client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=0.3, max_poll_interval=0.3)
    )
    await eventually(lambda: lookups() == 1)
    await asyncio.sleep(0.05)

    client.workflows.nudge(EXECUTION_ID)
    await asyncio.sleep(1.0)

    assert lookups() <= 1 + 1 + 1.0 / (0.3 * 0.8) + 1  # the first, the nudge, the schedule
    wait.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await wait


async def test_a_nudge_during_a_lookup_honours_that_answers_retry_after(
    client: TransactionLinkClient, server: ScriptedServer, lookups: Callable[[], int]
) -> None:
    server.script(
        "GET",
        f"/workflows/{EXECUTION_ID}",
        stall(0.2, reply(200, execution_body(status="RUNNING"), headers={"Retry-After": "1"})),
        reply(200, execution_body(status="COMPLETED")),
    )
    wait = asyncio.create_task(client.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60))
    await eventually(lambda: lookups() == 1)
    loop = asyncio.get_running_loop()
    nudged_at = loop.time()

    client.workflows.nudge(EXECUTION_ID)  # in flight: one more after it, but not before 1 s
    async with asyncio.timeout(10):
        await wait

    assert lookups() == 2
    assert loop.time() - nudged_at >= 0.9 + 0.2  # the stalled answer, then its Retry-After


async def test_a_nudge_reaches_the_waits_of_every_view(
    client: TransactionLinkClient, server: ScriptedServer, lookups: Callable[[], int]
) -> None:
    script_statuses(server, "RUNNING", "RUNNING", "COMPLETED")
    view = client.with_options(timeout=7)
    await client.workflows.find(EXECUTION_ID)
    assert client.workflows._poller.active_polls == 0  # the client's own poller: unused
    wait = asyncio.create_task(view.workflows.wait_for_completion(EXECUTION_ID, poll_interval=60))
    await eventually(lambda: lookups() == 2)
    await asyncio.sleep(0.05)

    assert client.workflows.nudge(EXECUTION_ID) is True
    async with asyncio.timeout(10):
        assert (await wait).status is WorkflowStatus.COMPLETED


async def test_a_queued_nudge_costs_one_lookup_not_two(server: ScriptedServer) -> None:
    first, nudged = EXECUTION_ID, "00000000-0000-4000-8000-000000000009"
    server.script(
        "GET", f"/workflows/{first}", stall(0.2, reply(200, execution_body(status="COMPLETED")))
    )
    server.script("GET", f"/workflows/{nudged}", reply(200, execution_body(status="RUNNING")))
    async with TransactionLinkClient(TOKEN, base_url=server.url, connection_limit=1) as client:
        waits = [
            asyncio.create_task(client.workflows.wait_for_completion(id_, poll_interval=60))
            for id_ in (first, nudged)
        ]
        await eventually(lambda: len(server.seen) == 1)  # the first holds the one connection
        client.workflows.nudge(nudged)  # queued: its coming lookup answers the nudge
        await eventually(lambda: len(server.requests_to("GET", f"/workflows/{nudged}")) == 1)
        await asyncio.sleep(0.3)

        assert len(server.requests_to("GET", f"/workflows/{nudged}")) == 1
        for wait in waits:
            wait.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
