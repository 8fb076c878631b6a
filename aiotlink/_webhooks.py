"""Webhooks: verified, signed events, receivers for ASGI and aiohttp, and waits they wake.

TransactionLink POSTs a JSON body on every status change, "awaiting" and completion,
signed with a detached JWS (RFC 7515, appendix F) in the ``JWS-SIGNATURE`` header:
``<header>..<signature>``, RS256, the public key served at
``GET /auth/webhooks/key/{kid}``. The parts easiest to get dangerously wrong are
decided here, once:

- the signature covers the body *as received*: ``verify`` takes bytes, never a
  re-serialised object;
- only ``RS256`` with an RSA key of at least 2048 bits: ``none``, ``HS256`` (the public
  key used as an HMAC secret), other algorithms and any ``crit`` header are refused
  before a key is looked at;
- ``kid`` must be a UUID, checked before any request, so it cannot steer the key URL;
- keys are fetched through the client's request layer (auth, retries, bounds), cached
  per ``kid``, one fetch for concurrent verifications of one ``kid``; a ``kid`` the API
  does not know is remembered for a while, and lookups of new ones are rate-limited, so
  a flood of forged signatures with random ``kid``s cannot make us hammer the API.

The JOSE parsing and the RSA verification are joserfc's (the ``webhooks`` extra).
A verified event nudges the client's waits on its execution (``Workflows.nudge``): the
webhook is the fast path, polling the safety net, and the lookup, never the payload,
decides what a wait returns.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import hashlib
import inspect
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple
from uuid import UUID

from . import _instrument
from ._arguments import check_callable, check_count, check_seconds, check_uuid
from ._errors import (
    NotFoundError,
    ResponseTooLargeError,
    TransactionLinkError,
    WebhookVerificationError,
)
from ._models import WebhookEvent, WorkflowStatus
from ._transport import parse_json

if TYPE_CHECKING:
    from aiohttp import web
    from arq.connections import ArqRedis
    from joserfc.jwk import RSAKey

    from ._requester import Requester

logger = logging.getLogger("aiotlink")

EXTRA_MISSING = 'webhooks need the "webhooks" extra: pip install "aiotlink[webhooks]"'

SIGNATURE_HEADER = "JWS-SIGNATURE"
ALGORITHM = "RS256"
MIN_KEY_BITS = 2048
MAX_KEY_BITS = 16384
# A JWS header of ours is under 100 bytes, an RS256 signature of a 4096-bit key 683
# characters: anything far longer is not a signature worth parsing.
MAX_SIGNATURE_CHARS = 16 * 1024
MAX_KEY_BYTES = 64 * 1024  # a PEM public key is under 1 KiB even at 4096 bits
# A kid the API answered 404 for is not asked about again for this long: less than the
# provider's five redeliveries, 5 s apart, take, so a key published a moment late
# still verifies a redelivery.
UNKNOWN_KEY_SECONDS = 20.0
# Lookups of kids not seen before: a burst of this many, then one per this many
# seconds. A real rotation needs one; a flood of random kids gets a handful.
NEW_KEY_BURST = 5
NEW_KEY_SECONDS = 1.0
# What the caches hold at most; the oldest entry goes first. Pinned keys stay.
MAX_CACHED_KEYS = 256
MAX_UNKNOWN_KEYS = 4096
# Deliveries already handed over, by delivery_key: a redelivery or a replay of one does
# not nudge again. For this long, and this many at most.
SEEN_DELIVERY_SECONDS = 600.0
MAX_SEEN_DELIVERIES = 4096
# Reading a body and verifying it (a key fetch included) must fit in these seconds: the
# provider gives up after 10 s, and a slow sender must not hold a connection for long.
RECEIVE_SECONDS = 5.0
VERIFY_SECONDS = 5.0

DEFAULT_MAX_BODY_BYTES = 1024 * 1024
# Under the provider's 10 s: an answer after it counts as a failed delivery anyway.
DEFAULT_HANDLER_TIMEOUT = 8.0

# The payload keys the execution id is read from, first UUID wins (README.md, "Webhooks").
EXECUTION_ID_KEYS = ("workflowExecutionId", "executionId", "workflowId", "id")
EVENT_TYPE_KEYS = ("eventType", "event", "type")

_BASE64URL = re.compile(r"[A-Za-z0-9_-]+")
_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

OnEvent = Callable[[WebhookEvent], Awaitable[object] | object]
Nudge = Callable[..., bool]


def _joserfc() -> Any:
    """The ``jws`` module of joserfc, or ImportError naming the extra."""
    try:
        from joserfc import jws
    except ImportError:
        problem = EXTRA_MISSING
    else:
        return jws
    raise ImportError(problem)


@functools.cache
def _registry() -> Any:
    """The rules joserfc applies to our signatures: RS256 only, and our own bounds.

    Header parameters it does not know (the provider's are not published) are let
    through: ``parse_signature`` has already refused ``crit`` and ``b64``, the ones
    that change what a signature means. Its default payload bound (128,000 bytes) would
    refuse a large, valid event as a bad signature; the receivers bound the body.
    """
    jws = _joserfc()
    registry = jws.JWSRegistry(algorithms=[ALGORITHM], strict_check_header=False)
    registry.max_payload_length = 2**62
    registry.max_header_length = MAX_SIGNATURE_CHARS
    registry.max_signature_length = MAX_KEY_BITS // 8
    return registry


class Signature(NamedTuple):
    """A ``JWS-SIGNATURE`` header value, parsed and checked: ready to verify."""

    compact: str
    key_id: str  # the kid, as a canonical UUID


def parse_signature(value: object) -> Signature:
    """Check a detached compact JWS's shape and header; ``WebhookVerificationError`` if bad.

    Everything that can be refused without the key is refused here, before any request:
    the three segments with an empty payload, strict base64url, a JSON object header,
    ``alg`` RS256 and nothing critical, and a UUID ``kid``.
    """
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            value = None
    if not isinstance(value, str) or not value:
        raise WebhookVerificationError("no signature")
    if len(value) > MAX_SIGNATURE_CHARS:
        raise WebhookVerificationError("the signature is too long")
    segments = value.strip().split(".")
    if len(segments) != 3:
        raise WebhookVerificationError("the signature is not a compact JWS")
    header_segment, payload_segment, signature_segment = segments
    if payload_segment:
        raise WebhookVerificationError("the signature carries a payload: it must be detached")
    header = _json_object(_base64url("header", header_segment), "the signature's header")
    algorithm = header.get("alg")
    if algorithm != ALGORITHM:
        shown = algorithm if isinstance(algorithm, str) and len(algorithm) <= 16 else "?"
        raise WebhookVerificationError(f"algorithm {shown!r} is not accepted: only RS256")
    if "crit" in header or "b64" in header:
        raise WebhookVerificationError("the signature's header has extensions we do not accept")
    key_id = header.get("kid")
    if not isinstance(key_id, str) or not _CANONICAL_UUID.fullmatch(key_id.lower()):
        raise WebhookVerificationError("the signature's key id is not a UUID")
    signature = _base64url("signature", signature_segment)
    if not MIN_KEY_BITS // 8 <= len(signature) <= MAX_KEY_BITS // 8:
        # An RS256 signature is as long as the key's modulus.
        raise WebhookVerificationError("the signature's length fits no accepted key")
    return Signature(f"{header_segment}..{signature_segment}", key_id.lower())


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    """``data`` as a JSON object, else WebhookVerificationError saying ``what`` is not one."""
    try:
        value = parse_json(data)
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise WebhookVerificationError(f"{what} is not a JSON object")
    return value


def _base64url(name: str, segment: str) -> bytes:
    if not segment or not _BASE64URL.fullmatch(segment) or len(segment) % 4 == 1:
        raise WebhookVerificationError(f"the signature's {name} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error:
        problem = f"the signature's {name} is not base64url"
    raise WebhookVerificationError(problem)


def rsa_key(pem: str | bytes) -> RSAKey:
    """An RSA public key of at least MIN_KEY_BITS from a PEM; ValueError if not one.

    A private key given by mistake is kept as its public half only.
    """
    _joserfc()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from joserfc.jwk import RSAKey

    if isinstance(pem, str):
        pem = pem.encode("ascii", "replace")
    if not isinstance(pem, bytes) or b"-----BEGIN" not in pem:
        raise ValueError("the key is not a PEM")
    public: object = None
    try:
        public = serialization.load_pem_public_key(pem)
    except Exception:  # cryptography raises ValueError or UnsupportedAlgorithm
        try:
            public = serialization.load_pem_private_key(pem, password=None).public_key()
        except Exception:  # encrypted, malformed, or not a key at all
            public = None
    if not isinstance(public, rsa.RSAPublicKey):
        raise ValueError("the key is not an RSA key in PEM form")
    if public.key_size < MIN_KEY_BITS:
        raise ValueError(f"the key has {public.key_size} bits; at least {MIN_KEY_BITS} are needed")
    return RSAKey.import_key(public)


def key_from_body(body: bytes) -> RSAKey:
    """The key of ``GET /auth/webhooks/key/{kid}``: a PEM, or a JSON object holding one."""
    text = body.strip()
    if text.startswith(b"{"):
        try:
            document = parse_json(text)
        except ValueError:
            document = None
        pems = [
            value
            for value in (document.values() if isinstance(document, dict) else ())
            if isinstance(value, str) and "-----BEGIN" in value
        ]
        if len(pems) != 1:
            raise ValueError("the key answer is JSON without one PEM in it")
        return rsa_key(pems[0])
    return rsa_key(text)


class _Limiter:
    """A token bucket: ``burst`` at once, then one per ``seconds``."""

    def __init__(self, burst: int, seconds: float) -> None:
        self._burst = burst
        self._seconds = seconds
        self._tokens = float(burst)
        self._last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._last) / self._seconds)
        self._last = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class WebhookKeys:
    """The webhook keys of one client and its views: pinned, fetched, known unknown."""

    def __init__(self) -> None:
        self._pinned: dict[str, RSAKey] = {}
        self._keys: OrderedDict[str, RSAKey] = OrderedDict()  # fetched
        self._unknown: OrderedDict[str, float] = OrderedDict()  # kid: when to forget it
        self._fetching: dict[str, asyncio.Future[RSAKey]] = {}
        self._new_keys = _Limiter(NEW_KEY_BURST, NEW_KEY_SECONDS)
        self._seen: OrderedDict[str, float] = OrderedDict()  # delivery_key: when to forget

    def pin(self, key_id: str, key: RSAKey) -> None:
        self._pinned[key_id] = key
        self._unknown.pop(key_id, None)

    def add(self, key_id: str, key: RSAKey) -> None:
        self._keys[key_id] = key
        self._keys.move_to_end(key_id)
        self._unknown.pop(key_id, None)
        while len(self._keys) > MAX_CACHED_KEYS:
            self._keys.popitem(last=False)

    def first_delivery(self, delivery_key: str) -> bool:
        """Whether this delivery is new (not a redelivery or replay seen lately)."""
        now = time.monotonic()
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)
        if delivery_key in self._seen:
            return False
        self._seen[delivery_key] = now + SEEN_DELIVERY_SECONDS
        while len(self._seen) > MAX_SEEN_DELIVERIES:
            self._seen.popitem(last=False)
        return True

    async def get(self, key_id: str, requester: Requester) -> RSAKey:
        """The key named ``key_id``: cached, or fetched once for all who ask at once."""
        key = self._pinned.get(key_id) or self._keys.get(key_id)
        if (hook := _instrument.current) is not None:
            hook.webhook_key(cached=key is not None)
        if key is not None:
            return key
        forget_at = self._unknown.get(key_id)
        if forget_at is not None:
            if time.monotonic() < forget_at:
                raise WebhookVerificationError("unknown key id")
            del self._unknown[key_id]
        fetching = self._fetching.get(key_id)
        if fetching is not None and fetching.get_loop() is not asyncio.get_running_loop():
            raise WebhookVerificationError("the key is being fetched in another event loop")
        if fetching is None:
            if not self._new_keys.allow():
                raise WebhookVerificationError("too many new key ids: not looked up now")
            fetching = asyncio.ensure_future(self._fetch(key_id, requester))
            self._fetching[key_id] = fetching
            fetching.add_done_callback(lambda _: self._fetching.pop(key_id, None))
        # Shielded: one verification cancelled (its request timed out) must not end the
        # fetch the others share.
        return await asyncio.shield(fetching)

    async def _fetch(self, key_id: str, requester: Requester) -> RSAKey:
        try:
            response = await requester.call(
                "GET",
                f"/auth/webhooks/key/{key_id}?pem=true",
                route="/auth/webhooks/key/{kid}",
                max_bytes=MAX_KEY_BYTES,
            )
        except NotFoundError:
            self._remember_unknown(key_id)
            problem = "unknown key id"
        except ResponseTooLargeError:  # no key is that long: a broken answer, not a blip
            self._remember_unknown(key_id)
            problem = f"the API's key answer is over {MAX_KEY_BYTES} bytes"
        except TransactionLinkError as error:
            # Our own error, scrubbed of the token: safe to say, and to chain.
            raise WebhookVerificationError(f"could not fetch the key: {error}") from error
        else:
            try:
                key = key_from_body(response.body)
            except ValueError as error:
                self._remember_unknown(key_id)
                problem = f"the API's key is unusable: {error}"
            else:
                self.add(key_id, key)
                return key
        raise WebhookVerificationError(problem)

    def _remember_unknown(self, key_id: str) -> None:
        self._unknown[key_id] = time.monotonic() + UNKNOWN_KEY_SECONDS
        self._unknown.move_to_end(key_id)
        while len(self._unknown) > MAX_UNKNOWN_KEYS:
            self._unknown.popitem(last=False)


def event_of(body: bytes, key_id: str) -> WebhookEvent:
    """The event a verified body announces; WebhookVerificationError if not a JSON object."""
    payload = _json_object(body, "the signed body")
    status = payload.get("status")
    return WebhookEvent(
        payload=payload,
        key_id=key_id,
        execution_id=_first_uuid(payload),
        status=WorkflowStatus(status) if isinstance(status, str) and status.strip() else None,
        event_type=next(
            (payload[key] for key in EVENT_TYPE_KEYS if isinstance(payload.get(key), str)), None
        ),
        delivery_key=hashlib.sha256(body).hexdigest(),
    )


def _first_uuid(payload: Mapping[str, Any]) -> UUID | None:
    for key in EXECUTION_ID_KEYS:
        value = payload.get(key)
        if isinstance(value, str) and len(value) <= 45:
            try:
                return UUID(value)
            except ValueError:
                continue
    return None


class Webhooks:
    """``client.webhooks``: verify deliveries, pin keys, and receivers to mount."""

    def __init__(self, requester: Requester, keys: WebhookKeys, nudge: Nudge) -> None:
        self._requester = requester
        self._keys = keys
        self._nudge = nudge
        # Durable nudges in flight (aiotlink.arq), held so that none is collected early.
        self._durable_nudges: set[asyncio.Task[None]] = set()

    def __repr__(self) -> str:
        return f"<Webhooks base_url={self._requester.base_url!r}>"

    @_instrument.observed("verify")
    async def verify(self, body: bytes, signature: str | bytes | None) -> WebhookEvent:
        """The event of a delivery, verified.

        ``body`` is the raw request bytes, exactly as received; ``signature`` the
        ``JWS-SIGNATURE`` header. Raises :class:`WebhookVerificationError` (and no
        other error) for anything that is not a well-formed event signed RS256 by a key
        of the API; its reason never holds the body, the signature or the key.
        """
        jws = _joserfc()
        if not isinstance(body, bytes | bytearray | memoryview):
            raise WebhookVerificationError("the body must be the request's raw bytes")
        body = bytes(body)
        parsed = parse_signature(signature)
        key = await self._keys.get(parsed.key_id, self._requester)
        try:
            jws.deserialize_compact(parsed.compact, key, registry=_registry(), payload=body)
        except Exception:  # joserfc's JoseError, or cryptography's for a mangled signature
            problem = "the signature does not match the body"
        else:
            return event_of(body, parsed.key_id)
        # Raised out here: the library's error would ride along as __context__.
        raise WebhookVerificationError(problem)

    def add_key(self, key_id: str | UUID, public_key_pem: str | bytes) -> None:
        """Pin the public key named ``key_id`` (a UUID): no request is made for it.

        For receivers that cannot reach the API, or that trust only keys they were
        given. Raises ValueError for a malformed id or a key that is not an RSA public
        key of at least 2048 bits.
        """
        kid = str(check_uuid("key_id", key_id))
        try:
            key = rsa_key(public_key_pem)
        except ValueError as error:
            problem = f"public_key_pem: {error}"
        else:
            self._keys.pin(kid, key)
            return
        raise ValueError(problem)

    def asgi_app(
        self,
        on_event: OnEvent,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
        arq_redis: ArqRedis | None = None,
    ) -> Receiver:
        """An ASGI app that receives deliveries: mount it in Starlette or FastAPI.

        See :class:`Receiver` for what it answers, and ``arq_redis``.
        """
        return Receiver(self, on_event, max_body_bytes, handler_timeout, arq_redis)

    def aiohttp_handler(
        self,
        on_event: OnEvent,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        handler_timeout: float = DEFAULT_HANDLER_TIMEOUT,
        arq_redis: ArqRedis | None = None,
    ) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        """An aiohttp request handler that receives deliveries (``router.add_post``).

        See :class:`Receiver` for what it answers, and ``arq_redis``.
        """
        return Receiver(self, on_event, max_body_bytes, handler_timeout, arq_redis).aiohttp

    async def receive(
        self,
        on_event: OnEvent,
        body: bytes,
        signature: str | None,
        handler_timeout: float,
        arq_redis: ArqRedis | None = None,
    ) -> tuple[int, bytes]:
        """Verify one delivery, nudge its waits, hand it to ``on_event``: the answer."""
        try:
            async with asyncio.timeout(VERIFY_SECONDS):
                event = await self.verify(body, signature)
        except WebhookVerificationError as error:
            logger.warning("refused a webhook delivery: %s", error.reason)
            return 401, b"invalid or missing signature"
        except TimeoutError:  # the key could not be had in time: the provider redelivers
            logger.warning("could not verify a webhook delivery within %g s", VERIFY_SECONDS)
            return 503, b"could not verify in time"
        if event.execution_id is not None and self._keys.first_delivery(event.delivery_key):
            # Before on_event, whatever it does; once per signed message, so that a
            # replayed delivery costs no lookup.
            try:
                self._nudge(event.execution_id, status=event.status)
            except Exception:  # the waits poll on regardless: the delivery is still good
                logger.exception("could not nudge the waits on %s", event.execution_id)
            if arq_redis is not None:
                self._nudge_durable(arq_redis, event)
        try:
            async with asyncio.timeout(handler_timeout) as deadline:
                outcome = on_event(event)
                if inspect.isawaitable(outcome):
                    await outcome
        except Exception:
            if not deadline.expired():
                logger.exception(
                    "the webhook handler failed for delivery %s; answered 500",
                    event.delivery_key,
                )
                return 500, b"event handler failed"
            logger.error(
                "the webhook handler took over %g s for delivery %s; answered 503",
                handler_timeout,
                event.delivery_key,
            )
            return 503, b"event handler timed out"
        return 204, b""

    def _nudge_durable(self, arq_redis: ArqRedis, event: WebhookEvent) -> None:
        """Nudge the durable follow (aiotlink.arq) in the background, bounded in time.

        The answer to the provider never waits for Redis: a slow or unreachable Redis
        costs a log line after NUDGE_TIMEOUT seconds, and the follow's polls carry on.
        """
        from .arq._follow import NUDGE_TIMEOUT, nudge_within

        assert event.execution_id is not None
        task = asyncio.get_running_loop().create_task(
            nudge_within(arq_redis, str(event.execution_id), event.status, NUDGE_TIMEOUT)
        )
        self._durable_nudges.add(task)
        task.add_done_callback(self._durable_nudges.discard)


class Receiver:
    """One receiver's rules, for ASGI (the instance is the app) and aiohttp alike.

    POST only (405 otherwise). A body over ``max_body_bytes`` is answered 413, by its
    ``Content-Length`` before reading it or as soon as the bytes pass the bound. A
    missing or invalid signature is 401 with a generic body, and a log line without the
    payload. A verified event first nudges the waits on its execution, then goes to
    ``on_event`` (a function or a coroutine function): 204 once it returns, 500 if it
    raises (the provider then redelivers), 503 if it runs past ``handler_timeout``
    seconds (it is cancelled).

    With ``arq_redis`` (an ``arq`` pool; needs the ``arq`` extra), a verified event also
    nudges the durable follow of its execution (``aiotlink.arq.nudge``, with the
    event's status), in the background: the answer does not wait for Redis.
    """

    def __init__(
        self,
        webhooks: Webhooks,
        on_event: OnEvent,
        max_body_bytes: int,
        handler_timeout: float,
        arq_redis: ArqRedis | None = None,
    ) -> None:
        _joserfc()  # at mount time, not at the first delivery
        if arq_redis is not None:
            from .arq._follow import check_redis

            check_redis(arq_redis)
        self._arq_redis = arq_redis
        check_callable("on_event", on_event)
        if on_event is None:
            raise ValueError("on_event is required: a function called with each event")
        self._webhooks = webhooks
        self._on_event = on_event
        self._max_body_bytes = check_count("max_body_bytes", max_body_bytes, minimum=1)
        timeout = check_seconds("handler_timeout", handler_timeout)
        assert timeout is not None
        self._handler_timeout = timeout

    async def _answer(
        self,
        method: str,
        content_length: str | None,
        signature: str | None,
        read: Callable[[int], Awaitable[bytes | None]],
    ) -> tuple[int, bytes]:
        if method != "POST":
            return 405, b"POST only"
        if not signature:  # refused before the body is read
            logger.warning("refused a webhook delivery: no signature")
            return 401, b"invalid or missing signature"
        if content_length is not None:
            if not (content_length.isascii() and content_length.isdigit()):
                return 400, b"bad Content-Length"
            if len(content_length) > 19 or int(content_length) > self._max_body_bytes:
                return 413, b"body too large"
        try:
            async with asyncio.timeout(RECEIVE_SECONDS):
                body = await read(self._max_body_bytes)
        except TimeoutError:  # a sender that trickles its body holds no connection for long
            return 408, b"body not received in time"
        if body is None:
            return 413, b"body too large"
        return await self._webhooks.receive(
            self._on_event, body, signature, self._handler_timeout, self._arq_redis
        )

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """The ASGI app (``asgi_app``)."""
        if scope["type"] == "lifespan":  # served alone (uvicorn app): nothing to set up
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        headers: dict[bytes, list[bytes]] = {}
        for name, value in scope.get("headers", ()):
            headers.setdefault(name.lower(), []).append(value)

        def header(name: bytes) -> str | None:
            values = headers.get(name)
            if values is None:
                return None
            # Two signature headers are none that can be trusted.
            return values[0].decode("latin-1") if len(values) == 1 else ""

        async def read(limit: int) -> bytes | None:
            body = bytearray()
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return bytes(body)
                body += message.get("body", b"")
                if len(body) > limit:
                    return None
                if not message.get("more_body", False):
                    return bytes(body)

        status, text = await self._answer(
            scope.get("method", ""), header(b"content-length"), header(b"jws-signature"), read
        )
        response_headers = [(b"content-type", b"text/plain; charset=utf-8")]
        if status == 405:
            response_headers.append((b"allow", b"POST"))
        if status == 413:
            response_headers.append((b"connection", b"close"))
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": text})

    async def aiohttp(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        signatures = request.headers.getall(SIGNATURE_HEADER, [])

        async def read(limit: int) -> bytes | None:
            body = bytearray()
            async for chunk in request.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > limit:
                    return None
            return bytes(body)

        status, text = await self._answer(
            request.method,
            request.headers.get("Content-Length"),
            signatures[0] if len(signatures) == 1 else ("" if signatures else None),
            read,
        )
        response = web.Response(status=status, body=text or None, content_type="text/plain")
        if status == 405:
            response.headers["Allow"] = "POST"
        if status == 413:
            response.force_close()
        return response
