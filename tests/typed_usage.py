"""Code as users write it, checked by `mypy --strict` (not run by pytest).

If the package's annotations break what users type against, this file stops checking.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any, assert_type
from uuid import UUID

from aiohttp import web

from aiotlink import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    DownloadedResult,
    DownloadError,
    ErrorCode,
    ExecutionType,
    JSONValue,
    NotFoundError,
    ResultNotReadyError,
    RunResult,
    TransactionLinkClient,
    WebhookEvent,
    WebhookVerificationError,
    WorkflowExecution,
    Workflows,
    WorkflowStatus,
)
from aiotlink.testing import FakeTransactionLink


async def start_and_check(client: TransactionLinkClient) -> WorkflowExecution:
    execution: WorkflowExecution = await client.workflows.initialise(
        "kyc-basic",
        locale="en",
        parameters={"customerId": "c-42"},
        expires_at=timedelta(hours=2),
    )
    found = await client.workflows.find(execution.id)
    status: WorkflowStatus = found.status
    if status.is_terminal and status is WorkflowStatus.COMPLETED:
        result: Any = await client.workflows.get_result(found.id, max_bytes=2**20)
        assert result is not None
    try:
        await client.with_options(max_retries=0, timeout=5.0).workflows.cancel(found.id)
    except NotFoundError as error:
        fingerprint: str | None = error.fingerprint
        assert fingerprint is None or fingerprint
    except APIError as error:
        codes: list[str] = [detail.code for detail in error.errors]
        assert codes is not None
    return found


async def receive_webhooks(client: TransactionLinkClient, body: bytes, signature: str) -> None:
    async def on_event(event: WebhookEvent) -> None:
        execution_id: UUID | None = event.execution_id
        status: WorkflowStatus | None = event.status
        key: str = event.delivery_key
        assert execution_id is None or status is None or key

    try:
        event = await client.webhooks.verify(body, signature)
    except WebhookVerificationError as error:
        reason: str = error.reason
        assert reason
    else:
        await on_event(event)
    client.webhooks.add_key("7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10", "-----BEGIN PUBLIC KEY-----")
    mounted = client.webhooks.asgi_app(on_event, max_body_bytes=2**20, handler_timeout=5.0)
    app = web.Application()
    app.router.add_post("/hooks", client.webhooks.aiohttp_handler(lambda event: None))
    woke: bool = client.workflows.nudge(UUID(int=1), status=WorkflowStatus.COMPLETED)
    print(mounted, woke)


def traced() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

    import aiotlink.otel

    aiotlink.otel.instrument()
    aiotlink.otel.instrument(tracer_provider=TracerProvider(), meter_provider=MeterProvider())
    aiotlink.otel.uninstrument()


async def main() -> None:
    async with TransactionLinkClient(base_url="http://127.0.0.1:8080") as client:
        await start_and_check(client)


async def types_that_tell_cases_apart(client: TransactionLinkClient, folder: Path) -> None:
    """Issue 20: results, run, execution types and the fake are typed without Any."""
    workflows: Workflows = client.workflows
    result = await workflows.get_result("7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10")
    assert_type(result, JSONValue)
    if isinstance(result, dict):
        decision: JSONValue = result.get("decision")
        print(decision)

    in_memory = await workflows.run("kyc")
    assert_type(in_memory, RunResult[JSONValue])
    on_disk = await workflows.run("kyc", download_to=folder / "r.json")
    assert_type(on_disk, RunResult[DownloadedResult])
    size: int = on_disk.result.size  # no None to rule out: failures raise
    maybe = await workflows.run("kyc", download_to="r.json", raise_on_failure=False)
    assert_type(maybe.result, DownloadedResult | None)
    unparameterised: RunResult = in_memory  # a bare RunResult is RunResult[Any]
    print(size, unparameterised)

    execution = await workflows.find(UUID(int=1))
    assert_type(execution.execution_type, ExecutionType)
    if execution.execution_type is ExecutionType.INTERACTIVE and execution.status.is_known:
        print(execution.link)

    chunks = workflows.stream_result(execution.id, chunk_size=2**16, max_bytes=2**30)
    assert_type(chunks, AsyncGenerator[bytes, None])
    streamed: AsyncIterator[bytes] = chunks
    async for chunk in streamed:
        assert_type(chunk, bytes)

    try:
        await workflows.cancel(execution.id)
    except ResultNotReadyError as not_ready:
        print(not_ready.code)
    except NotFoundError as error:
        unknown_route: bool = error.unknown_route
        print(unknown_route)
    except APIError as error:
        if error.code == ErrorCode.WORKFLOW_ALREADY_FINISHED:
            code: str | None = error.code
            print(code)
    except APITimeoutError as timed_out:
        limit: float | None = timed_out.timeout
        print(limit)
    except APIConnectionError as lost:
        attempts: int | None = lost.attempts
        elapsed: float | None = lost.elapsed
        print(attempts, elapsed)
    except DownloadError as failed:
        where: Path | None = failed.path
        print(where)
    backoff: bool = client.retry_backoff
    print(backoff)


async def fake_statuses(fake: FakeTransactionLink, execution_id: str) -> None:
    assert_type(fake.status_of(execution_id), WorkflowStatus)
