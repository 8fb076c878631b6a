"""An HTTP answer as data, and the one place that writes answers to aiohttp.

Handlers build an ``Answer``; ``send`` streams it. Keeping the writing in one place
lets a fault cut any answer short, and lets big bodies flow chunk by chunk.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping

import attrs
from aiohttp import web


@attrs.frozen
class Answer:
    """One HTTP answer: status, headers and a body given as chunks of bytes.

    ``length`` is the body size in bytes and becomes ``Content-Length``; ``chunks``
    may be a generator, so a body is produced only as it is sent.
    """

    status: int
    headers: Mapping[str, str]
    chunks: Iterable[bytes] = attrs.field(repr=False)
    length: int

    @classmethod
    def of_bytes(cls, status: int, headers: Mapping[str, str], body: bytes) -> Answer:
        """Build an answer whose whole body is already in memory."""
        return cls(status, headers, (body,) if body else (), len(body))


def hang_up(request: web.BaseRequest) -> None:
    """Close the client's connection after flushing what was already written."""
    transport = request.transport
    if transport is not None:  # None: the client has already gone
        transport.close()


async def send(
    request: web.BaseRequest,
    answer: Answer,
    *,
    closing: asyncio.Event,
    cut_after: int | None = None,
) -> web.StreamResponse:
    """Write ``answer`` to the client, streaming its chunks as they are produced.

    ``cut_after`` (bytes) sends the headers with the full ``Content-Length`` and at
    most that much of the body, always less than all of it, then closes the
    connection; an empty body cannot be cut, so the connection closes unanswered.
    ``closing`` set by the server's shutdown stops a long body early. A client that
    hangs up mid-answer (a timeout, a result too large for it) ends the answer
    quietly, as a real server's would: it is not an error of the fake's.
    """
    if cut_after is not None and answer.length == 0:
        hang_up(request)
        return web.Response()
    response = web.StreamResponse(status=answer.status, headers=answer.headers)
    response.content_length = answer.length
    try:
        await _write(request, response, answer, closing, cut_after)
    except ConnectionError:  # reset, aborted, or aiohttp's "Connection lost"
        hang_up(request)
    return response


async def _write(
    request: web.BaseRequest,
    response: web.StreamResponse,
    answer: Answer,
    closing: asyncio.Event,
    cut_after: int | None,
) -> None:
    await response.prepare(request)
    if request.method == "HEAD":
        await response.write_eof()
        return
    budget = answer.length if cut_after is None else min(cut_after, answer.length - 1)
    sent = 0
    for chunk in answer.chunks:
        if closing.is_set():
            break
        piece = chunk[: budget - sent]
        # An empty write still flushes the buffered headers.
        await response.write(piece)
        sent += len(piece)
        if sent >= budget:
            break
    if cut_after is not None or closing.is_set():
        hang_up(request)
        return
    await response.write_eof()
