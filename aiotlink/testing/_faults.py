"""Fault injection: planned failures for the next answers of a route, and for webhooks.

Each route keeps a queue; a request takes at most one fault from the front of its
route's queue, so faults are consumed in the order they were planned. Webhooks
keep one queue of their own, consumed the same way, one fault per event.
"""

from __future__ import annotations

import collections
import email.utils
import math
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Literal, get_args

import attrs

from aiotlink.testing._answers import Answer
from aiotlink.testing._presign import Denial
from aiotlink.testing._storage import s3_error
from aiotlink.testing._wire import ErrorDetail, error_answer, status_code_name

Route = Literal["initialise", "find", "cancel", "result", "storage", "webhook_key"]
"""The routes faults can be planned for."""

ROUTES: tuple[Route, ...] = get_args(Route)

ErrorBody = Literal["auto", "json", "xml", "html", "empty"]
"""The body of a planned error answer: ``auto`` is an ``ErrorResponse`` on API routes
and an S3 XML error on storage; ``html`` is a proxy's error page."""

_ERROR_BODIES: tuple[ErrorBody, ...] = get_args(ErrorBody)

_ERROR_STATUSES = frozenset(status.value for status in HTTPStatus if 400 <= status.value <= 599)


@attrs.frozen
class StatusFault:
    """Answer with ``status`` instead of the real answer; ``retry_after`` is the header value."""

    status: int
    retry_after: str | None
    body: ErrorBody


@attrs.frozen
class DropFault:
    """Close the connection: before answering (``after_bytes`` None) or mid-body."""

    after_bytes: int | None


@attrs.frozen
class SlowFault:
    """Wait ``seconds`` before answering normally."""

    seconds: float


Fault = StatusFault | DropFault | SlowFault


def check_route(route: str) -> Route:
    """Return ``route`` if faults can be planned for it, else raise ``ValueError``."""
    for known in ROUTES:
        if route == known:
            return known
    raise ValueError(f"unknown route {route!r}; routes: {', '.join(ROUTES)}")


def status_fault(status: int, retry_after: int | datetime | str | None, body: str) -> StatusFault:
    """Validate the arguments of a status fault and build it.

    ``status`` is an HTTP error status (400-599). ``retry_after`` is whole seconds,
    an aware datetime (sent as an HTTP date), or a raw header value.
    """
    if status not in _ERROR_STATUSES:
        raise ValueError(f"status must be a known HTTP error status (400-599), not {status}")
    for kind in _ERROR_BODIES:
        if body == kind:
            return StatusFault(status, retry_after_value(retry_after), kind)
    raise ValueError(f"body must be one of {', '.join(_ERROR_BODIES)}, not {body!r}")


