"""client.webhooks.verify and add_key: only RS256 signatures of the exact body, by the API's keys.

Keys are served by a real HTTP server on 127.0.0.1 that counts its requests; the
signatures are made by tests/webhook_signing.py, as the provider and as a forger would.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import subprocess
import sys
import uuid
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aiotlink import (
    TransactionLinkClient,
    TransactionLinkError,
    WebhookEvent,
    WebhookVerificationError,
    WorkflowStatus,
)
from aiotlink import _webhooks as webhooks_module

from .conftest import EXECUTION_ID, TOKEN
from .servers import ScriptedServer, eventually, reply, stall
from .webhook_signing import Signer, b64url, event_body, rsa_private_key, weak_rsa_private_key


@pytest.fixture
def signer() -> Signer:
    return Signer(rsa_private_key())


def key_path(kid: str) -> str:
    return f"/auth/webhooks/key/{kid}"


def serve_key(server: ScriptedServer, signer: Signer) -> None:
    server.script("GET", key_path(signer.kid), reply(text=signer.public_pem))


def key_requests(server: ScriptedServer) -> list[Any]:
    return [seen for seen in server.seen if seen.path.startswith("/auth/webhooks/key/")]


async def test_a_signed_delivery_verifies_into_an_event(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer
) -> None:
    serve_key(server, signer)
    body = event_body(EXECUTION_ID, "AWAITING", eventType="WORKFLOW_AWAITING", extra={"a": 1})

    event = await client.webhooks.verify(body, signer.sign(body))

    assert isinstance(event, WebhookEvent)
    assert event.execution_id == uuid.UUID(EXECUTION_ID)
    assert event.status is WorkflowStatus.AWAITING
    assert event.event_type == "WORKFLOW_AWAITING"
    assert event.key_id == signer.kid
    assert event.payload == json.loads(body)  # unknown fields kept
    assert event.delivery_key == hashlib.sha256(body).hexdigest()
    (request,) = key_requests(server)
    assert request.headers["Authorization"] == TOKEN  # through the client's session
    assert request.raw_path == f"{key_path(signer.kid)}?pem=true"
    assert "payload" not in repr(event)
    assert EXECUTION_ID in repr(event)


async def test_the_key_is_fetched_once_and_cached(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer
) -> None:
    server.script("GET", key_path(signer.kid), stall(0.2, reply(text=signer.public_pem)))
    bodies = [event_body(EXECUTION_ID, occurredAt=str(number)) for number in range(20)]

    events = await asyncio.gather(
        *(client.webhooks.verify(body, signer.sign(body)) for body in bodies)
    )
    again = await client.with_options(timeout=5).webhooks.verify(bodies[0], signer.sign(bodies[0]))

    assert [event.delivery_key for event in events] == [
        hashlib.sha256(body).hexdigest() for body in bodies
    ]
    assert again.delivery_key == events[0].delivery_key  # a redelivery: the same key
    assert len(key_requests(server)) == 1  # concurrent ones shared it; views share the cache


async def test_a_key_as_a_json_object_holding_the_pem_is_accepted(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer
) -> None:
    server.script("GET", key_path(signer.kid), reply(200, {"publicKey": signer.public_pem}))
    body = event_body(EXECUTION_ID)

    event = await client.webhooks.verify(body, signer.sign(body))

    assert event.key_id == signer.kid


async def test_a_pinned_key_needs_no_request(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer
) -> None:
    client.webhooks.add_key(uuid.UUID(signer.kid), signer.public_pem.encode())
    body = event_body(EXECUTION_ID)

    event = await client.webhooks.verify(bytearray(body), signer.sign(body).encode())

    assert event.key_id == signer.kid
    assert server.seen == []


@pytest.mark.parametrize(
    "tamper",
    [
        pytest.param(lambda body: body[:-2] + b" }", id="one byte changed"),
        pytest.param(lambda body: body + b" ", id="a byte added"),
        pytest.param(lambda body: body.replace(b":", b": "), id="re-serialised"),
        pytest.param(lambda body: event_body(str(uuid.uuid4())), id="another body"),
    ],
)
async def test_a_body_other_than_the_signed_one_is_refused(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer, tamper: Any
) -> None:
    serve_key(server, signer)
    body = event_body(EXECUTION_ID)
    signature = signer.sign(body)

    with pytest.raises(WebhookVerificationError, match="does not match") as raised:
        await client.webhooks.verify(tamper(body), signature)

    assert raised.value.__cause__ is None
    assert raised.value.__context__ is None
    await client.webhooks.verify(body, signature)  # the untampered one still verifies


@pytest.mark.parametrize("alg", ["none", "HS256", "RS512", "ES256"])
async def test_algorithms_other_than_rs256_are_refused_before_any_key_request(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer, alg: str
) -> None:
    serve_key(server, signer)
    body = event_body(EXECUTION_ID)

    with pytest.raises(WebhookVerificationError, match="only RS256"):
        await client.webhooks.verify(body, signer.signed_as(body, alg))

    assert key_requests(server) == []


async def test_hs256_with_the_public_key_as_secret_is_refused_even_with_the_key_cached(
    client: TransactionLinkClient, signer: Signer
) -> None:
    client.webhooks.add_key(signer.kid, signer.public_pem)
    body = event_body(EXECUTION_ID)

    with pytest.raises(WebhookVerificationError):
        await client.webhooks.verify(body, signer.signed_as(body, "HS256"))


@pytest.mark.parametrize(
    "header",
    [
        pytest.param({"alg": None}, id="no alg"),
        pytest.param({"alg": "rs256"}, id="alg in lower case"),
        pytest.param({"alg": ["RS256"]}, id="alg a list"),
        pytest.param({"crit": ["exp"]}, id="crit"),
        pytest.param({"b64": False}, id="unencoded payload"),
        pytest.param({"kid": None}, id="no kid"),
        pytest.param({"kid": "../../workflows/x"}, id="kid a path"),
        pytest.param({"kid": "key-1"}, id="kid not a UUID"),
        pytest.param({"kid": "{7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10}"}, id="kid braced"),
        pytest.param({"kid": 7}, id="kid a number"),
    ],
)
async def test_malformed_headers_are_refused_before_any_request(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer, header: dict[str, Any]
) -> None:
    serve_key(server, signer)
    body = event_body(EXECUTION_ID)

    with pytest.raises(WebhookVerificationError):
        await client.webhooks.verify(body, signer.sign(body, signer.header(**header)))

    assert server.seen == []


def valid_parts(signer: Signer) -> tuple[str, str]:
    body = event_body(EXECUTION_ID)
    header, _, signature = signer.sign(body).split(".")
    return header, signature


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda h, s: f"{h}.{b64url(event_body(EXECUTION_ID))}.{s}", id="attached"),
        pytest.param(lambda h, s: f"{h}..{s}.", id="four segments"),
        pytest.param(lambda h, s: f"{h}.{s}", id="two segments"),
        pytest.param(lambda h, s: f"{h}..", id="no signature"),
        pytest.param(lambda h, s: f"..{s}", id="no header"),
        pytest.param(lambda h, s: f"{h}..{s[:-1]}+", id="base64 not url-safe"),
        pytest.param(lambda h, s: f"{h}=..{s}", id="padding"),
        pytest.param(lambda h, s: f"{h}..{s[:-3]}", id="signature cut"),
        pytest.param(lambda h, s: f"{h[:-5]}..{s}", id="header cut"),
        pytest.param(lambda h, s: f"{b64url(b'[1, 2]')}..{s}", id="header a JSON array"),
        pytest.param(lambda h, s: f"{b64url(b'not json')}..{s}", id="header not JSON"),
        pytest.param(lambda h, s: f"{b64url(b'[' * 5000)}..{s}", id="header nested deep"),
        pytest.param(lambda h, s: "", id="empty"),
        pytest.param(lambda h, s: "é" * 20, id="not ASCII"),
        pytest.param(lambda h, s: f"{h}..{s}" + "A" * 20_000, id="huge"),
        pytest.param(lambda h, s: None, id="None"),
        pytest.param(lambda h, s: f"{h}..{s}".encode("utf-16"), id="bytes not ASCII"),
    ],
)
async def test_malformed_signatures_are_refused_before_any_request(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer, make: Any
) -> None:
    serve_key(server, signer)
    header, signature = valid_parts(signer)

    with pytest.raises(WebhookVerificationError):
        await client.webhooks.verify(event_body(EXECUTION_ID), make(header, signature))

    assert server.seen == []


async def test_a_key_under_2048_bits_is_refused(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer
) -> None:
    weak = Signer(weak_rsa_private_key(512), kid=signer.kid)
    serve_key(server, weak)  # the API serves a weak key under the kid
    body = event_body(EXECUTION_ID)

    with pytest.raises(WebhookVerificationError, match="length"):
        await client.webhooks.verify(body, weak.sign(body))  # 64 bytes: no request
    assert key_requests(server) == []
    with pytest.raises(WebhookVerificationError, match=r"51[12] bits"):
        await client.webhooks.verify(body, signer.sign(body))
    with pytest.raises(ValueError, match=r"51[12] bits"):
        client.webhooks.add_key(weak.kid, weak.public_pem)
    mid = Signer(rsa_private_key(1024))
    with pytest.raises(ValueError, match="1024 bits"):
        client.webhooks.add_key(mid.kid, mid.public_pem)


@pytest.mark.parametrize(
    "pem",
    [
        "not a key",
        "-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n",
        b"\xff\xfe-----BEGIN",
        42,
    ],
)
def test_add_key_refuses_what_is_not_an_rsa_public_key(
    client: TransactionLinkClient, signer: Signer, pem: Any
) -> None:
    with pytest.raises(ValueError, match="public_key_pem"):
        client.webhooks.add_key(signer.kid, pem)
    with pytest.raises(ValueError, match="key_id must be a UUID"):
        client.webhooks.add_key("../x", signer.public_pem)


async def test_an_ec_key_from_the_api_is_refused(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    server.script("GET", key_path(signer.kid), reply(text=pem.decode()))
    body = event_body(EXECUTION_ID)

    with pytest.raises(WebhookVerificationError, match="unusable"):
        await client.webhooks.verify(body, signer.sign(body))


async def test_a_private_key_pinned_by_mistake_is_kept_public_only(
    client: TransactionLinkClient, signer: Signer
) -> None:
    from cryptography.hazmat.primitives import serialization

    private_pem = signer.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    client.webhooks.add_key(signer.kid, private_pem)
    body = event_body(EXECUTION_ID)

    event = await client.webhooks.verify(body, signer.sign(body))

    assert event.key_id == signer.kid
    assert not client._webhook_keys._pinned[signer.kid].is_private


async def test_an_unknown_key_id_is_remembered(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer
) -> None:
    body = event_body(EXECUTION_ID)  # the server knows no key: 404

    for _ in range(50):
        with pytest.raises(WebhookVerificationError, match="unknown key id"):
            await client.webhooks.verify(body, signer.sign(body))

    assert len(key_requests(server)) == 1
    client.webhooks.add_key(signer.kid, signer.public_pem)  # pinning it later works
    assert (await client.webhooks.verify(body, signer.sign(body))).key_id == signer.kid


async def test_a_flood_of_random_key_ids_makes_few_key_requests(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer
) -> None:
    body = event_body(EXECUTION_ID)
    started = asyncio.get_running_loop().time()

    # Well-formed, with a signature of the right length: only the key can refuse them.
    forged = b64url(bytes(256))
    outcomes = await asyncio.gather(
        *(
            client.webhooks.verify(body, f"{header_with_kid(signer, uuid.uuid4())}..{forged}")
            for _ in range(10_000)
        ),
        return_exceptions=True,
    )

    elapsed = asyncio.get_running_loop().time() - started
    assert all(isinstance(outcome, WebhookVerificationError) for outcome in outcomes)
    allowed = webhooks_module.NEW_KEY_BURST + elapsed / webhooks_module.NEW_KEY_SECONDS + 1
    assert len(key_requests(server)) <= allowed
    # The known key still verifies meanwhile once the limiter has room (a pinned one always).
    client.webhooks.add_key(signer.kid, signer.public_pem)
    assert (await client.webhooks.verify(body, signer.sign(body))).key_id == signer.kid


def header_with_kid(signer: Signer, kid: uuid.UUID) -> str:
    return b64url(json.dumps(signer.header(kid=str(kid))).encode())


async def test_a_key_that_cannot_be_fetched_is_a_verification_error(
    server: ScriptedServer, signer: Signer
) -> None:
    server.script("GET", key_path(signer.kid), reply(503, {"message": f"echo {TOKEN}"}))
    body = event_body(EXECUTION_ID)

    async with TransactionLinkClient(
        TOKEN, base_url=server.url, max_retries=2, retry_backoff=False
    ) as client:
        with pytest.raises(WebhookVerificationError, match="could not fetch the key") as raised:
            await client.webhooks.verify(body, signer.sign(body))

    assert len(key_requests(server)) == 3  # the client's max_retries=2
    assert isinstance(raised.value.__cause__, TransactionLinkError)
    assert TOKEN not in str(raised.value)
    assert TOKEN not in str(raised.value.__cause__)


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"[1, 2]", "not a JSON object"),
        (b"not json", "not a JSON object"),
        (b"[" * 3000 + b"]" * 3000, "not a JSON object"),
        (b"", "not a JSON object"),
    ],
)
async def test_a_signed_body_that_is_not_a_json_object_is_refused(
    client: TransactionLinkClient, signer: Signer, body: bytes, reason: str
) -> None:
    client.webhooks.add_key(signer.kid, signer.public_pem)

    with pytest.raises(WebhookVerificationError, match=reason):
        await client.webhooks.verify(body, signer.sign(body))


@pytest.mark.parametrize(
    ("payload", "execution_id", "status", "event_type"),
    [
        ({}, None, None, None),
        ({"id": "x", "workflowId": EXECUTION_ID}, EXECUTION_ID, None, None),
        ({"executionId": EXECUTION_ID.upper(), "event": "E"}, EXECUTION_ID, None, "E"),
        ({"workflowExecutionId": 7, "id": EXECUTION_ID, "type": "T"}, EXECUTION_ID, None, "T"),
        ({"status": "SOMETHING_NEW", "eventType": 3, "event": "E"}, None, "SOMETHING_NEW", "E"),
        ({"status": 5, "workflowExecutionId": "a" * 10_000}, None, None, None),
    ],
)
async def test_fields_are_read_leniently(
    client: TransactionLinkClient,
    signer: Signer,
    payload: dict[str, Any],
    execution_id: str | None,
    status: str | None,
    event_type: str | None,
) -> None:
    client.webhooks.add_key(signer.kid, signer.public_pem)
    body = json.dumps(payload).encode()

    event = await client.webhooks.verify(body, signer.sign(body))

    assert event.execution_id == (None if execution_id is None else uuid.UUID(execution_id))
    assert (None if event.status is None else event.status.value) == status
    assert event.event_type == event_type
    assert event.payload == payload


async def test_a_body_not_bytes_is_refused(client: TransactionLinkClient, signer: Signer) -> None:
    client.webhooks.add_key(signer.kid, signer.public_pem)
    body = event_body(EXECUTION_ID)

    decoded: Any = json.loads(body)  # what a framework's request.json() gives
    with pytest.raises(WebhookVerificationError, match="raw bytes"):
        await client.webhooks.verify(decoded, signer.sign(body))


async def test_no_secret_reaches_a_log_an_error_or_a_repr(
    client: TransactionLinkClient,
    server: ScriptedServer,
    signer: Signer,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="aiotlink")
    serve_key(server, signer)
    body = event_body(EXECUTION_ID, secret="s3cr3t-payload")
    signature = signer.sign(body)
    texts = [repr(client), repr(client.webhooks)]

    await client.webhooks.verify(body, signature)
    for bad in (body + b"x", b"{}"):
        with pytest.raises(WebhookVerificationError) as raised:
            await client.webhooks.verify(bad, signature)
        texts += [str(raised.value), repr(raised.value)]

    texts += [record.getMessage() for record in caplog.records]
    key_material = signer.public_pem.splitlines()[1]
    for text in texts:
        for secret in (TOKEN, "s3cr3t-payload", signature.split(".")[2][:20], key_material):
            assert secret not in text


@settings(max_examples=300, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(signature=st.one_of(st.text(max_size=300), st.binary(max_size=300)), body=st.binary())
async def test_any_input_raises_only_the_verification_error(
    signature: Any, body: bytes, client: TransactionLinkClient
) -> None:
    with pytest.raises(WebhookVerificationError):
        await client.webhooks.verify(body, signature)


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=st.dictionaries(st.text(max_size=5), st.text(max_size=40), max_size=4))
async def test_any_header_raises_only_the_verification_error(
    header: dict[str, str], client: TransactionLinkClient, signer: Signer
) -> None:
    client.webhooks.add_key(signer.kid, signer.public_pem)
    body = event_body(EXECUTION_ID)
    with contextlib.suppress(WebhookVerificationError):  # refused: the only error allowed
        await client.webhooks.verify(body, signer.sign(body, {**signer.header(), **header}))


def test_without_the_extra_webhooks_name_it() -> None:
    script = """
