"""``Range`` and ``If-Range`` decisions for the storage endpoint, as pure functions.

One byte range per request, as S3 serves: a header the server cannot use is
ignored and the whole object is sent (RFC 9110, section 14.2).
"""

from __future__ import annotations

import re

import attrs

_SINGLE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)", re.IGNORECASE)


@attrs.frozen
class ByteRange:
    """A satisfiable byte range: ``start`` included, ``stop`` excluded, in bytes."""

    start: int
    stop: int

    def content_range(self, size: int) -> str:
        """Format the ``Content-Range`` value for an object of ``size`` bytes."""
        return f"bytes {self.start}-{self.stop - 1}/{size}"


class RangeNotSatisfiableError(Exception):
    """The range lies wholly past the end of the object (answer 416)."""


def parse_range(header: str | None, size: int) -> ByteRange | None:
    """Turn a ``Range`` value into the bytes to send of an object of ``size`` bytes.

    Returns ``None`` to send the whole object: no header, a unit other than
    ``bytes``, several ranges, or a malformed one. ``bytes=N-``, ``bytes=N-M`` and
    ``bytes=-S`` (the last S bytes) are served, clipped to the object. Raises
    ``RangeNotSatisfiableError`` when ``N`` is at or past the end, or ``S`` is 0.
    """
    match = _SINGLE_RANGE.fullmatch(header.strip()) if header else None
    if match is None:
        return None
    first, last = match.groups()
    if not first:
        if not last:
            return None
        if int(last) == 0:
            raise RangeNotSatisfiableError
        return ByteRange(max(size - int(last), 0), size)
    start = int(first)
    if last and int(last) < start:
        return None
    if start >= size:
        raise RangeNotSatisfiableError
    return ByteRange(start, size if not last else min(int(last) + 1, size))


def if_range_allows(if_range: str | None, etag: str) -> bool:
    """Tell whether a ``Range`` may be honoured given the ``If-Range`` value.

    Without ``If-Range`` it may. With one, only an exact match of the strong
    ``etag`` allows it; another tag, a weak one or a date sends the whole object.
    """
    return if_range is None or if_range.strip() == etag
