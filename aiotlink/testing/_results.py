"""Result payloads the fake serves: JSON values given by a test, and big generated ones.

Both are read through ``iter_bytes(start, stop)``, a generator of chunks of about
``CHUNK_BYTES``, so a 1 GiB result is never held in memory, whole or by range.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterator
from functools import lru_cache
from typing import Protocol

import attrs

CHUNK_BYTES = 1 << 20
"""Size of one generated segment and of one streamed chunk, in bytes (1 MiB)."""


class ResultBody(Protocol):
    """A result payload that can be served whole or by byte range."""

    @property
    def size(self) -> int:
        """Length of the payload, in bytes."""
        ...

    @property
    def etag(self) -> str:
        """A strong, quoted entity tag, stable for the life of the payload."""
        ...

    def iter_bytes(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Yield the bytes from offset ``start`` up to ``stop`` (exclusive) in chunks."""
        ...


def _check_bounds(start: int, stop: int | None, size: int) -> int:
    stop = size if stop is None else stop
    if not 0 <= start <= stop <= size:
        raise ValueError(f"byte range {start}..{stop} is outside 0..{size}")
    return stop


@attrs.frozen
class InlineResult:
    """A JSON result already serialised, held in memory."""

    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} bytes>")

    @property
    def size(self) -> int:
        """Length of the serialised JSON, in bytes."""
        return len(self.data)

    @property
    def etag(self) -> str:
        """The MD5 of the bytes, quoted, as S3 gives for a single-part object."""
        return f'"{hashlib.md5(self.data, usedforsecurity=False).hexdigest()}"'

    def iter_bytes(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Yield the bytes from ``start`` to ``stop`` (exclusive) in chunks of 1 MiB."""
        stop = _check_bounds(start, stop, self.size)
        for offset in range(start, stop, CHUNK_BYTES):
            yield self.data[offset : min(offset + CHUNK_BYTES, stop)]


@lru_cache(maxsize=4)
def _pattern(seed: int) -> bytes:
    # 768 KiB of SHAKE output is exactly 1 MiB of base64url: JSON-safe characters
    # that differ from seed to seed.
    raw = hashlib.shake_256(b"aiotlink-generated-result:%d" % seed).digest(CHUNK_BYTES * 3 // 4)
    return base64.urlsafe_b64encode(raw)


def _segment(seed: int, index: int) -> bytes:
    # Each segment starts with its own index, so no two segments are alike and a
    # client that resumes at the wrong offset gets a different digest.
    return b"%016x" % index + _pattern(seed)[16:]


@attrs.frozen
class GeneratedResult:
    """A large, deterministic JSON result, generated chunk by chunk as it is sent.

    The document is ``{"seed":<seed>,"data":"<characters>"}``, exactly
    ``size_bytes`` long and valid JSON; the same ``size_bytes`` and ``seed`` always
    give the same bytes. Pass it as ``add_definition(..., result=GeneratedResult(...))``.
    Above the fake's ``redirect_threshold`` it is served through the storage
    redirect. ``sha256()`` tells its digest (it generates the whole document, about
    a second per GiB); ``iter_bytes()`` yields it in chunks of 1 MiB.
    """

    size_bytes: int
    seed: int = 0

    def __attrs_post_init__(self) -> None:
        """Refuse a negative seed or a size too small for the document's frame."""
        if self.seed < 0:
            raise ValueError("seed must be 0 or more")
        minimum = len(self._prefix) + len(self._suffix)
        if self.size_bytes < minimum:
            raise ValueError(f"size_bytes must be at least {minimum} for seed {self.seed}")

    @property
    def _prefix(self) -> bytes:
        return b'{"seed":%d,"data":"' % self.seed

    @property
    def _suffix(self) -> bytes:
        return b'"}'

    @property
    def size(self) -> int:
        """Length of the document, in bytes (``size_bytes``)."""
        return self.size_bytes

    @property
    def etag(self) -> str:
        """A quoted entity tag derived from ``size_bytes`` and ``seed``."""
        key = b"aiotlink-generated-result:%d:%d" % (self.seed, self.size_bytes)
        return f'"{hashlib.sha256(key).hexdigest()[:32]}"'

    def sha256(self) -> str:
        """Return the hex SHA-256 of the whole document, generating it once."""
        digest = hashlib.sha256()
        for chunk in self.iter_bytes():
            digest.update(chunk)
        return digest.hexdigest()

    def iter_bytes(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Yield the document from ``start`` to ``stop`` (exclusive), about 1 MiB a chunk.

        Chunks end on segment boundaries, so each one is produced from a single
        segment; the generator holds at most one segment at a time.
        """
        stop = _check_bounds(start, stop, self.size_bytes)
        prefix_len = len(self._prefix)
        filler_end = self.size_bytes - len(self._suffix)
        position = start
        while position < stop:
            # The first chunk carries the prefix and the last one the suffix.
            boundary = prefix_len + (max(position - prefix_len, 0) // CHUNK_BYTES + 1) * CHUNK_BYTES
            if boundary >= filler_end:
                boundary = self.size_bytes
            end = min(boundary, stop)
            yield self._read(position, end)
            position = end

    def _read(self, start: int, stop: int) -> bytes:
        prefix, suffix = self._prefix, self._suffix
        filler_start, filler_end = len(prefix), self.size_bytes - len(suffix)
        pieces = [prefix[start:stop]] if start < filler_start else []
        position = max(start, filler_start) - filler_start
        last = min(stop, filler_end) - filler_start
        while position < last:
            index, offset = divmod(position, CHUNK_BYTES)
            end = min(last - index * CHUNK_BYTES, CHUNK_BYTES)
            pieces.append(_segment(self.seed, index)[offset:end])
            position = index * CHUNK_BYTES + end
        if stop > filler_end:
            pieces.append(suffix[max(start - filler_end, 0) : stop - filler_end])
        return b"".join(pieces)
