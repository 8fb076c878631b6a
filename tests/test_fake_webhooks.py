"""The fake's signed webhooks, received by a real aiohttp server on 127.0.0.1.

Signatures are checked with joserfc directly, against the public key fetched from
the fake over HTTP, as a customer's receiver would.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import io
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import RSAKey

import aiotlink.testing
from aiotlink.testing import FakeTransactionLink, ManualClock
from aiotlink.testing import _process as process
from aiotlink.testing import _signing as signing
from aiotlink.testing._events import event_type
from aiotlink.testing._executions import Definition, Execution, next_change_at
from aiotlink.testing._watch import StatusWatch

from .servers import ScriptedServer, drop, eventually, reply, stall
from .testing.helpers import auth, error_codes, find, initialise

HOOK = "/hooks"
FLAKY = "/flaky"
RETRY_SECONDS = 0.05
WALK = ["INITIALISED", "CREATED", "AWAITING", "RUNNING", "COMPLETED"]


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A plain aiohttp client session, closed after the test."""
    async with aiohttp.ClientSession() as client_session:
        yield client_session


@pytest.fixture
async def receiver() -> AsyncIterator[ScriptedServer]:
    """A customer's webhook endpoints: POST /hooks answers 200; tests script POST /flaky."""
    async with ScriptedServer() as server:
        server.script("POST", HOOK, reply(200))
        yield server


@pytest.fixture
def clock() -> ManualClock:
    """A clock that moves only when the test says so."""
    return ManualClock(start=1_800_000_000.0)


@pytest.fixture
async def fake(clock: ManualClock, receiver: ScriptedServer) -> AsyncIterator[FakeTransactionLink]:
    """A started fake on a manual clock that sends its webhooks to the receiver, quickly retried."""
    async with FakeTransactionLink(
        clock=clock,
        webhook_url=receiver.url + HOOK,
        webhook_timeout=0.5,
        webhook_retry_seconds=RETRY_SECONDS,
    ) as started:
        yield started


def received(receiver: ScriptedServer, path: str = HOOK) -> list[dict[str, Any]]:
    """The payloads the receiver got at ``path``, in order of arrival."""
    return [json.loads(seen.body) for seen in receiver.requests_to("POST", path)]


def statuses(receiver: ScriptedServer) -> list[str]:
    """The statuses announced to the receiver, in order of arrival."""
    return [payload["status"] for payload in received(receiver)]


async def public_key(session: aiohttp.ClientSession, fake: FakeTransactionLink, kid: str) -> RSAKey:
    """Fetch a webhook key from the fake, as a receiver would, and import it."""
    async with session.get(
        f"{fake.url}/auth/webhooks/key/{kid}", headers=auth(fake.token)
    ) as response:
        assert response.status == 200, await response.text()
        pem = await response.text()
    return RSAKey.import_key(pem)


def kid_of(signature: str) -> str:
    """The kid in a detached JWS's protected header (read without verifying)."""
    return str(json.loads(protected_header(signature))["kid"])


def protected_header(signature: str) -> bytes:
    """The protected header of a compact JWS, decoded."""
    header = signature.split(".")[0]
    return base64.urlsafe_b64decode(header + "=" * (-len(header) % 4))


def verify(signature: str, body: bytes, key: RSAKey) -> None:
    """Verify a detached JWS over ``body``; raises joserfc's BadSignatureError if wrong."""
    jws.deserialize_compact(signature, key, algorithms=["RS256"], payload=body)


async def start_walk(
    session: aiohttp.ClientSession, fake: FakeTransactionLink, walk: list[str] = WALK, **fields: Any
) -> str:
    """Add a definition walking ``walk`` one status per find and initialise it; return the id."""
    definition_id = fake.add_definition(statuses=walk)
    return str((await initialise(session, fake, definition_id, **fields))["id"])


# Events


