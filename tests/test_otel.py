"""OpenTelemetry spans and metrics, read with the SDK's in-memory exporter, against the fake.

The span trees, attributes and metrics of calls, waits, runs, downloads and webhooks.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import sys
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import aiotlink.otel
from aiotlink import (
    DownloadedResult,
    NotFoundError,
    TransactionLinkClient,
    WaitTimeoutError,
    WebhookEvent,
    WebhookVerificationError,
    WorkflowFailedError,
    _instrument,
)
from aiotlink.testing import FakeTransactionLink

from .servers import eventually, settled

# Over the fake's redirect threshold below: a result that comes from pre-signed storage.
BIG = {"blob": "x" * 300_000}
THRESHOLD = 100_000
FAST = {"poll_interval": 0.05, "max_poll_interval": 0.05}


@attrs.define
class Telemetry:
    """What the client exported while instrumented."""

    exporter: InMemorySpanExporter
    reader: InMemoryMetricReader
    provider: TracerProvider

    def spans(self) -> tuple[ReadableSpan, ...]:
        return self.exporter.get_finished_spans()

    def named(self, name: str) -> list[ReadableSpan]:
        return [span for span in self.spans() if span.name == name]

    def one(self, name: str) -> ReadableSpan:
        (span,) = self.named(name)
        return span

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        """The spans whose parent is ``parent``, in the order they started."""
        assert parent.context is not None
        found = [
            span
            for span in self.spans()
            if span.parent is not None and span.parent.span_id == parent.context.span_id
        ]
        return sorted(found, key=lambda span: span.start_time or 0)

    def metrics(self) -> dict[str, list[Any]]:
        """Every data point, by instrument name."""
        points: dict[str, list[Any]] = {}
        data = self.reader.get_metrics_data()
        assert data is not None
        for resource in data.resource_metrics:
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    points.setdefault(metric.name, []).extend(metric.data.data_points)
        return points

    def caller(self) -> Any:
        """A span of the caller's own, that the client's spans must be children of."""
        return self.provider.get_tracer("test").start_as_current_span("caller")


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    """The client instrumented with an in-memory exporter and reader; off again after."""
    yield from instrumented()


def instrumented() -> Iterator[Telemetry]:
    """The telemetry fixture's body, for other test modules' fixtures."""
    exporter, reader = InMemorySpanExporter(), InMemoryMetricReader()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    meters = MeterProvider(metric_readers=[reader])
    aiotlink.otel.instrument(tracer_provider=provider, meter_provider=meters)
    try:
        yield Telemetry(exporter, reader, provider)
    finally:
        aiotlink.otel.uninstrument()
        provider.shutdown()
        meters.shutdown()


@pytest.fixture
async def fake() -> AsyncIterator[FakeTransactionLink]:
    async with FakeTransactionLink(redirect_threshold=THRESHOLD) as started:
        yield started


@pytest.fixture
async def client(fake: FakeTransactionLink) -> AsyncIterator[TransactionLinkClient]:
    async with TransactionLinkClient(fake.token, base_url=fake.url, retry_backoff=False) as made:
        yield made


async def started(
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    statuses: Sequence[str] = ("COMPLETED",),
    result: Any = None,
) -> str:
    definition = fake.add_definition(statuses=list(statuses), result=result or {"ok": True})
    return (await client.workflows.initialise(definition)).id


def attempt_shape(span: ReadableSpan) -> tuple[str, Any, Any]:
    attributes = span.attributes or {}
    return span.name, attributes.get("http.response.status_code"), attributes.get("error.type")


# --- API calls -------------------------------------------------------------------------


async def test_find_is_a_call_span_with_one_client_span_per_attempt(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """find(): a child of the caller's span, and its attempt follows the HTTP conventions."""
    execution_id = await started(fake, client)
    telemetry.exporter.clear()
    with telemetry.caller():
        await client.workflows.find(execution_id)
    caller = telemetry.one("caller")
    (call,) = telemetry.children(caller)
    assert call.name == "aiotlink.find"
    assert call.attributes == {"http.request.method": "GET", "url.template": "/workflows/{id}"}
    (attempt,) = telemetry.children(call)
    assert attempt.kind is SpanKind.CLIENT
    assert attempt.name == "GET /workflows/{id}"
    host, port = fake.url.removeprefix("http://").split(":")
    assert attempt.attributes == {
        "http.request.method": "GET",
        "server.address": host,
        "server.port": int(port),
        "url.template": "/workflows/{id}",
        "url.full": f"{fake.url}/workflows/{execution_id}",
        "http.response.status_code": 200,
    }
    assert call.status.status_code is StatusCode.UNSET