def retry_after_value(value: int | datetime | str | None) -> str | None:
    """Format a ``Retry-After`` value: seconds as an integer, a datetime as an HTTP date."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("a Retry-After datetime must be timezone-aware")
        return email.utils.format_datetime(value.astimezone(UTC), usegmt=True)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("Retry-After seconds must be an integer, 0 or more")
    return str(value)


def check_after_bytes(after_bytes: int | None) -> int | None:
    """Validate the body bytes sent before a mid-body drop (``None``: drop before answering)."""
    if after_bytes is not None and after_bytes < 0:
        raise ValueError("after_bytes must be 0 or more")
    return after_bytes


def check_seconds(seconds: float) -> float:
    """Validate the delay of a slow answer, in seconds."""
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("seconds must be a finite delay, 0 or more")
    return float(seconds)


_PROXY_PAGE = (
    "<html>\r\n<head><title>{status} {phrase}</title></head>\r\n<body>\r\n"
    "<center><h1>{status} {phrase}</h1></center>\r\n<hr><center>nginx</center>\r\n"
    "</body>\r\n</html>\r\n"
)


def fault_answer(fault: StatusFault, route: str) -> Answer:
    """Build the answer of a status fault on ``route``."""
    phrase = HTTPStatus(fault.status).phrase
    headers = {} if fault.retry_after is None else {"Retry-After": fault.retry_after}
    kind = fault.body
    if kind == "auto":
        kind = "xml" if route == "storage" else "json"
    if kind == "json":
        detail = ErrorDetail(status_code_name(fault.status), f"{phrase} (injected fault)")
        return error_answer(fault.status, (detail,), headers)
    if kind == "xml":
        return s3_error(fault.status, Denial(phrase.replace(" ", ""), phrase), headers)
    if kind == "html":
        page = _PROXY_PAGE.format(status=fault.status, phrase=phrase).encode()
        return Answer.of_bytes(fault.status, {**headers, "Content-Type": "text/html"}, page)
    return Answer.of_bytes(fault.status, headers, b"")


class FaultPlan:
    """The queues of planned faults, one per route."""

    def __init__(self) -> None:
        """Start with no fault planned."""
        self._queues: dict[str, collections.deque[Fault]] = {
            route: collections.deque() for route in ROUTES
        }

    def add(self, route: str, fault: Fault, times: int) -> None:
        """Plan ``fault`` for the next ``times`` answers of ``route`` after those planned."""
        known = check_route(route)
        self._queues[known].extend([fault] * check_times(times))

    def take(self, route: str) -> Fault | None:
        """Remove and return the next fault of ``route``, if any."""
        queue = self._queues.get(route)
        return queue.popleft() if queue else None

    def pending(self, route: str) -> int:
        """Count the faults still planned for ``route``."""
        return len(self._queues[check_route(route)])

    def clear(self) -> None:
        """Forget every planned fault."""
        for queue in self._queues.values():
            queue.clear()


@attrs.frozen
class WebhookDrop:
    """Never deliver the webhook (it is recorded, with no attempt)."""


@attrs.frozen
class WebhookDuplicate:
    """Deliver the webhook twice: the same body and signature, one after the other."""


@attrs.frozen
class WebhookReorder:
    """Hold this webhook and the ``count - 1`` after it, then deliver all ``count`` reversed."""

    count: int


@attrs.frozen
class WebhookDelay:
    """Deliver the webhook ``seconds`` late; later ones may overtake it."""

    seconds: float


@attrs.frozen
class WebhookCorruptSignature:
    """Send the webhook with one byte of its signature flipped."""


@attrs.frozen
class WebhookUnknownKey:
    """Sign the webhook with a key whose ``kid`` the key endpoint does not know."""


WebhookFaultKind = (
    WebhookDrop
    | WebhookDuplicate
    | WebhookReorder
    | WebhookDelay
    | WebhookCorruptSignature
    | WebhookUnknownKey
)


def check_times(times: int) -> int:
    """Validate how many times a fault applies: an integer, 1 or more."""
    if isinstance(times, bool) or not isinstance(times, int) or times < 1:
        raise ValueError("times must be an integer, 1 or more")
    return times


def check_reorder_count(count: int) -> int:
    """Validate how many webhooks a reorder holds: an integer, 2 or more."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 2:
        raise ValueError("count must be an integer, 2 or more: one webhook has no order")
    return count


class WebhookFaultPlan:
    """The queue of faults planned for the next webhooks, one per webhook."""

    def __init__(self) -> None:
        """Start with no fault planned."""
        self._queue: collections.deque[WebhookFaultKind] = collections.deque()

    def add(self, fault: WebhookFaultKind, times: int) -> None:
        """Plan ``fault`` for the next ``times`` webhooks after those planned."""
        self._queue.extend([fault] * check_times(times))

    def take(self) -> WebhookFaultKind | None:
        """Remove and return the next fault, if any."""
        return self._queue.popleft() if self._queue else None

    def pending(self) -> int:
        """Count the faults still planned."""
        return len(self._queue)

    def clear(self) -> None:
        """Forget every planned fault."""
        self._queue.clear()
