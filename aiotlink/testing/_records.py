"""The fake's records: every request it received, and every webhook it sent."""

from __future__ import annotations

from typing import Any, Literal

import attrs
from multidict import CIMultiDictProxy


def _header_names(headers: CIMultiDictProxy[str]) -> str:
    # Header values (Authorization above all) stay out of reprs and logs.
    return repr(sorted(set(headers.keys())))


def _body_size(body: bytes) -> str:
    return f"<{len(body)} bytes>"


def _event(payload: dict[str, Any]) -> str:
    return f"<{payload.get('eventType')} {payload.get('status')}>"


@attrs.frozen
class RecordedRequest:
    """One request as the fake received it.

    ``route`` names the endpoint (``"initialise"``, ``"find"``, ``"cancel"``,
    ``"result"``, ``"storage"``, ``"webhook_key"``, ``"hosted"``, or ``"unmatched"``); ``path`` and
    ``query`` are raw, exactly as sent (percent-escapes kept, ``query`` without the
    ``?``); ``headers`` is case-insensitive; ``body`` holds the raw request bytes;
    ``at`` is ``time.monotonic()`` when it came (0.0 in records made by hand).
    The repr shows header names and the body size only, never header values.
    """

    route: str
    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str] = attrs.field(repr=_header_names)
    body: bytes = attrs.field(repr=_body_size)
    at: float = 0.0


WebhookOutcome = Literal["pending", "delivered", "failed", "dropped", "cancelled"]
"""Where a webhook delivery stands: ``pending`` until it is answered 2xx
(``delivered``), runs out of retries (``failed``), is dropped by a planned fault
(``dropped``, never sent), or is cut short by ``close()`` (``cancelled``)."""

WebhookFault = Literal["drop", "duplicate", "reorder", "delay", "corrupt_signature", "unknown_kid"]
"""The planned fault a webhook delivery carried, if any."""


@attrs.frozen
class WebhookAttempt:
    """One POST of a webhook: the HTTP status answered, or the error that stood for none.

    ``status`` is ``None`` when no answer came in time (``error`` then names the
    exception type, e.g. ``"ClientConnectorError"`` for a refused connection or
    ``"TimeoutError"``); ``at`` is ``time.monotonic()`` when it was sent, real time
    even on a ``ManualClock``, so tests can measure the gaps between retries.
    """

    status: int | None
    error: str | None
    at: float

    @property
    def succeeded(self) -> bool:
        """Whether the receiver answered 2xx."""
        return self.status is not None and 200 <= self.status < 300


@attrs.define(eq=False)
class WebhookDelivery:
    """One webhook the fake sends: the event, the bytes and header as sent, and its attempts.

    ``body`` is the compact JSON of ``payload``, exactly the bytes posted and
    signed; ``signature`` the ``JWS-SIGNATURE`` header (a detached compact JWS);
    ``kid`` the key id in its header. Every retry posts the same body and header.
    ``fault`` names the planned fault it carried; a ``duplicate`` is a second
    record with the same body and signature. The repr shows the event type and
    status, not the body.
    """

    url: str
    payload: dict[str, Any] = attrs.field(repr=_event)
    body: bytes = attrs.field(repr=_body_size)
    signature: str = attrs.field(repr=False)
    kid: str
    fault: WebhookFault | None = None
    attempts: list[WebhookAttempt] = attrs.Factory(list)
    outcome: WebhookOutcome = "pending"

    @property
    def event_type(self) -> str:
        """The payload's ``eventType``."""
        return str(self.payload["eventType"])

    @property
    def status(self) -> str:
        """The payload's ``status``: the status the execution entered."""
        return str(self.payload["status"])

    @property
    def execution_id(self) -> str:
        """The payload's ``workflowExecutionId``."""
        return str(self.payload["workflowExecutionId"])
