"""The fake's record of every request it received."""

from __future__ import annotations

import attrs
from multidict import CIMultiDictProxy


def _header_names(headers: CIMultiDictProxy[str]) -> str:
    # Header values (Authorization above all) stay out of reprs and logs.
    return repr(sorted(set(headers.keys())))


def _body_size(body: bytes) -> str:
    return f"<{len(body)} bytes>"


@attrs.frozen
class RecordedRequest:
    """One request as the fake received it.

    ``route`` names the endpoint (``"initialise"``, ``"find"``, ``"cancel"``,
    ``"result"``, ``"storage"``, ``"hosted"``, or ``"unmatched"``); ``path`` and
    ``query`` are raw, exactly as sent (percent-escapes kept, ``query`` without the
    ``?``); ``headers`` is case-insensitive; ``body`` holds the raw request bytes.
    The repr shows header names and the body size only, never header values.
    """

    route: str
    method: str
    path: str
    query: str
    headers: CIMultiDictProxy[str] = attrs.field(repr=_header_names)
    body: bytes = attrs.field(repr=_body_size)
