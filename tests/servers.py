"""A real HTTP server on 127.0.0.1 whose answers a test scripts in advance."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import pytest
from aiohttp import web

if TYPE_CHECKING:
    from aiotlink.testing import FakeTransactionLink

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@attrs.frozen
class Seen:
    """A request as the server received it."""

    method: str
    path: str
    raw_path: str
    headers: Mapping[str, str]
    body: bytes


async def eventually(condition: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait until ``condition()`` holds, checked about every millisecond, for ``timeout`` s."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if condition():
                    return
                await asyncio.sleep(0.001)
    except TimeoutError:
        raise AssertionError(f"the condition did not hold within {timeout} s") from None


async def settled(count: Callable[[], int], quiet: float = 0.1) -> int:
    """``count()`` once it has not changed for ``quiet`` seconds (within 5 s).

    For "nothing is polled any more": requests sent before a stop may reach a server on
    the test's loop a little later on a busy machine; a count that keeps rising never
    settles, and the test fails.
    """
    async with asyncio.timeout(5):
        last = count()
        while True:
            await asyncio.sleep(quiet)
            now = count()
            if now == last:
                return now
            last = now


def follow_answers(
    fake: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> list[asyncio.Task[Any]]:
    """From now on, keep the task serving each request to ``fake`` (storage included).

    aiohttp serves each request in a task of its own, done once the answer is written
    or given up on, and any error of the handler logged.
    """
    tasks: list[asyncio.Task[Any]] = []
    serve = fake._serve

    async def serving(*arguments: Any) -> web.StreamResponse:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)
        return await serve(*arguments)

    monkeypatch.setattr(fake, "_serve", serving)
    return tasks


def reply(
    status: int = 200,
    payload: Any = None,
    *,
    text: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> Handler:
    """An answer: ``payload`` as JSON, or ``text`` as is."""

    async def handler(_: web.Request) -> web.StreamResponse:
        body = text if text is not None else ("" if payload is None else json.dumps(payload))
        return web.Response(status=status, text=body, headers=headers)

    return handler


def drop() -> Handler:
    """No answer: the connection is closed once the request has arrived."""

    async def handler(request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        return web.Response()  # never sent: the transport is closed

    return handler


def stall(seconds: float, then: Handler) -> Handler:
    """An answer that comes only after ``seconds``."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(seconds)
        return await then(request)

    return handler


def stall_mid_body(first: bytes, announced: int, reached: asyncio.Event) -> Handler:
    """A 200 announcing ``announced`` bytes that sends ``first``, sets ``reached``, stalls."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": str(announced)})
        await response.prepare(request)
        await response.write(first)
        reached.set()
        await asyncio.sleep(60)
        return response

    return handler


class ScriptedServer:
    """Answers each ``(method, path)`` with its scripted handlers in order.

    When a route's script runs out, its last handler answers again. Unscripted routes
    answer 404. Every request is kept in ``seen``.
    """

    def __init__(self) -> None:
        self.seen: list[Seen] = []
        self._scripts: dict[tuple[str, str], deque[Handler]] = defaultdict(deque)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._dispatch)
        # Handlers still stalling at the end of a test are cancelled rather than awaited.
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.05)
        self.url = ""

    def script(self, method: str, path: str, *handlers: Handler) -> None:
        """Queue the answers for ``method path``."""
        self._scripts[(method, path)].extend(handlers)

    def requests_to(self, method: str, path: str) -> list[Seen]:
        """The requests seen for ``method path``."""
        return [seen for seen in self.seen if (seen.method, seen.path) == (method, path)]

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        self.seen.append(
            Seen(
                request.method,
                request.path,
                request.raw_path,
                dict(request.headers),
                await request.read(),
            )
        )
        script = self._scripts.get((request.method, request.path))
        if not script:
            return web.Response(status=404, text="no script for this route")
        handler = script.popleft() if len(script) > 1 else script[0]
        return await handler(request)

    async def __aenter__(self) -> ScriptedServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._runner.cleanup()
