"""Sending the fake's webhooks: signing, planned faults, and redelivery like the provider.

The provider counts a delivery as failed when no answer comes within 10 s or the
answer is not 2xx, and retries it up to 5 times, 5 s apart. The fake does the same,
with both durations configurable so tests run fast.

First attempts go out one at a time, in the order the changes happened, from one
worker task: a receiver sees an execution's events in order unless a planned fault
or a retry reorders them (as the provider's would). A failed delivery waits for its
retries in a task of its own, so it holds up nothing behind it; a delayed one too.
Nothing here blocks the fake's handlers: they only queue.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp

from aiotlink.testing._faults import (
    WebhookCorruptSignature,
    WebhookDelay,
    WebhookDrop,
    WebhookDuplicate,
    WebhookFaultKind,
    WebhookFaultPlan,
    WebhookReorder,
    WebhookUnknownKey,
)
from aiotlink.testing._records import (
    WebhookAttempt,
    WebhookDelivery,
    WebhookFault,
    WebhookOutcome,
)
from aiotlink.testing._signing import KeyRing, corrupt_signature, sign_detached
from aiotlink.testing._wire import dump_json

WEBHOOK_RETRIES = 5
"""Retries after a failed first attempt, as the provider makes them."""

DEFAULT_WEBHOOK_TIMEOUT = 10.0
"""Seconds the provider waits for a 2xx answer before counting an attempt failed."""

DEFAULT_WEBHOOK_RETRY_SECONDS = 5.0
"""Seconds between the provider's attempts."""

SIGNATURE_HEADER = "JWS-SIGNATURE"
"""The header carrying the detached JWS of the body."""

_TASK_NAME = "aiotlink-fake-webhook"

_FAULT_NAMES: dict[type[WebhookFaultKind], WebhookFault] = {
    WebhookDrop: "drop",
    WebhookDuplicate: "duplicate",
    WebhookReorder: "reorder",
    WebhookDelay: "delay",
    WebhookCorruptSignature: "corrupt_signature",
    WebhookUnknownKey: "unknown_kid",
}