import asyncio, sys
sys.modules["joserfc"] = None  # as if the webhooks extra were not installed
from aiotlink import TransactionLinkClient

async def main():
    async with TransactionLinkClient("tot_x", base_url="http://127.0.0.1:9") as client:
        for attempt in (
            lambda: client.webhooks.verify(b"{}", "a..b"),
            lambda: client.webhooks.asgi_app(print),
            lambda: client.webhooks.add_key("7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10", "pem"),
        ):
            try:
                outcome = attempt()
                if asyncio.iscoroutine(outcome):
                    await outcome
            except ImportError as error:
                print(error)

asyncio.run(main())
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )

    lines = done.stdout.splitlines()
    assert len(lines) == 3
    assert all('pip install "aiotlink[webhooks]"' in line for line in lines)


# What a review found: each of these failed, or no test caught its check.


async def test_a_key_just_under_2048_bits_is_refused(client: TransactionLinkClient) -> None:
    short = Signer(rsa_private_key(2040))

    with pytest.raises(ValueError, match="2040 bits"):
        client.webhooks.add_key(short.kid, short.public_pem)


async def test_header_parameters_we_do_not_know_are_let_through(
    client: TransactionLinkClient, signer: Signer
) -> None:
    client.webhooks.add_key(signer.kid, signer.public_pem)
    body = event_body(EXECUTION_ID)

    signature = signer.sign(body, signer.header(iat=1764840000, x_provider="tl", typ="JOSE"))

    assert (await client.webhooks.verify(body, signature)).key_id == signer.kid


