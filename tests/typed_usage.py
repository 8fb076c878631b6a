"""Code as users write it, checked by `mypy --strict` (not run by pytest).

If the package's annotations break what users type against, this file stops checking.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

from aiohttp import web

from aiotlink import (
    APIError,
    NotFoundError,
    TransactionLinkClient,
    WebhookEvent,
    WebhookVerificationError,
    WorkflowExecution,
    WorkflowStatus,
)


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