async def test_one_signed_event_per_status_change_in_order(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """Each status change is POSTed once, in order, with its eventType, signed over the raw body."""
    record_id = "9f1e2d3c-4b5a-4678-9abc-def012345678"
    execution_id = await start_walk(session, fake, recordId=record_id)
    for _ in range(len(WALK) + 1):  # the last find changes nothing
        await find(session, fake, execution_id)
    await fake.webhooks_settled(timeout=5)

    payloads = received(receiver)
    assert [payload["status"] for payload in payloads] == WALK
    assert [payload["eventType"] for payload in payloads] == [
        "WORKFLOW_STATUS_UPDATED",
        "WORKFLOW_STATUS_UPDATED",
        "WORKFLOW_AWAITING",
        "WORKFLOW_STATUS_UPDATED",
        "WORKFLOW_COMPLETED",
    ]
    definition_id = payloads[0]["workflowDefinitionId"]
    for payload in payloads:
        assert payload == {
            "eventType": payload["eventType"],
            "workflowExecutionId": execution_id,
            "workflowDefinitionId": definition_id,
            "status": payload["status"],
            "recordId": record_id,
            "occurredAt": "2027-01-15T08:00:00Z",  # the manual clock's start
        }
    key = await public_key(session, fake, fake.webhook_key_id)
    for seen in receiver.requests_to("POST", HOOK):
        assert seen.headers["Content-Type"] == "application/json"
        assert seen.body == json.dumps(json.loads(seen.body), separators=(",", ":")).encode()
        signature = seen.headers["JWS-SIGNATURE"]
        _, middle, _ = signature.split(".")
        assert middle == ""  # detached: RFC 7515 appendix F
        assert kid_of(signature) == fake.webhook_key_id
        verify(signature, seen.body, key)
        with pytest.raises(BadSignatureError):
            verify(signature, seen.body.replace(b'"status":', b'"status": '), key)
    # The protected header is exactly the provider's.
    assert protected_header(signature) == (
        b'{"alg":"RS256","kid":"' + fake.webhook_key_id.encode() + b'"}'
    )


async def test_the_records_hold_what_was_sent(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """webhook_deliveries keeps each payload, body, signature, kid and attempt, as sent."""
    execution_id = await start_walk(session, fake, ["INITIALISED", "COMPLETED"])
    await find(session, fake, execution_id)
    await fake.webhooks_settled(timeout=5)
    deliveries = fake.webhook_deliveries
    assert [delivery.status for delivery in deliveries] == ["INITIALISED", "COMPLETED"]
    for delivery, seen in zip(deliveries, receiver.requests_to("POST", HOOK), strict=True):
        assert delivery.body == seen.body
        assert json.loads(delivery.body) == delivery.payload
        assert delivery.signature == seen.headers["JWS-SIGNATURE"]
        assert delivery.kid == fake.webhook_key_id
        assert delivery.url == receiver.url + HOOK
        assert delivery.execution_id == execution_id
        assert delivery.fault is None
        assert delivery.outcome == "delivered"
        (attempt,) = delivery.attempts
        assert (attempt.status, attempt.error, attempt.succeeded) == (200, None, True)
        assert attempt.at <= time.monotonic()
    assert deliveries[1].event_type == "WORKFLOW_COMPLETED"
    text = repr(deliveries[0])
    assert "WORKFLOW_STATUS_UPDATED INITIALISED" in text
    assert deliveries[0].signature not in text


async def test_time_steps_are_announced_when_a_manual_clock_passes_them(
    fake: FakeTransactionLink,
    receiver: ScriptedServer,
    session: aiohttp.ClientSession,
    clock: ManualClock,
) -> None:
    """Advancing a ManualClock over several steps announces each, dated by its step."""
    definition_id = fake.add_definition(
        statuses=["INITIALISED", "RUNNING", "COMPLETED"], step_seconds=10
    )
    await initialise(session, fake, definition_id)
    clock.advance(25)  # no request: the advance alone announces, at once
    assert [delivery.status for delivery in fake.webhook_deliveries] == [
        "INITIALISED",
        "RUNNING",
        "COMPLETED",
    ]
    await fake.webhooks_settled(timeout=5)
    payloads = received(receiver)
    assert [(payload["status"], payload["occurredAt"]) for payload in payloads] == [
        ("INITIALISED", "2027-01-15T08:00:00Z"),
        ("RUNNING", "2027-01-15T08:00:10Z"),
        ("COMPLETED", "2027-01-15T08:00:20Z"),
    ]
    clock.advance(100)
    await fake.webhooks_settled(timeout=5)
    assert len(received(receiver)) == 3


async def test_time_steps_are_announced_on_a_real_clock(
    receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """With the wall clock, a timer notices each step as it comes, without any request."""
    async with FakeTransactionLink(webhook_url=receiver.url + HOOK) as fake:
        definition_id = fake.add_definition(
            statuses=["INITIALISED", "RUNNING", "COMPLETED"], step_seconds=0.05
        )
        await initialise(session, fake, definition_id)
        requests = len(fake.requests)
        await eventually(lambda: len(received(receiver)) == 3, timeout=3)
        assert statuses(receiver) == ["INITIALISED", "RUNNING", "COMPLETED"]
        assert len(fake.requests) == requests
        await fake.webhooks_settled(timeout=5)


async def test_cancel_and_expiry_are_announced(
    fake: FakeTransactionLink,
    receiver: ScriptedServer,
    session: aiohttp.ClientSession,
    clock: ManualClock,
) -> None:
    """Cancel announces CANCELLED; expire() and a passed expiresAt announce EXPIRED."""
    cancelled = await start_walk(session, fake)
    async with session.post(
        f"{fake.url}/workflows/{cancelled}/cancel", headers=auth(fake.token)
    ) as response:
        assert response.status == 200
    expired = await start_walk(session, fake)
    fake.expire(expired)
    expires_at = datetime.fromtimestamp(clock() + 3600, UTC)
    timed_out = await start_walk(session, fake, expiresAt=expires_at.isoformat())
    clock.advance(3601)
    await fake.webhooks_settled(timeout=5)
    by_execution: dict[str, list[tuple[str, str]]] = {}
    for payload in received(receiver):
        by_execution.setdefault(payload["workflowExecutionId"], []).append(
            (payload["status"], payload["eventType"])
        )
    completed = "WORKFLOW_COMPLETED"
    first = ("INITIALISED", "WORKFLOW_STATUS_UPDATED")
    assert by_execution == {
        cancelled: [first, ("CANCELLED", completed)],
        expired: [first, ("EXPIRED", completed)],
        timed_out: [first, ("EXPIRED", completed)],
    }
    assert received(receiver)[-1]["occurredAt"] == "2027-01-15T09:00:00Z"  # its expiresAt


async def test_set_webhook_url_later_and_off(
    receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """Set later, only later changes are sent; set to None, nothing more is."""
    async with FakeTransactionLink(webhook_retry_seconds=RETRY_SECONDS) as fake:
        assert [fake.webhook_url] == [None]  # a list: mypy would narrow the property
        execution_id = await start_walk(session, fake)
        await find(session, fake, execution_id)  # CREATED, unannounced
        fake.set_webhook_url(receiver.url + HOOK)
        assert fake.webhook_url == receiver.url + HOOK
        await find(session, fake, execution_id)
        await fake.webhooks_settled(timeout=5)
        assert statuses(receiver) == ["AWAITING"]
        fake.set_webhook_url(None)
        await find(session, fake, execution_id)
        await fake.webhooks_settled(timeout=5)
        assert statuses(receiver) == ["AWAITING"]
        assert len(fake.webhook_deliveries) == 1


# The key endpoint


async def test_the_key_endpoint_serves_pem_with_auth(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """GET /auth/webhooks/key/{kid} needs a credential and answers the public key as PEM."""
    kid = fake.webhook_key_id
    url = f"{fake.url}/auth/webhooks/key/{kid}"
    for headers in (auth(fake.token), {"Authorization": f"Bearer {fake.jwt}"}):
        async with session.get(url, params={"pem": "true"}, headers=headers) as response:
            assert response.status == 200
            assert response.content_type == "text/plain"
            pem = await response.text()
    assert pem.startswith("-----BEGIN PUBLIC KEY-----")
    assert "PRIVATE" not in pem
    assert RSAKey.import_key(pem).as_dict()["kty"] == "RSA"
    limited = fake.add_token(can_run=False, can_view_workspace=False)
    async with session.get(url, headers=auth(limited)) as response:
        assert response.status == 200
    async with session.get(url) as response:
        assert response.status == 401
        assert await error_codes(response) == ["UNAUTHORIZED"]
    async with session.get(url, params={"pem": "false"}, headers=auth(fake.token)) as response:
        assert response.status == 400
    async with session.get(
        f"{fake.url}/auth/webhooks/key/not-a-kid", headers=auth(fake.token)
    ) as response:
        assert response.status == 404
        assert await error_codes(response) == ["WEBHOOK_KEY_NOT_FOUND"]
    fake.fail_next("webhook_key", 503)  # a key endpoint that fails, for a receiver's tests
    async with session.get(url, headers=auth(fake.token)) as response:
        assert response.status == 503
    assert [request.route for request in fake.requests] == ["webhook_key"] * 7


# Redelivery


async def test_a_500_is_redelivered_until_a_2xx(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """A non-2xx answer is retried webhook_retry_seconds later, with the same body and header."""
    receiver.script("POST", FLAKY, reply(500), reply(503), reply(204))
    fake.set_webhook_url(receiver.url + FLAKY)
    await start_walk(session, fake)
    await fake.webhooks_settled(timeout=5)
    (delivery,) = fake.webhook_deliveries
    assert [attempt.status for attempt in delivery.attempts] == [500, 503, 204]
    assert delivery.outcome == "delivered"
    times = [attempt.at for attempt in delivery.attempts]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times)]
    assert all(gap >= RETRY_SECONDS * 0.9 for gap in gaps), gaps
    seen = receiver.requests_to("POST", FLAKY)
    assert len(seen) == 3
    assert {(one.body, one.headers["JWS-SIGNATURE"]) for one in seen} == {
        (delivery.body, delivery.signature)
    }


async def test_five_retries_then_it_gives_up(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """Without a 2xx, a webhook is posted 6 times in all (5 retries), then marked failed."""
    receiver.script("POST", FLAKY, reply(500))
    fake.set_webhook_url(receiver.url + FLAKY)
    await start_walk(session, fake)
    await fake.webhooks_settled(timeout=5)
    (delivery,) = fake.webhook_deliveries
    assert [attempt.status for attempt in delivery.attempts] == [500] * 6
    assert delivery.outcome == "failed"
    assert len(receiver.requests_to("POST", FLAKY)) == 6


async def test_a_redirect_is_a_failure(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """A 3xx is not a 2xx: it is retried, not followed."""
    receiver.script("POST", FLAKY, reply(302, headers={"Location": HOOK}), reply(200))
    fake.set_webhook_url(receiver.url + FLAKY)
    await start_walk(session, fake)
    await fake.webhooks_settled(timeout=5)
    assert [attempt.status for attempt in fake.webhook_deliveries[0].attempts] == [302, 200]
    assert receiver.requests_to("POST", HOOK) == []


async def test_no_answer_in_time_counts_as_a_failure(
    receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """An answer later than webhook_timeout, or a dropped connection, is a failed attempt."""
    receiver.script("POST", FLAKY, stall(2, reply(200)), drop(), reply(200))
    async with FakeTransactionLink(
        webhook_url=receiver.url + FLAKY, webhook_timeout=0.2, webhook_retry_seconds=0.01
    ) as fake:
        await start_walk(session, fake)
        began = time.monotonic()
        await fake.webhooks_settled(timeout=5)
        assert time.monotonic() - began < 1.5
        attempts = fake.webhook_deliveries[0].attempts
    assert [(attempt.status, attempt.error) for attempt in attempts] == [
        (None, "TimeoutError"),
        (None, "ServerDisconnectedError"),
        (200, None),
    ]


async def test_a_refused_connection_counts_as_a_failure(session: aiohttp.ClientSession) -> None:
    """Nothing listening at the URL: every attempt fails with a connection error."""
    async with ScriptedServer() as gone:
        url = gone.url + HOOK
    async with FakeTransactionLink(webhook_url=url, webhook_retry_seconds=0.001) as fake:
        await start_walk(session, fake)
        await fake.webhooks_settled(timeout=5)
        (delivery,) = fake.webhook_deliveries
    assert delivery.outcome == "failed"
    assert [attempt.error for attempt in delivery.attempts] == ["ClientConnectorError"] * 6


# Faults


async def test_drop_next_webhook(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """A dropped webhook is recorded but never posted; the next ones are."""
    fake.drop_next_webhook(times=2)
    assert fake.pending_webhook_faults() == 2
    execution_id = await start_walk(session, fake)
    for _ in range(3):
        await find(session, fake, execution_id)
    await fake.webhooks_settled(timeout=5)
    assert statuses(receiver) == ["AWAITING", "RUNNING"]
    dropped = fake.webhook_deliveries[:2]
    assert [(one.status, one.fault, one.outcome) for one in dropped] == [
        ("INITIALISED", "drop", "dropped"),
        ("CREATED", "drop", "dropped"),
    ]
    assert all(not one.attempts for one in dropped)
    assert fake.pending_webhook_faults() == 0


async def test_duplicate_next_webhook(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """A duplicated webhook is posted twice, with the same body and signature."""
    fake.duplicate_next_webhook()
    execution_id = await start_walk(session, fake)
    await find(session, fake, execution_id)
    await fake.webhooks_settled(timeout=5)
    assert statuses(receiver) == ["INITIALISED", "INITIALISED", "CREATED"]
    first, second, _ = receiver.requests_to("POST", HOOK)
    assert first.body == second.body
    assert first.headers["JWS-SIGNATURE"] == second.headers["JWS-SIGNATURE"]
    assert [one.fault for one in fake.webhook_deliveries] == ["duplicate", "duplicate", None]


async def test_reorder_next_webhooks(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """The next N webhooks are held, then posted last first; later ones follow in order."""
    fake.reorder_next_webhooks(3)
    execution_id = await start_walk(session, fake)
    await find(session, fake, execution_id)
    await asyncio.sleep(0.05)
    assert statuses(receiver) == []  # held: only two of three so far
    with pytest.raises(TimeoutError, match="2 webhook deliveries still pending"):
        await fake.webhooks_settled(timeout=0.05)
    for _ in range(2):
        await find(session, fake, execution_id)
    await fake.webhooks_settled(timeout=5)
    assert statuses(receiver) == ["AWAITING", "CREATED", "INITIALISED", "RUNNING"]
    assert [one.fault for one in fake.webhook_deliveries] == ["reorder"] * 3 + [None]


async def test_clear_webhook_faults_releases_held_webhooks(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """Clearing the faults forgets the planned ones and sends the held ones, reversed."""
    fake.reorder_next_webhooks(5)
    fake.drop_next_webhook()
    execution_id = await start_walk(session, fake)
    await find(session, fake, execution_id)
    fake.clear_webhook_faults()
    assert fake.pending_webhook_faults() == 0
    await find(session, fake, execution_id)
    await fake.webhooks_settled(timeout=5)
    assert statuses(receiver) == ["CREATED", "INITIALISED", "AWAITING"]


async def test_delay_next_webhook(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """A delayed webhook arrives that much later, after the ones made behind it."""
    fake.delay_next_webhook(0.3)
    began = time.monotonic()
    execution_id = await start_walk(session, fake)
    await find(session, fake, execution_id)
    await fake.webhooks_settled(timeout=5)
    assert statuses(receiver) == ["CREATED", "INITIALISED"]
    delayed, prompt = fake.webhook_deliveries
    assert (delayed.fault, prompt.fault) == ("delay", None)
    assert delayed.attempts[0].at - began >= 0.3
    assert prompt.attempts[0].at < delayed.attempts[0].at


async def test_corrupt_next_webhook_signature(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """A corrupted signature is well formed, under the known kid, and does not verify."""
    fake.corrupt_next_webhook_signature()
    execution_id = await start_walk(session, fake)
    await find(session, fake, execution_id)
    await fake.webhooks_settled(timeout=5)
    key = await public_key(session, fake, fake.webhook_key_id)
    bad, good = receiver.requests_to("POST", HOOK)
    assert kid_of(bad.headers["JWS-SIGNATURE"]) == fake.webhook_key_id
    with pytest.raises(BadSignatureError):
        verify(bad.headers["JWS-SIGNATURE"], bad.body, key)
    verify(good.headers["JWS-SIGNATURE"], good.body, key)
    assert fake.webhook_deliveries[0].fault == "corrupt_signature"
    assert fake.webhook_deliveries[0].signature == bad.headers["JWS-SIGNATURE"]


async def test_sign_next_webhook_with_unknown_key(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """A webhook signed under an unknown kid: the key endpoint answers 404 for it."""
    fake.sign_next_webhook_with_unknown_key()
    execution_id = await start_walk(session, fake)
    await find(session, fake, execution_id)
    await fake.webhooks_settled(timeout=5)
    stranger, known = receiver.requests_to("POST", HOOK)
    kid = kid_of(stranger.headers["JWS-SIGNATURE"])
    assert kid != fake.webhook_key_id
    assert fake.webhook_deliveries[0].kid == kid
    assert fake.webhook_deliveries[0].fault == "unknown_kid"
    async with session.get(
        f"{fake.url}/auth/webhooks/key/{kid}", headers=auth(fake.token)
    ) as response:
        assert response.status == 404
    current = await public_key(session, fake, fake.webhook_key_id)
    with pytest.raises(BadSignatureError):  # not the current key's signature either
        verify(stranger.headers["JWS-SIGNATURE"], stranger.body, current)
    verify(known.headers["JWS-SIGNATURE"], known.body, current)


async def test_rotate_webhook_key(
    fake: FakeTransactionLink, receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """After a rotation, webhooks are signed by a new key under a new kid; the old stays served."""
    old_kid = fake.webhook_key_id
    execution_id = await start_walk(session, fake)
    await fake.webhooks_settled(timeout=5)
    new_kid = fake.rotate_webhook_key()
    assert new_kid == fake.webhook_key_id != old_kid
    await find(session, fake, execution_id)
    await fake.webhooks_settled(timeout=5)
    before, after = receiver.requests_to("POST", HOOK)
    assert (kid_of(before.headers["JWS-SIGNATURE"]), kid_of(after.headers["JWS-SIGNATURE"])) == (
        old_kid,
        new_kid,
    )
    old_key = await public_key(session, fake, old_kid)
    new_key = await public_key(session, fake, new_kid)
    verify(before.headers["JWS-SIGNATURE"], before.body, old_key)
    verify(after.headers["JWS-SIGNATURE"], after.body, new_key)
    with pytest.raises(BadSignatureError):
        verify(after.headers["JWS-SIGNATURE"], after.body, old_key)


async def test_webhook_faults_are_checked(fake: FakeTransactionLink) -> None:
    """Bad counts, delays and URLs raise ValueError."""
    with pytest.raises(ValueError, match="times"):
        fake.drop_next_webhook(times=0)
    with pytest.raises(ValueError, match="count"):
        fake.reorder_next_webhooks(1)
    with pytest.raises(ValueError, match="seconds"):
        fake.delay_next_webhook(-1)
    with pytest.raises(ValueError, match="http"):
        fake.set_webhook_url("ftp://example.com/hooks")
    with pytest.raises(ValueError, match="webhook_timeout"):
        FakeTransactionLink(webhook_timeout=0)
    with pytest.raises(ValueError, match="seconds"):
        FakeTransactionLink(webhook_retry_seconds=-1)
    assert fake.pending_webhook_faults() == 0


# Lifecycle


async def test_close_cancels_deliveries_and_leaves_no_task(
    receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """close() cancels a POST in flight and a retry waiting; no task or session outlives it."""
    receiver.script("POST", FLAKY, reply(500), stall(30, reply(200)))
    fake = FakeTransactionLink(webhook_url=receiver.url + FLAKY, webhook_retry_seconds=30)
    deliveries = fake.webhook_deliveries
    await fake.start()
    try:
        await start_walk(session, fake)  # fails, then waits 30 s for its retry
        await eventually(lambda: bool(deliveries[0].attempts))
        execution_id = await start_walk(session, fake)  # stalls 30 s in flight
        await eventually(lambda: len(receiver.requests_to("POST", FLAKY)) == 2)
        await find(session, fake, execution_id)  # queued behind it
    finally:
        await fake.close()
    assert [one.outcome for one in deliveries] == ["cancelled"] * 3
    ours = [
        task
        for task in asyncio.all_tasks()
        if task.get_name().startswith("aiotlink-fake-webhook") and not task.done()
    ]
    assert ours == []
    await fake.webhooks_settled(timeout=0.1)
    await fake.close()
    del fake
    gc.collect()  # an unclosed session would warn here, an error under filterwarnings


async def test_a_fake_restarts_with_webhooks(
    receiver: ScriptedServer, session: aiohttp.ClientSession
) -> None:
    """After close(), start() sends webhooks again."""
    fake = FakeTransactionLink(webhook_url=receiver.url + HOOK)
    for _ in range(2):
        async with fake:
            await start_walk(session, fake)
            await fake.webhooks_settled(timeout=5)
    assert [one.outcome for one in fake.webhook_deliveries] == ["delivered"] * 2


async def test_a_fake_without_webhooks_makes_no_key(
    monkeypatch: pytest.MonkeyPatch, session: aiohttp.ClientSession
) -> None:
    """Without a webhook URL, nothing is signed and no RSA key is generated."""

    def no_key(index: int) -> RSAKey:
        raise AssertionError("a key was generated")

    monkeypatch.setattr(signing, "pooled_key", no_key)
    async with FakeTransactionLink() as fake:
        execution_id = await start_walk(session, fake)
        await find(session, fake, execution_id)
        assert fake.webhook_key_id
        await fake.webhooks_settled(timeout=0.1)
    assert fake.webhook_deliveries == []


def test_without_the_extra_a_webhook_url_names_the_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without joserfc, a webhook URL raises ImportError saying what to pip install."""
    monkeypatch.setitem(sys.modules, "joserfc", None)
    monkeypatch.setitem(sys.modules, "joserfc.jws", None)
    FakeTransactionLink()  # the fake itself needs no joserfc
    with pytest.raises(ImportError, match=re.escape('pip install "aiotlink[webhooks]"')):
        FakeTransactionLink(webhook_url="http://127.0.0.1:9/hooks")
    with pytest.raises(ImportError, match="aiotlink"):
        FakeTransactionLink().set_webhook_url("http://127.0.0.1:9/hooks")


def test_the_testing_package_imports_without_joserfc() -> None:
    """aiotlink.testing imports no joserfc until a webhook needs it."""
    code = (
        "import sys; sys.modules['joserfc'] = None\n"
        "import aiotlink.testing, aiotlink.testing._process\n"
        "aiotlink.testing.FakeTransactionLink()\n"
        "assert 'cryptography' not in sys.modules, 'cryptography was imported'\n"
    )
    root = str(Path(aiotlink.testing.__file__).resolve().parents[2])
    done = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONPATH": root},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


# Process mode


def options(*arguments: str) -> argparse.Namespace:
    """Parse process-mode arguments."""
    return process.build_parser().parse_args(list(arguments))


async def test_the_process_mode_passes_the_webhook_url(receiver: ScriptedServer) -> None:
    """--webhook-url reaches the fake, and the banner says where webhooks and keys are."""
    assert options().webhook_url is None
    stop = asyncio.Event()
    out, err = io.StringIO(), io.StringIO()
    made: list[FakeTransactionLink] = []
    original = FakeTransactionLink

    def recording(**keywords: Any) -> FakeTransactionLink:
        made.append(original(**keywords))
        return made[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(process, "FakeTransactionLink", recording)
        serving = asyncio.create_task(
            process.serve(
                options("--port", "0", "--webhook-url", receiver.url + HOOK),
                stop=stop,
                out=out,
                err=err,
            )
        )
        await eventually(lambda: "Press Ctrl-C" in out.getvalue())
        (fake,) = made
        assert fake.webhook_url == receiver.url + HOOK
        line = f"webhooks {receiver.url}{HOOK}  (key: {fake.url}/auth/webhooks/key/"
        assert line + fake.webhook_key_id + ")" in out.getvalue()
        stop.set()
        assert await serving == 0
    assert err.getvalue() == ""


async def test_the_process_mode_reports_a_bad_webhook_url() -> None:
    """A webhook URL that is not http(s) is one error line and exit code 1."""
    out, err = io.StringIO(), io.StringIO()
    code = await process.serve(
        options("--port", "0", "--webhook-url", "nope"), stop=asyncio.Event(), out=out, err=err
    )
    assert code == 1
    assert err.getvalue().startswith("error: webhook_url must be an absolute http(s) URL")
    assert out.getvalue() == ""


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("PAUSED", "WORKFLOW_STATUS_UPDATED"),
        ("AWAITING", "WORKFLOW_AWAITING"),
        ("TIMEOUT", "WORKFLOW_COMPLETED"),
        ("FAILED", "WORKFLOW_COMPLETED"),
        ("TERMINATED", "WORKFLOW_COMPLETED"),
    ],
)
def test_event_types_of_other_statuses(status: str, expected: str) -> None:
    """Any terminal status is a completion; any other but AWAITING, an update."""
    assert event_type(status) == expected


def execution(statuses: list[str], step_seconds: float, expires_at: float | None) -> Execution:
    """A bare execution created at 0 s, for the pure rules."""
    definition = Definition("d", tuple(statuses), None, step_seconds, False, "d", "1", {})
    expiry = None if expires_at is None else datetime.fromtimestamp(expires_at, UTC)
    return Execution("e", definition, 0.0, {}, "en", expiry, None, None, None, {})


def test_the_watch_announces_each_change_once_and_dates_it() -> None:
    """Repeated steps are one change; a jump yields every step, dated; terminal ends it."""
    watch = StatusWatch()
    walk = execution(["INITIALISED", "RUNNING", "RUNNING", "COMPLETED"], 10, expires_at=100)
    assert [(c.status, c.at) for c in watch.changes(walk, 0)] == [("INITIALISED", 0)]
    assert watch.next_due() == 10
    assert watch.pop_due(9.9) == []
    assert watch.pop_due(35) == ["e"]
    assert [(c.status, c.at) for c in watch.changes(walk, 35)] == [
        ("RUNNING", 10),
        ("COMPLETED", 30),
    ]
    assert watch.next_due() is None  # completed before its expiry: no EXPIRED
    assert watch.changes(walk, 200) == []
    assert next_change_at(walk, 3) is None


def test_the_watch_expires_at_the_expiry_instant() -> None:
    """An expiry after some steps yields those steps, then EXPIRED dated by expiresAt."""
    watch = StatusWatch()
    walk = execution(["INITIALISED", "RUNNING", "COMPLETED"], 10, expires_at=15)
    watch.changes(walk, 0)
    assert [(c.status, c.at) for c in watch.changes(walk, 50)] == [
        ("RUNNING", 10),
        ("EXPIRED", 15),
    ]
    by_poll = execution(["INITIALISED", "COMPLETED"], 0, expires_at=None)
    watch.changes(by_poll, 0)
    assert next_change_at(by_poll, 0) is None  # only a find moves it