async def test_retries_are_attempts_with_resend_counts_and_sleeps_as_events(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Two 503s then 200: three attempt spans, resend counts 1 and 2, two retry events."""
    execution_id = await started(fake, client)
    telemetry.exporter.clear()
    fake.fail_next("find", 503, times=2)
    await client.workflows.find(execution_id)
    call = telemetry.one("aiotlink.find")
    attempts = telemetry.children(call)
    assert [attempt_shape(span) for span in attempts] == [
        ("GET /workflows/{id}", 503, "503"),
        ("GET /workflows/{id}", 503, "503"),
        ("GET /workflows/{id}", 200, None),
    ]
    resends = [(span.attributes or {}).get("http.request.resend_count") for span in attempts]
    assert resends == [None, 1, 2]
    assert [span.status.status_code for span in attempts] == [
        StatusCode.ERROR,
        StatusCode.ERROR,
        StatusCode.UNSET,
    ]
    retries = [event for event in call.events if event.name == "aiotlink.retry"]
    assert [dict(event.attributes or {}) for event in retries] == [
        {"aiotlink.retry.delay": 0.0, "aiotlink.retry.failed_attempt": 1, "error.type": "503"},
        {"aiotlink.retry.delay": 0.0, "aiotlink.retry.failed_attempt": 2, "error.type": "503"},
    ]
    (counted,) = telemetry.metrics()["aiotlink.client.retries"]
    assert counted.value == 2
    assert dict(counted.attributes) == {
        "http.request.method": "GET",
        "url.template": "/workflows/{id}",
        "error.type": "503",
    }


async def test_a_lost_connection_and_a_final_error_mark_their_spans(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """No answer: error.type is the error class; a 404 ends the call with error.type 404."""
    execution_id = await started(fake, client)
    telemetry.exporter.clear()
    fake.drop_next("find", times=2)  # aiohttp itself retries a GET once after a drop
    await client.workflows.find(execution_id)
    first, second = telemetry.children(telemetry.one("aiotlink.find"))
    assert attempt_shape(first) == ("GET /workflows/{id}", None, "APIConnectionError")
    assert attempt_shape(second)[1:] == (200, None)
    telemetry.exporter.clear()
    with pytest.raises(NotFoundError):
        await client.workflows.find("00000000-0000-0000-0000-000000000000")
    call = telemetry.one("aiotlink.find")
    assert call.status.status_code is StatusCode.ERROR
    assert (call.attributes or {})["error.type"] == "404"
    assert call.status.description == "404"  # the type only, never the error's text


async def test_request_duration_is_by_method_route_and_status(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """One histogram point per method, route template and status; no raw id anywhere."""
    execution_id = await started(fake, client)
    fake.fail_next("find", 503)
    await client.workflows.find(execution_id)
    await client.workflows.cancel(await started(fake, client, ["RUNNING", "COMPLETED"]))
    points = telemetry.metrics()["http.client.request.duration"]
    shapes = {
        (
            point.attributes["http.request.method"],
            point.attributes["url.template"],
            point.attributes.get("http.response.status_code"),
        ): point.count
        for point in points
    }
    assert shapes == {
        ("POST", "/workflows", 200): 2,
        ("GET", "/workflows/{id}", 503): 1,
        ("GET", "/workflows/{id}", 200): 1,
        ("POST", "/workflows/{id}/cancel", 200): 1,
    }
    assert all(point.sum > 0 for point in points)
    assert execution_id not in json.dumps([dict(point.attributes) for point in points])


# --- waits, watches, runs ----------------------------------------------------------------


async def test_wait_span_counts_its_polls_and_records_each_status(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """wait_for_completion: one span, its polls as children, statuses as events, the end."""
    # The fake walks one status per find: initialise sees the first.
    walk = ["INITIALISED", "RUNNING", "RUNNING", "AWAITING", "COMPLETED"]
    execution_id = await started(fake, client, walk)
    telemetry.exporter.clear()
    with telemetry.caller():
        await client.workflows.wait_for_completion(execution_id, **FAST)
    (wait,) = telemetry.children(telemetry.one("caller"))
    assert wait.name == "aiotlink.wait"
    polls = telemetry.children(wait)
    assert [span.name for span in polls] == ["aiotlink.poll"] * 4
    assert all(
        [child.name for child in telemetry.children(span)] == ["GET /workflows/{id}"]
        for span in polls
    )
    assert (polls[0].attributes or {})["aiotlink.execution.id"] == execution_id
    statuses = [(event.attributes or {})["aiotlink.execution.status"] for event in wait.events]
    assert statuses == ["RUNNING", "AWAITING", "COMPLETED"]
    assert wait.attributes == {
        "aiotlink.execution.id": execution_id,
        "aiotlink.wait.every_change": False,
        "aiotlink.execution.status": "COMPLETED",
        "aiotlink.wait.polls": 4,
        "aiotlink.outcome": "completed",
    }
    metrics = telemetry.metrics()
    assert sum(point.value for point in metrics["aiotlink.polls"]) == 4
    (active,) = metrics["aiotlink.waits.active"]
    assert active.value == 0  # up once, down once
    (duration,) = metrics["aiotlink.wait.duration"]
    assert dict(duration.attributes) == {"aiotlink.outcome": "completed"}
    assert duration.count == 1


async def test_watch_left_early_is_cancelled_and_failed_ends_are_failed(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A watch its caller leaves: cancelled; a wait that ends FAILED: failed, an error."""
    running = await started(fake, client, ["RUNNING", "RUNNING", "COMPLETED"])
    async with asyncio.timeout(5):
        watching = client.workflows.watch(running, **FAST)
        async for _ in watching:
            break
        await watching.aclose()
    failing = await started(fake, client, ["RUNNING", "FAILED"])
    with pytest.raises(WorkflowFailedError):
        await client.workflows.wait_for_completion(failing, **FAST)
    left, ended = telemetry.named("aiotlink.wait")
    assert (left.attributes or {})["aiotlink.outcome"] == "cancelled"
    assert (left.attributes or {})["aiotlink.wait.every_change"] is True
    assert left.status.status_code is StatusCode.UNSET
    assert (ended.attributes or {})["aiotlink.outcome"] == "failed"
    assert (ended.attributes or {})["aiotlink.execution.status"] == "FAILED"
    assert ended.status.status_code is StatusCode.ERROR
    outcomes = {
        point.attributes["aiotlink.outcome"]: point.count
        for point in telemetry.metrics()["aiotlink.wait.duration"]
    }
    assert outcomes == {"cancelled": 1, "failed": 1}


async def test_timeouts_errors_and_cancellations_are_outcomes(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Past its timeout: timeout; a 404: failed with error.type 404; a task cancelled."""
    endless = await started(fake, client, ["RUNNING", "COMPLETED"])
    fake.add_definition("slow", statuses=["RUNNING", "COMPLETED"], step_seconds=60)
    slow = (await client.workflows.initialise("slow")).id
    with pytest.raises(WaitTimeoutError):
        await client.workflows.wait_for_completion(slow, timeout=0.2, **FAST)
    with pytest.raises(NotFoundError):
        await client.workflows.wait_for_completion("00000000-0000-0000-0000-000000000000")
    finds = len(fake.requests_for("find"))
    waiting = asyncio.create_task(client.workflows.wait_for_completion(slow, **FAST))
    await eventually(lambda: len(fake.requests_for("find")) >= finds + 2)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    timed_out, not_found, cancelled = telemetry.named("aiotlink.wait")
    assert (timed_out.attributes or {})["aiotlink.outcome"] == "timeout"
    assert (timed_out.attributes or {})["error.type"] == "WaitTimeoutError"
    assert (timed_out.attributes or {})["aiotlink.execution.status"] == "RUNNING"
    assert (not_found.attributes or {})["aiotlink.outcome"] == "failed"
    assert (not_found.attributes or {})["error.type"] == "404"
    assert (cancelled.attributes or {})["aiotlink.outcome"] == "cancelled"
    assert endless  # started and never waited on: no span of its own
    assert len(telemetry.named("aiotlink.wait")) == 3


async def test_a_shared_poll_belongs_to_the_first_wait_and_links_the_others(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Two waits on one execution share its polls: each poll under the first, linked to both."""
    execution_id = await started(fake, client, ["RUNNING", "RUNNING", "COMPLETED"])
    telemetry.exporter.clear()
    with telemetry.caller():
        await asyncio.gather(
            client.workflows.wait_for_completion(execution_id, **FAST),
            client.workflows.wait_for_completion(execution_id, **FAST),
        )
    first, second = telemetry.named("aiotlink.wait")
    polls = telemetry.named("aiotlink.poll")
    assert len(polls) == len(fake.requests_for("find"))
    owned = [poll for poll in polls if poll.parent and poll.parent.span_id in _ids(first)]
    other = second if owned else first
    owner = first if owned else second
    assert all(poll.parent and poll.parent.span_id in _ids(owner) for poll in polls)
    assert all([link.context.span_id for link in poll.links] == list(_ids(other)) for poll in polls)
    assert (first.attributes or {})["aiotlink.wait.polls"] == len(polls)
    assert (second.attributes or {})["aiotlink.wait.polls"] == len(polls)


def _ids(span: ReadableSpan) -> set[int]:
    assert span.context is not None
    return {span.context.span_id}


async def test_run_is_one_span_over_initialise_wait_and_result(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """run(): its children are the initialise call, the wait (with its polls) and the result."""
    definition = fake.add_definition(statuses=["RUNNING", "COMPLETED"], result={"ok": 1})
    with telemetry.caller():
        ran = await client.workflows.run(definition, **FAST)
    (run,) = telemetry.children(telemetry.one("caller"))
    assert run.name == "aiotlink.run"
    assert [span.name for span in telemetry.children(run)] == [
        "aiotlink.initialise",
        "aiotlink.wait",
        "aiotlink.get_result",
    ]
    assert run.attributes == {
        "aiotlink.workflow.definition_id": definition,
        "aiotlink.execution.id": ran.execution.id,
        "aiotlink.execution.status": "COMPLETED",
        "aiotlink.outcome": "completed",
    }
    wait = telemetry.one("aiotlink.wait")
    assert {span.name for span in telemetry.children(wait)} == {"aiotlink.poll"}


async def test_a_run_that_fails_or_times_out_says_so(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """run() ending FAILED: outcome failed with its status; past its timeout: timeout."""
    failing = fake.add_definition(statuses=["FAILED"])
    with pytest.raises(WorkflowFailedError):
        await client.workflows.run(workflow_definition_id=failing)
    slow = fake.add_definition(statuses=["RUNNING", "COMPLETED"], step_seconds=60)
    with pytest.raises(WaitTimeoutError):
        await client.workflows.run(slow, timeout=0.2, **FAST)
    failed, timed_out = telemetry.named("aiotlink.run")
    assert (failed.attributes or {})["aiotlink.outcome"] == "failed"
    assert (failed.attributes or {})["aiotlink.execution.status"] == "FAILED"
    assert (failed.attributes or {})["aiotlink.workflow.definition_id"] == failing
    assert (failed.attributes or {})["error.type"] == "WorkflowFailedError"
    assert (timed_out.attributes or {})["aiotlink.outcome"] == "timeout"
    assert (timed_out.attributes or {})["aiotlink.execution.status"] == "RUNNING"
    assert timed_out.status.status_code is StatusCode.ERROR


# --- downloads ----------------------------------------------------------------------------


async def test_a_redirected_download_is_one_span_with_its_reads(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """download_result: bytes, redirected; its reads are client spans, storage's without query."""
    execution_id = await started(fake, client, result=BIG)
    telemetry.exporter.clear()
    with telemetry.caller():
        downloaded = await client.workflows.download_result(execution_id, tmp_path / "r.json")
    (download,) = telemetry.children(telemetry.one("caller"))
    assert download.name == "aiotlink.download"
    assert download.attributes == {
        "aiotlink.execution.id": execution_id,
        "aiotlink.download.bytes": downloaded.size,
        "aiotlink.download.redirected": True,
        "aiotlink.download.resumes": 0,
        "aiotlink.download.url_refreshes": 0,
    }
    api, storage = telemetry.children(download)
    assert attempt_shape(api) == ("GET /workflows/{id}/result", 200, None)
    assert attempt_shape(storage) == ("GET", 200, None)
    assert storage.kind is SpanKind.CLIENT
    url = (storage.attributes or {})["url.full"]
    assert isinstance(url, str)
    assert url.startswith(fake.storage_url)
    assert "?" not in url
    assert "url.template" not in (storage.attributes or {})
    (counted,) = telemetry.metrics()["aiotlink.download.bytes"]
    assert (counted.value, dict(counted.attributes)) == (
        downloaded.size,
        {"aiotlink.download.redirected": True},
    )


async def test_resumes_and_url_refreshes_are_counted(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """A dropped read resumes (a Range attempt), a 403 refreshes the URL: both on the span."""
    execution_id = await started(fake, client, result=BIG)
    fake.drop_next("storage", after_bytes=100_000)
    fake.fail_next("storage", 403)
    telemetry.exporter.clear()
    await client.workflows.download_result(execution_id, tmp_path / "r.json")
    download = telemetry.one("aiotlink.download")
    attributes = download.attributes or {}
    assert attributes["aiotlink.download.resumes"] == 2  # before and after the refresh
    assert attributes["aiotlink.download.url_refreshes"] == 1
    assert [event.name for event in download.events] == ["aiotlink.retry", "aiotlink.url_refresh"]
    children = telemetry.children(download)
    shapes = [
        (*attempt_shape(span), (span.attributes or {}).get("aiotlink.download.resumed"))
        for span in children
    ]
    assert shapes == [
        ("GET /workflows/{id}/result", 200, None, False),
        ("GET", 200, "APIConnectionError", False),  # dropped mid-body
        ("GET", 403, "403", True),
        ("aiotlink.get_result", None, None, None),  # the API asked for a fresh URL
        ("GET", 206, None, True),
    ]
    (retried,) = telemetry.metrics()["aiotlink.client.retries"]
    assert dict(retried.attributes) == {
        "http.request.method": "GET",
        "error.type": "APIConnectionError",
    }


async def test_a_failed_download_still_says_what_it_did(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient, tmp_path: Path
) -> None:
    """Storage refusing every URL: the span ends in error with the refreshes it made."""
    execution_id = await started(fake, client, result=BIG)
    fake.fail_next("storage", 403, times=20)
    with pytest.raises(Exception, match="403"):
        await client.workflows.download_result(execution_id, tmp_path / "r.json")
    download = telemetry.one("aiotlink.download")
    assert (download.attributes or {})["aiotlink.download.url_refreshes"] == 3
    assert (download.attributes or {})["error.type"] == "403"
    assert "aiotlink.download.bytes" not in telemetry.metrics()


async def test_get_result_through_storage_is_two_calls(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """get_result of a redirected result: the API call, then the storage call, no query."""
    execution_id = await started(fake, client, result=BIG)
    telemetry.exporter.clear()
    with telemetry.caller():
        await client.workflows.get_result(execution_id, max_bytes=10 * THRESHOLD)
    calls = telemetry.children(telemetry.one("caller"))
    assert [span.name for span in calls] == ["aiotlink.get_result", "aiotlink.storage"]
    (read,) = telemetry.children(calls[1])
    assert attempt_shape(read) == ("GET", 200, None)
    assert "?" not in str((read.attributes or {})["url.full"])


# --- webhooks ------------------------------------------------------------------------------


@pytest.fixture
async def receiving(
    fake: FakeTransactionLink, client: TransactionLinkClient
) -> AsyncIterator[list[WebhookEvent]]:
    """The client's aiohttp receiver on 127.0.0.1, getting the fake's webhooks."""
    events: list[WebhookEvent] = []

    async def on_event(event: WebhookEvent) -> None:
        events.append(event)

    app = web.Application()
    app.router.add_post("/hooks", client.webhooks.aiohttp_handler(on_event))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    fake.set_webhook_url(str(server.make_url("/hooks")))
    try:
        yield events
    finally:
        await server.close()


async def test_webhooks_verify_and_nudge_spans(
    telemetry: Telemetry,
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    receiving: list[WebhookEvent],
) -> None:
    """Each delivery: a verify span (key fetched, then cached); a nudge links to the wait."""
    definition = fake.add_definition(statuses=["RUNNING", "COMPLETED"], step_seconds=0.3)
    execution_id = (await client.workflows.initialise(definition)).id
    with telemetry.caller():
        # Polls a minute apart: only the webhook's nudge can end this wait in time.
        await client.workflows.wait_for_completion(execution_id, poll_interval=60, timeout=10)
    await fake.webhooks_settled()
    verified = telemetry.named("aiotlink.webhook.verify")
    assert len(verified) == len(fake.webhook_deliveries) >= 2
    keys = [(span.attributes or {})["aiotlink.webhook.key"] for span in verified]
    assert keys[0] == "fetched"
    assert set(keys[1:]) == {"cached"}
    assert {(span.attributes or {})["aiotlink.outcome"] for span in verified} == {"verified"}
    assert [span.name for span in telemetry.children(verified[0])] == ["aiotlink.webhook_key"]
    wait = telemetry.one("aiotlink.wait")
    nudges = [
        span
        for span in telemetry.named("aiotlink.nudge")
        if (span.attributes or {}).get("aiotlink.nudge.woke")
    ]
    assert nudges
    assert all([link.context.span_id for link in span.links] == list(_ids(wait)) for span in nudges)
    assert (nudges[0].attributes or {})["aiotlink.execution.id"] == execution_id
    counted = {
        (
            point.attributes["aiotlink.outcome"],
            point.attributes["aiotlink.webhook.key"],
        ): point.value
        for point in telemetry.metrics()["aiotlink.webhook.verifications"]
    }
    assert counted == {("verified", "fetched"): 1, ("verified", "cached"): len(verified) - 1}


async def test_a_rejected_delivery_is_an_outcome(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A signature that does not verify: outcome rejected, error.type, no text of it."""
    with pytest.raises(WebhookVerificationError):
        await client.webhooks.verify(b"{}", "not a signature")
    span = telemetry.one("aiotlink.webhook.verify")
    assert (span.attributes or {})["aiotlink.outcome"] == "rejected"
    assert (span.attributes or {})["error.type"] == "WebhookVerificationError"
    assert (span.attributes or {})["aiotlink.webhook.key"] == "unknown"  # never looked up


# --- no secret anywhere -----------------------------------------------------------------------


async def test_no_token_signature_or_presigned_query_in_any_span_or_metric(
    telemetry: Telemetry,
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    receiving: list[WebhookEvent],
    tmp_path: Path,
) -> None:
    """Everything exported (names, attributes, events, links, statuses, metric points) is clean."""
    execution_id = await started(fake, client, result=BIG)
    fake.fail_next("storage", 403, body="xml")
    fake.drop_next("storage", after_bytes=50_000)
    await client.workflows.download_result(execution_id, tmp_path / "r.json")
    await client.workflows.get_result(execution_id, max_bytes=10 * THRESHOLD)
    fake.fail_next("find", 401)
    with pytest.raises(Exception, match="401"):
        await client.workflows.find(execution_id)
    await client.workflows.run(fake.add_definition(statuses=["COMPLETED"]), **FAST)
    # Polled: its id must be in no metric point either.
    await client.workflows.wait_for_completion(execution_id, **FAST)
    await fake.webhooks_settled()
    storage_queries = [request.query for request in fake.requests_for("storage") if request.query]
    # A job's error that quotes a token and a pre-signed query: its text goes nowhere.
    with pytest.raises(RuntimeError), _instrument.following(execution_id, {}):
        raise RuntimeError(f"job failed: Bearer {fake.token} GET ?{storage_queries[0]}")
    follow = telemetry.one("aiotlink.follow")
    assert (follow.attributes or {})["error.type"] == "RuntimeError"
    assert follow.status.status_code is StatusCode.ERROR
    assert follow.events == () or list(follow.events) == []
    secrets = [fake.token, *storage_queries]
    for query in storage_queries:
        secrets += [value for _, _, value in (part.partition("=") for part in query.split("&"))]
    secrets += [delivery.signature for delivery in fake.webhook_deliveries]
    secrets += [
        part
        for delivery in fake.webhook_deliveries
        for part in delivery.signature.split(".")
        if part
    ]
    secrets = [secret for secret in secrets if len(secret) >= 16]
    # The test saw what must not leak.
    assert storage_queries
    assert fake.webhook_deliveries
    exported = json.dumps([_everything(span) for span in telemetry.spans()], default=str)
    exported += json.dumps(
        [dict(point.attributes) for points in telemetry.metrics().values() for point in points]
    )
    leaked = [secret for secret in secrets if secret in exported]
    assert leaked == []
    metrics = telemetry.metrics()
    assert any(point.value for point in metrics["aiotlink.polls"])
    assert execution_id not in json.dumps(
        [dict(point.attributes) for points in metrics.values() for point in points]
    )


def _everything(span: ReadableSpan) -> list[Any]:
    return [
        span.name,
        dict(span.attributes or {}),
        [(event.name, dict(event.attributes or {})) for event in span.events],
        [dict(link.attributes or {}) for link in span.links],
        span.status.description,
    ]


# --- on, off, and the extra ---------------------------------------------------------------------


async def test_uninstrument_stops_everything_and_ends_open_waits(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Off: no span, no hook; a wait in progress ends its span at once, later ones make none."""
    slow = fake.add_definition(statuses=["RUNNING", "COMPLETED"], step_seconds=60)
    execution_id = (await client.workflows.initialise(slow)).id
    # First lookup at once, then a long sleep: no poll is in flight when it is turned
    # off (a poll started before would still end its span, rightly).
    waiting = asyncio.create_task(
        client.workflows.wait_for_completion(execution_id, poll_interval=60, max_poll_interval=60)
    )
    await eventually(lambda: len(telemetry.named("aiotlink.poll")) == 1)
    telemetry.exporter.clear()
    aiotlink.otel.uninstrument()
    assert _instrument.current is None
    (wait,) = telemetry.named("aiotlink.wait")
    assert "aiotlink.outcome" not in (wait.attributes or {})
    await client.workflows.find(execution_id)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    assert [span.name for span in telemetry.spans()] == ["aiotlink.wait"]
    (active,) = telemetry.metrics()["aiotlink.waits.active"]
    assert active.value == 0


async def test_instrument_again_replaces_the_providers(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A second instrument() sends to the new provider only."""
    execution_id = await started(fake, client)
    other = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(other))
    telemetry.exporter.clear()
    aiotlink.otel.instrument(tracer_provider=provider)
    await client.workflows.find(execution_id)
    assert telemetry.spans() == ()
    assert [span.name for span in other.get_finished_spans()] == [
        "GET /workflows/{id}",
        "aiotlink.find",
    ]


def test_trace_context_helpers_are_empty_when_off() -> None:
    """Off: no context to keep with a job, and following makes nothing."""
    assert _instrument.current is None
    assert _instrument.trace_context() == {}
    with _instrument.following("x", {"traceparent": "junk"}) as entered:
        assert entered is None


async def test_a_follow_job_links_to_the_trace_that_asked_for_it(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """trace_context() in the request, following() in the job: the job's span links to it."""
    execution_id = await started(fake, client, ["RUNNING", "COMPLETED"])
    telemetry.exporter.clear()
    with telemetry.caller():
        carrier = _instrument.trace_context()
    assert set(carrier) == {"traceparent"}
    carrier = json.loads(json.dumps(carrier))  # as a job's metadata keeps it
    with _instrument.following(execution_id, carrier):
        await client.workflows.wait_for_completion(execution_id, **FAST)
    with _instrument.following(execution_id, None):
        pass
    with _instrument.following(execution_id, {"traceparent": "00-garbage"}):
        pass
    follow, unlinked, garbled = telemetry.named("aiotlink.follow")
    caller = telemetry.one("caller")
    assert caller.context is not None
    (link,) = follow.links
    assert (link.context.trace_id, link.context.span_id) == (
        caller.context.trace_id,
        caller.context.span_id,
    )
    assert follow.parent is None  # its own trace: the request may be long gone
    assert (follow.attributes or {})["aiotlink.execution.id"] == execution_id
    (wait,) = telemetry.children(follow)
    assert wait.name == "aiotlink.wait"
    assert {span.name for span in telemetry.children(wait)} == {"aiotlink.poll"}
    assert unlinked.links == () or list(unlinked.links) == []
    assert list(garbled.links) == []


def test_url_full_keeps_no_credential_query_or_fragment() -> None:
    """Userinfo becomes REDACTED; storage loses its query; the API keeps it; no fragment."""
    from yarl import URL

    from aiotlink.otel._hooks import full_url

    given = URL("https://user:pass@host.example/path?pem=true#part", encoded=True)
    assert full_url(given, storage=False) == (
        "https://REDACTED:REDACTED@host.example/path?pem=true"
    )
    assert full_url(given, storage=True) == "https://REDACTED:REDACTED@host.example/path"


async def test_a_cancelled_run_and_a_wait_from_before_instrument(
    fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A run cancelled: outcome cancelled, no error; a wait begun while off makes no span."""
    slow = fake.add_definition(statuses=["RUNNING", "COMPLETED"], step_seconds=60)
    execution_id = (await client.workflows.initialise(slow)).id
    before = asyncio.create_task(client.workflows.wait_for_completion(execution_id, **FAST))
    await eventually(lambda: len(fake.requests_for("find")) >= 1)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    aiotlink.otel.instrument(tracer_provider=provider)
    try:
        running = asyncio.create_task(client.workflows.run(slow, **FAST))
        await eventually(lambda: len(fake.requests_for("find")) >= 4)
        for task in (running, before):
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
    finally:
        aiotlink.otel.uninstrument()
    names = sorted(span.name for span in exporter.get_finished_spans())
    assert names.count("aiotlink.wait") == 1  # the run's: the one from before has none
    (run,) = [span for span in exporter.get_finished_spans() if span.name == "aiotlink.run"]
    assert (run.attributes or {})["aiotlink.outcome"] == "cancelled"
    assert run.status.status_code is StatusCode.UNSET


def test_the_module_offers_what_the_api_promises() -> None:
    """aiotlink.otel exports instrument and uninstrument, both providers defaulting to None."""
    assert aiotlink.otel.__all__ == ["instrument", "uninstrument"]
    defaults = aiotlink.otel.instrument.__defaults__
    assert aiotlink.otel.instrument.__code__.co_varnames[:2] == (
        "tracer_provider",
        "meter_provider",
    )
    assert defaults == (None, None)


def test_without_the_extra_the_import_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without opentelemetry-api, importing aiotlink.otel says which extra to install."""
    monkeypatch.delitem(sys.modules, "aiotlink.otel")
    monkeypatch.setitem(sys.modules, "opentelemetry.trace", None)
    with pytest.raises(ImportError, match=r'pip install "aiotlink\[otel\]"') as raised:
        importlib.import_module("aiotlink.otel")
    assert raised.value.__context__ is None


# --- tracing that breaks never breaks the client ----------------------------------------------

# What a broken span processor says: the log must not repeat it.
PROCESSOR_SECRET = "processor-detail-tok_0123456789abcdef"


class BrokenProcessor(SpanProcessor):
    """A user's span processor with a bug: it raises on every span it sees start or end."""

    def __init__(self, when: str) -> None:
        self.when = when
        self.raised = 0

    def on_start(self, span: Span, parent_context: Context | None = None) -> None:
        if self.when == "start":
            self.raised += 1
            raise RuntimeError(PROCESSOR_SECRET)

    def on_end(self, span: ReadableSpan) -> None:
        if self.when == "end":
            self.raised += 1
            raise RuntimeError(PROCESSOR_SECRET)


class BrokenInstrument:
    """A metric instrument that raises: a bug of our own hooks, as far as the client knows."""

    def add(self, amount: float, attributes: Any = None) -> None:
        raise ValueError(PROCESSOR_SECRET)

    record = add


@pytest.mark.parametrize("when", ["start", "end"])
async def test_a_span_processor_or_hook_that_raises_never_breaks_the_client(
    when: str,
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Calls, retries, waits, polls, runs, downloads, nudges, follows: all as if untraced.

    A timed-out wait stops its polls, a later wait on the same execution polls and ends,
    and errors stay the client's own; the log says tracing failed, by type only.
    """
    broken = BrokenProcessor(when)
    provider = TracerProvider()
    provider.add_span_processor(broken)
    aiotlink.otel.instrument(tracer_provider=provider)
    hooks = _instrument.current
    for name in ("_retries", "_active_waits", "_polls", "_wait_duration", "_download_bytes"):
        monkeypatch.setattr(hooks, name, BrokenInstrument())
    try:
        slow = fake.add_definition(statuses=["RUNNING", "COMPLETED"], step_seconds=0.6)
        execution_id = (await client.workflows.initialise(slow)).id
        fake.fail_next("find", 503)  # a retry: its sleep's hook
        assert (await client.workflows.find(execution_id)).status.value == "RUNNING"
        with pytest.raises(WaitTimeoutError):
            await client.workflows.wait_for_completion(execution_id, timeout=0.2, **FAST)
        finds = await settled(lambda: len(fake.requests_for("find")))
        await asyncio.sleep(0.25)
        assert len(fake.requests_for("find")) == finds  # no poll left running
        with _instrument.following(execution_id, _instrument.trace_context()):
            done = await client.workflows.wait_for_completion(execution_id, **FAST)
        assert done.status.value == "COMPLETED"
        assert client.workflows.nudge(execution_id) is False
        with pytest.raises(NotFoundError):
            await client.workflows.find(str(uuid.uuid4()))
        with pytest.raises(KeyError, match="the job's own"), _instrument.following("x", {}):
            raise KeyError("the job's own")
        run = await client.workflows.run(
            fake.add_definition(statuses=["COMPLETED"], result=BIG),
            download_to=tmp_path / "r.json",
            **FAST,
        )
        assert isinstance(run.result, DownloadedResult)
        assert run.result.size > THRESHOLD
        chunks = [chunk async for chunk in client.workflows.stream_result(execution_id)]
        assert b"".join(chunks).startswith(b"{")
        # A wait in progress when tracing goes off: its span ends then.
        stuck = (await client.workflows.initialise(fake.add_definition(step_seconds=60))).id
        finds = len(fake.requests_for("find"))
        pending = asyncio.create_task(client.workflows.wait_for_completion(stuck, **FAST))
        await eventually(lambda: len(fake.requests_for("find")) > finds)
        aiotlink.otel.uninstrument()
        pending.cancel()
        with pytest.raises(asyncio.CancelledError):
            await pending
    finally:
        aiotlink.otel.uninstrument()
    assert broken.raised >= 10
    failures = [record.getMessage() for record in caplog.records if record.name == "aiotlink.otel"]
    assert failures
    assert all(message.startswith("tracing failed in ") for message in failures)
    assert PROCESSOR_SECRET not in caplog.text
    assert all(record.exc_info is None for record in caplog.records)
    hooks_failed = {message.split()[3] for message in failures}
    # A wait whose span never started has none to end.
    expected = {"call", "send", "retry", "wait_started", "poll", "nudged", "following", "run"}
    expected |= {"download", "stream_attempt"}
    expected |= {"wait_ended", "close"} if when == "end" else set()
    assert expected <= hooks_failed


async def test_waits_of_two_clients_on_one_execution_keep_their_own_polls(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Each client polls for its own waits: a poll goes to its client's wait, and only there."""
    # Steps by time, not by find: both clients poll for a while.
    slow = fake.add_definition(statuses=["RUNNING", "COMPLETED"], step_seconds=0.4)
    execution_id = (await client.workflows.initialise(slow)).id
    telemetry.exporter.clear()
    tracer = telemetry.provider.get_tracer("test")

    async def wait(made: TransactionLinkClient, name: str) -> None:
        with tracer.start_as_current_span(name):
            await made.workflows.wait_for_completion(execution_id, **FAST)

    async with TransactionLinkClient(fake.token, base_url=fake.url) as other:
        await asyncio.gather(wait(client, "first"), wait(other, "second"))
    polls = telemetry.named("aiotlink.poll")
    assert len(polls) == len(fake.requests_for("find"))
    for name in ("first", "second"):
        (wait_span,) = telemetry.children(telemetry.one(name))
        own = telemetry.children(wait_span)
        assert own
        assert {span.name for span in own} == {"aiotlink.poll"}
        assert (wait_span.attributes or {})["aiotlink.wait.polls"] == len(own)
        assert all(list(span.links) == [] for span in own)
    assert sum(len(telemetry.children(span)) for span in telemetry.named("aiotlink.wait")) == len(
        polls
    )


async def test_a_streamed_result_is_one_download_span_with_its_reads(
    telemetry: Telemetry, fake: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """stream_result: the download span of download_result, with its retries and refreshes."""
    execution_id = await started(fake, client, result=BIG)
    fake.fail_next("result", 503)
    fake.drop_next("storage", after_bytes=100_000)
    fake.fail_next("storage", 403)
    telemetry.exporter.clear()
    with telemetry.caller():
        chunks = [chunk async for chunk in client.workflows.stream_result(execution_id)]
    streamed = b"".join(chunks)
    assert json.loads(streamed) == BIG
    (download,) = telemetry.children(telemetry.one("caller"))
    assert download.name == "aiotlink.download"
    assert download.attributes == {
        "aiotlink.execution.id": execution_id,
        "aiotlink.download.bytes": len(streamed),
        "aiotlink.download.redirected": True,
        "aiotlink.download.resumes": 2,
        "aiotlink.download.url_refreshes": 1,
    }
    assert [event.name for event in download.events] == [
        "aiotlink.retry",
        "aiotlink.retry",
        "aiotlink.url_refresh",
    ]
    shapes = [
        (*attempt_shape(span), (span.attributes or {}).get("aiotlink.download.resumed"))
        for span in telemetry.children(download)
    ]
    assert shapes == [
        ("GET /workflows/{id}/result", 503, "503", False),
        ("GET /workflows/{id}/result", 200, None, False),
        ("GET", 200, "APIConnectionError", False),
        ("GET", 403, "403", True),
        ("aiotlink.get_result", None, None, None),
        ("GET", 206, None, True),
    ]
    retried = [
        (dict(point.attributes), point.value)
        for point in telemetry.metrics()["aiotlink.client.retries"]
    ]
    api_retry = {"http.request.method": "GET", "url.template": "/workflows/{id}/result"}
    assert sorted(retried, key=str) == sorted(
        [
            ({**api_retry, "error.type": "503"}, 1),
            ({"http.request.method": "GET", "error.type": "APIConnectionError"}, 1),
        ],
        key=str,
    )
    (counted,) = telemetry.metrics()["aiotlink.download.bytes"]
    assert (counted.value, dict(counted.attributes)) == (
        len(streamed),
        {"aiotlink.download.redirected": True},
    )


@pytest.mark.parametrize("hook", ["wait_started", "wait_ended"])
async def test_a_wait_hook_that_raises_leaves_the_poller_whole(
    hook: str,
    fake: FakeTransactionLink,
    client: TransactionLinkClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The poller calls its hooks once its state is whole: after a poll starts, a wait leaves.

    Even a hook that breaks its promise not to raise leaves no poll unstarted (a later
    wait would hang) and none running for a wait that is gone.
    """
    slow = fake.add_definition(statuses=["RUNNING", "COMPLETED"], step_seconds=0.6)
    execution_id = (await client.workflows.initialise(slow)).id
    aiotlink.otel.instrument(tracer_provider=TracerProvider())

    def raising(*arguments: object) -> None:
        raise RuntimeError("a hook's bug")

    monkeypatch.setattr(_instrument.current, hook, raising)
    try:
        with pytest.raises((RuntimeError, WaitTimeoutError)):
            await client.workflows.wait_for_completion(execution_id, timeout=0.2, **FAST)
    finally:
        aiotlink.otel.uninstrument()
    if hook == "wait_ended":
        finds = await settled(lambda: len(fake.requests_for("find")))
        await asyncio.sleep(0.25)
        assert len(fake.requests_for("find")) == finds  # its poll stopped with it
    async with asyncio.timeout(5):
        done = await client.workflows.wait_for_completion(execution_id, **FAST)
    assert done.status.value == "COMPLETED"
