"""The body of the fake's webhooks: one event per status change of an execution.

The provider documents that it POSTs every status change, ``AWAITING``, and
completion to the customer's URL, but not the body. The fake sends our documented
assumption of it::

    {"eventType": "WORKFLOW_STATUS_UPDATED", "workflowExecutionId": "<uuid>",
     "workflowDefinitionId": "...", "status": "RUNNING", "recordId": null,
     "occurredAt": "2027-01-15T08:00:00Z"}
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from aiotlink.testing._executions import TERMINAL_STATUSES, Execution
from aiotlink.testing._wire import format_instant

EventType = Literal["WORKFLOW_STATUS_UPDATED", "WORKFLOW_AWAITING", "WORKFLOW_COMPLETED"]


def event_type(status: str) -> EventType:
    """Name the event of entering ``status``: awaiting, completion (any terminal one), or update."""
    if status == "AWAITING":
        return "WORKFLOW_AWAITING"
    if status in TERMINAL_STATUSES:
        return "WORKFLOW_COMPLETED"
    return "WORKFLOW_STATUS_UPDATED"


def webhook_payload(execution: Execution, status: str, at: float) -> dict[str, Any]:
    """Return the event of ``execution`` entering ``status`` at ``at`` (seconds since the epoch)."""
    return {
        "eventType": event_type(status),
        "workflowExecutionId": execution.id,
        "workflowDefinitionId": execution.definition.definition_id,
        "status": status,
        "recordId": execution.record_id,
        "occurredAt": format_instant(datetime.fromtimestamp(at, UTC)),
    }