async def test_a_large_signed_body_verifies(client: TransactionLinkClient, signer: Signer) -> None:
    client.webhooks.add_key(signer.kid, signer.public_pem)
    body = event_body(EXECUTION_ID, padding="x" * 600_000)  # past joserfc's own 128,000

    assert (await client.webhooks.verify(body, signer.sign(body))).key_id == signer.kid


async def test_a_kid_in_upper_case_is_the_same_key(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer
) -> None:
    serve_key(server, signer)
    body = event_body(EXECUTION_ID)

    upper = await client.webhooks.verify(
        body, signer.sign(body, signer.header(kid=signer.kid.upper()))
    )
    lower = await client.webhooks.verify(body, signer.sign(body))

    assert upper.key_id == lower.key_id == signer.kid
    (request,) = key_requests(server)
    assert request.path == key_path(signer.kid)


async def test_an_unknown_kid_is_asked_about_again_later(
    client: TransactionLinkClient,
    server: ScriptedServer,
    signer: Signer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(webhooks_module, "UNKNOWN_KEY_SECONDS", 0.1)
    body = event_body(EXECUTION_ID)
    with pytest.raises(WebhookVerificationError, match="unknown key id"):
        await client.webhooks.verify(body, signer.sign(body))

    serve_key(server, signer)  # published a moment late
    with pytest.raises(WebhookVerificationError, match="unknown key id"):
        await client.webhooks.verify(body, signer.sign(body))  # still remembered
    await asyncio.sleep(0.15)

    assert (await client.webhooks.verify(body, signer.sign(body))).key_id == signer.kid
    assert len(key_requests(server)) == 2


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(reply(200, {"a": "-----BEGIN x", "b": "-----BEGIN y"}), id="two PEMs"),
        pytest.param(reply(text="-----BEGIN PUBLIC KEY-----\nnope\n"), id="a bad PEM"),
        pytest.param(reply(text="-----BEGIN " + "A" * 100_000), id="over the bound"),
    ],
)
async def test_an_unusable_key_answer_is_refused_and_remembered(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer, answer: Any
) -> None:
    server.script("GET", key_path(signer.kid), answer)
    body = event_body(EXECUTION_ID)

    for _ in range(3):
        with pytest.raises(WebhookVerificationError):
            await client.webhooks.verify(body, signer.sign(body))

    assert len(key_requests(server)) == 1


