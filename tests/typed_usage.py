"""Code as users write it, checked by `mypy --strict` (not run by pytest).

If the package's annotations break what users type against, this file stops checking.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from aiotlink import (
    APIError,
    NotFoundError,
    TransactionLinkClient,
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


async def main() -> None:
    async with TransactionLinkClient(base_url="http://127.0.0.1:8080") as client:
        await start_and_check(client)
