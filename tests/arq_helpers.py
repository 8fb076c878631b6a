"""Helpers for the tests of durable following: a real Redis, real arq workers."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.worker import Worker, func

from aiotlink.arq import Outcome, configure

# Workers look at the queue this often: the tests' nudges land within it.
POLL_DELAY = 0.02
# The coroutines that outlive a cancelled job, shielded: arq's and the sweeps'.
SHIELDED = {"Worker.finish_job", "Worker.finish_failed_job", "_Writer.close"}


def redis_settings(port: int) -> RedisSettings:
    return RedisSettings(host="127.0.0.1", port=port, conn_timeout=2)


async def pool(port: int) -> ArqRedis:
    return await create_pool(redis_settings(port))


class Handled:
    """What a handler was called with, in order."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.changed = asyncio.Event()

    async def handle(self, ctx: dict[str, Any], outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.changed.set()

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[Outcome]:
        async with asyncio.timeout(timeout):
            while len(self.outcomes) < count:
                self.changed.clear()
                await self.changed.wait()
        return self.outcomes


@contextlib.asynccontextmanager
async def running_worker(
    redis: ArqRedis, functions: list[Any], **options: Any
) -> AsyncIterator[Worker]:
    """An arq worker in this process, on ``redis``, with ``configure(functions, **options)``."""
    worker_options = {key: options.pop(key) for key in ("queue_name", "max_jobs") if key in options}
    # Named as the tests' follows name them (arq names a function by its __qualname__).
    named = [
        func(f.handle, name="Handled") if isinstance(f, Handled) else func(f, name=f.__name__)
        for f in functions
    ]
    settings = configure(named, **options)
    worker = Worker(
        **settings,
        redis_pool=redis,
        poll_delay=POLL_DELAY,
        handle_signals=False,
        **worker_options,
    )
    task = asyncio.create_task(worker.async_run())
    try:
        yield worker
    finally:
        # No job starts from now on, and those running get a moment to end: a job cut
        # while arq starts or finishes it leaves arq's Redis pipeline unclosed.
        worker.allow_pick_jobs = False
        await asyncio.sleep(2 * POLL_DELAY)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if worker.tasks:
            await asyncio.wait(worker.tasks.values(), timeout=0.5)
        for job in worker.tasks.values():
            job.cancel()
        await asyncio.gather(*worker.tasks.values(), return_exceptions=True)
        # What arq and the sweeps shield from a cancelled job (arq's bookkeeping of it,
        # a sweep's last write-back) goes on after it: let it end before the test's loop
        # closes, or its Redis pipeline is left unclosed.
        shielded = [
            task
            for task in asyncio.all_tasks()
            if getattr(task.get_coro(), "__qualname__", "") in SHIELDED and not task.done()
        ]
        if shielded:
            await asyncio.wait(shielded, timeout=5)
        # close() would close the pool the test owns: run only the shutdown hook.
        assert worker.on_shutdown is not None
        await worker.on_shutdown(worker.ctx)


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool], timeout: float = 10.0
) -> None:
    """Wait until ``check()`` is true, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.02)