class WebhookSender:
    """The fake's outgoing webhooks: keys, planned faults, records, and the tasks that post.

    ``send`` never waits: it signs, records, applies the next planned fault, and
    queues. ``close`` cancels every task (a post in flight included), marks what
    was left ``cancelled``, and closes the HTTP session; the sender can be used again.
    """

    def __init__(self, *, timeout: float, retry_seconds: float) -> None:
        """Prepare to send; no task, session or RSA key exists until the first webhook."""
        self.timeout = timeout
        self.retry_seconds = retry_seconds
        self.keys = KeyRing()
        self.faults = WebhookFaultPlan()
        self.deliveries: list[WebhookDelivery] = []
        self._queue: asyncio.Queue[WebhookDelivery] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._holding = 0
        self._held: list[WebhookDelivery] = []
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.loop: asyncio.AbstractEventLoop | None = None
        """The loop that runs the deliveries: the fake's, set when it starts."""

    def send(self, url: str, payload: dict[str, Any]) -> None:
        """Sign ``payload`` as compact JSON and deliver it to ``url`` in the background.

        Needs ``loop``, or a running loop. A reorder in progress takes this webhook
        without consuming a planned fault.
        """
        fault = None if self._holding else self.faults.take()
        body = dump_json(payload)
        key = self.keys.stranger() if isinstance(fault, WebhookUnknownKey) else self.keys.current
        signature = sign_detached(body, key)
        if isinstance(fault, WebhookCorruptSignature):
            signature = corrupt_signature(signature)
        name = "reorder" if self._holding else None if fault is None else _FAULT_NAMES[type(fault)]
        delivery = WebhookDelivery(url, payload, body, signature, key.kid, fault=name)
        self.deliveries.append(delivery)
        if isinstance(fault, WebhookDrop):
            delivery.outcome = "dropped"
            return
        self._begin()
        if isinstance(fault, WebhookDuplicate):
            twin = WebhookDelivery(url, payload, body, signature, key.kid, fault="duplicate")
            self.deliveries.append(twin)
            self._begin()
            self._enqueue(delivery)
            self._enqueue(twin)
        elif isinstance(fault, WebhookDelay):
            self._spawn(self._delayed(delivery, fault.seconds))
        elif isinstance(fault, WebhookReorder) or self._holding:
            if isinstance(fault, WebhookReorder):
                self._holding = fault.count
            self._held.append(delivery)
            if len(self._held) == self._holding:
                self.release_held()
        else:
            self._enqueue(delivery)

    def release_held(self) -> None:
        """Queue the webhooks held for a reorder, last first, and end the reorder."""
        held, self._held, self._holding = self._held, [], 0
        for delivery in reversed(held):
            self._enqueue(delivery)

    async def settled(self, timeout: float | None) -> None:
        """Wait until no delivery is pending; raise ``TimeoutError`` after ``timeout`` s."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self._pending} webhook deliveries still pending after {timeout} s"
            ) from None

    async def close(self) -> None:
        """Cancel every delivery task and wait for them; close the session. Twice is harmless."""
        tasks = list(self._tasks)
        if self._worker is not None:
            tasks.append(self._worker)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._worker = None
        self._queue = asyncio.Queue()
        self._held, self._holding = [], 0
        for delivery in self.deliveries:
            if delivery.outcome == "pending":
                delivery.outcome = "cancelled"
        self._pending = 0
        # Fresh, as the queue: a fake may be started again under another event loop.
        self._idle = asyncio.Event()
        self._idle.set()
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    # Delivering

    def _begin(self) -> None:
        self._pending += 1
        self._idle.clear()

    def _end(self, delivery: WebhookDelivery, outcome: WebhookOutcome) -> None:
        delivery.outcome = outcome
        self._pending -= 1
        if not self._pending:
            self._idle.set()

    def _enqueue(self, delivery: WebhookDelivery) -> None:
        self._queue.put_nowait(delivery)
        if self._worker is None:
            self._worker = self._loop().create_task(self._work(), name=f"{_TASK_NAME}-worker")

    def _loop(self) -> asyncio.AbstractEventLoop:
        # The fake's loop even when called outside it: a ManualClock advanced by a
        # synchronous test announces changes with no loop running.
        return self.loop if self.loop is not None else asyncio.get_running_loop()

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = self._loop().create_task(work, name=_TASK_NAME)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _work(self) -> None:
        while True:
            delivery = await self._queue.get()
            if await self._attempt(delivery):
                self._end(delivery, "delivered")
            else:
                self._spawn(self._retry(delivery))

    async def _delayed(self, delivery: WebhookDelivery, seconds: float) -> None:
        await asyncio.sleep(seconds)
        if await self._attempt(delivery):
            self._end(delivery, "delivered")
        else:
            await self._retry(delivery)

    async def _retry(self, delivery: WebhookDelivery) -> None:
        while len(delivery.attempts) <= WEBHOOK_RETRIES:
            await asyncio.sleep(self.retry_seconds)
            if await self._attempt(delivery):
                self._end(delivery, "delivered")
                return
        self._end(delivery, "failed")

    async def _attempt(self, delivery: WebhookDelivery) -> bool:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout))
        headers = {"Content-Type": "application/json", SIGNATURE_HEADER: delivery.signature}
        sent_at = time.monotonic()
        try:
            async with self._session.post(
                delivery.url, data=delivery.body, headers=headers, allow_redirects=False
            ) as response:
                await response.read()
                attempt = WebhookAttempt(response.status, None, sent_at)
        except Exception as exc:  # refused, reset, timed out (TimeoutError), bad URL: all failures
            attempt = WebhookAttempt(None, type(exc).__name__, sent_at)
        delivery.attempts.append(attempt)
        return attempt.succeeded