async def test_a_cancelled_verification_leaves_the_shared_fetch_to_the_others(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer
) -> None:
    server.script("GET", key_path(signer.kid), stall(0.2, reply(text=signer.public_pem)))
    body = event_body(EXECUTION_ID)

    first = asyncio.create_task(client.webhooks.verify(body, signer.sign(body)))
    second = asyncio.create_task(client.webhooks.verify(body, signer.sign(body)))
    await eventually(lambda: len(key_requests(server)) == 1)
    first.cancel()

    assert (await second).key_id == signer.kid
    assert first.cancelled()
    assert len(key_requests(server)) == 1


async def test_the_caches_stay_bounded(
    client: TransactionLinkClient, signer: Signer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(webhooks_module, "MAX_UNKNOWN_KEYS", 3)
    monkeypatch.setattr(webhooks_module, "MAX_CACHED_KEYS", 2)
    monkeypatch.setattr(webhooks_module, "NEW_KEY_BURST", 100)
    body = event_body(EXECUTION_ID)
    forged = b64url(bytes(256))
    for _ in range(10):  # the scripted server knows no key: each is unknown
        with pytest.raises(WebhookVerificationError):
            await client.webhooks.verify(body, f"{header_with_kid(signer, uuid.uuid4())}..{forged}")
    keys = client._webhook_keys
    key = webhooks_module.rsa_key(signer.public_pem)
    for _ in range(5):  # as if fetched
        keys.add(str(uuid.uuid4()), key)

    assert len(keys._unknown) == 3
    assert len(keys._keys) == 2


async def test_verifying_in_a_second_event_loop_during_a_fetch_raises_only_our_error(
    client: TransactionLinkClient, server: ScriptedServer, signer: Signer
) -> None:
    server.script("GET", key_path(signer.kid), stall(0.5, reply(text=signer.public_pem)))
    body = event_body(EXECUTION_ID)
    fetching = asyncio.create_task(client.webhooks.verify(body, signer.sign(body)))
    await eventually(lambda: len(key_requests(server)) == 1)

    def in_another_loop() -> BaseException | None:
        async def verify() -> None:
            await client.webhooks.verify(body, signer.sign(body))

        try:
            asyncio.run(verify())
        except BaseException as error:
            return error
        return None

    error = await asyncio.to_thread(in_another_loop)

    assert isinstance(error, WebhookVerificationError)
    assert (await fetching).key_id == signer.kid
