"""A fake TransactionLink Workflows API (v3) for tests, demos and benchmarks.

``FakeTransactionLink`` is an aiohttp server in your process, on 127.0.0.1, that
answers the four Workflows endpoints as the reference describes them::

    from aiotlink import TransactionLinkClient
    from aiotlink.testing import FakeTransactionLink

    async with FakeTransactionLink() as fake:     # free ports; or port=8080
        fake.add_definition("kyc", statuses=["INITIALISED", "RUNNING", "COMPLETED"],
                            result={"decision": "APPROVED"})
        async with TransactionLinkClient(fake.token, base_url=fake.url) as client:
            ...

Or ``await fake.start()`` / ``await fake.close()``. ``fake.url`` is the base URL
(no trailing slash); ``fake.token`` a ``tot_`` token and ``fake.jwt`` a legacy JWT
(three base64url parts, sent as ``Bearer <jwt>``), both with every permission.
Constructor keywords: ``port`` and ``storage_port`` (0: free ports),
``redirect_threshold`` (bytes, default 9,000,000), ``url_ttl`` (seconds, default
300), ``clock`` (seconds since the epoch, default ``time.time``),
``record_requests`` (default True), ``token`` (a fixed ``tot_`` token), and
``webhook_url``, ``webhook_timeout`` (10.0) and ``webhook_retry_seconds`` (5.0), for
webhooks (below).

Definitions
-----------
``fake.add_definition(definition_id=None, statuses=("INITIALISED", "RUNNING",
"COMPLETED"), result=<echo>, step_seconds=0.0, interactive=False, *, name=None,
revision="1", ui_options=None)`` adds or replaces a definition and returns its id
(a fresh UUID when none is given; real ids are UUIDs, the fake echoes any string).
Statuses are strings or ``WorkflowStatus`` members. A walk that is empty, names an
unknown status, or puts a terminal status anywhere but last raises ``ValueError``.

Credentials
-----------
``fake.add_token(can_run=True, can_view_workspace=True, legacy_jwt=False)`` issues
more credentials. Initialise needs ``can_run``; find, cancel and result need
``can_view_workspace``; without it: 403 ``ACCESS_DENIED``. A missing or unknown
credential, ``Bearer tot_...``, a JWT without ``Bearer``, or another scheme: 401
``UNAUTHORIZED``. (The scheme ``Bearer`` is case-insensitive.) Credentials are
checked first, after planned faults and the 1 MiB body limit.

Endpoints
---------
- ``POST /workflows`` answers 200 with the execution: every field of the
  reference plus an extra ``createdAt`` (clients must ignore unknown fields).
  Background definitions give ``link`` and ``token`` null; ``interactive=True``
  gives both (the link opens a small HTML page of the fake). ``executionType`` is
  ``BACKGROUND`` or ``INTERACTIVE``, ``executionVersion`` 1, ``origin``
  ``{"type": "API", "tokenId": ...}``, ``expiresAt`` ISO 8601 UTC with ``Z``
  (fractions only when present) or null, ``recordId`` a lower-case UUID or null.
  The body must be sent as ``application/json`` (else 415
  ``UNSUPPORTED_MEDIA_TYPE``) and be a JSON object (else 400
  ``INVALID_REQUEST_BODY``) with a non-empty string ``workflowDefinitionId`` and
  ``locale`` and an object ``parameters`` (required by the reference, so leaving
  it out is a 400). ``expiresAt`` must be null or an ISO 8601 date-time with an
  offset, between 30 minutes and 30 days from now; the lower bound has 5 seconds
  of grace, so a client that computes ``now + 30 min`` is accepted. ``recordId``
  must be null or a UUID in 8-4-4-4-12 form. Each fault of the body is one item of
  a single 400 ``VALIDATION_ERROR`` (message ``"<field>: <problem>"``); unknown
  fields are ignored. An unknown ``workflowDefinitionId`` answers 404
  ``WORKFLOW_DEFINITION_NOT_FOUND``; a body over 1 MiB, 413.
- ``GET /workflows/{id}`` answers the execution and counts one poll. An unknown
  id answers 404 ``WORKFLOW_NOT_FOUND``, malformed ones too (the reference types
  this id as a plain string). Ids match in any case.
- ``POST /workflows/{id}/cancel`` answers 200 with an empty body: a non-terminal
  execution becomes ``CANCELLED``; cancelling a ``CANCELLED`` one again is 200;
  cancelling one in another terminal status is 400 ``WORKFLOW_ALREADY_FINISHED``.
- ``GET /workflows/{id}/result`` needs a UUID id (400 ``INVALID_WORKFLOW_ID``
  otherwise, as the reference types it ``uuid``) and answers only once the
  execution is ``COMPLETED``: 404 ``WORKFLOW_RESULT_NOT_FOUND`` before, and for
  any other terminal status.

Every error of the fake carries an ``ErrorResponse`` body, ``{"fingerprint":
<fresh UUID>, "errors": [{"code": ..., "message": ...}]}``, as ``application/json``;
success bodies are ``application/json;charset=UTF-8``. Other paths and methods
(HEAD included) answer 404 ``NOT_FOUND``.

Statuses
--------
An execution walks its definition's ``statuses`` and then stays at the last one.
Terminal: ``COMPLETED FAILED TIMEOUT TERMINATED EXPIRED CANCELLED``.

- ``step_seconds=0`` (default): initialise shows ``statuses[0]``; the n-th find
  shows ``statuses[min(n, last)]``, so the first find shows the second status.
  Nothing else (result, cancel, ``fake.status_of(id)``) counts as a poll.
- ``step_seconds>0``: any answer shows ``statuses[min(floor(elapsed /
  step_seconds), last)]``, ``elapsed`` being the seconds since initialise; finds
  do not count.
- Expiry: an execution not in a terminal status at its ``expiresAt`` is
  ``EXPIRED`` from then on (one that finished before stays finished).
  ``fake.expire(id)`` sets ``expiresAt`` to now.
- Time is the fake's ``clock``. ``FakeTransactionLink(clock=ManualClock())`` and
  ``clock.advance(seconds)`` move it by hand, for steps, expiry and URL expiry;
  a step or expiry reached to within 1 µs counts as reached (float clocks round).
- ``fake.status_of(id)`` tells the current status (a ``WorkflowStatus``) without
  counting a poll;
  ``expire`` and ``status_of`` raise ``KeyError`` for an unknown id.

Results
-------
``result=`` is any JSON value, serialised once and compactly (by default, an echo
``{"executionId", "workflowDefinitionId", "parameters"}``), or a
``GeneratedResult(size_bytes, seed=0)``: ``{"seed":<seed>,"data":"..."}``, valid
JSON of exactly that size, the same bytes for the same arguments, generated in
1 MiB chunks as it is sent and never held whole. ``.sha256()`` gives its digest,
``.iter_bytes(start, stop)`` its bytes, ``.etag`` its ETag. Results up to
``redirect_threshold`` bytes are answered inline; larger ones as
``{"$redirect": url}``, a fresh URL per call.

The URL points at the fake's storage, on its own port (another origin), signed
like an S3 pre-signed GET (``X-Amz-Algorithm=AWS4-HMAC-SHA256``,
``X-Amz-Credential`` with ``%2F`` in it, ``X-Amz-Date``, ``X-Amz-Expires``,
``X-Amz-SignedHeaders=host``, then ``X-Amz-Signature``: a hex HMAC-SHA256 over
method, host, raw path and raw query) and valid ``url_ttl`` seconds. The signature
is checked against the request target exactly as received, so the URL must be
fetched byte for byte: with aiohttp, ``yarl.URL(url, encoded=True)`` (a plain
``str`` URL is re-quoted and refused). Storage answers GET only, with ``ETag``,
``Content-Length``, ``Accept-Ranges`` and ``Last-Modified``; ``Range: bytes=N-``,
``N-M`` and ``-S`` give 206 with ``Content-Range``; several ranges or a malformed
one give the whole 200; an ``If-Range`` other than the exact ETag (another tag, a
weak one, a date) gives the whole 200; a range past the end gives 416
``InvalidRange``. It refuses with 403 and an S3 XML ``<Error>``: ``AccessDenied``
"Request has expired" after the TTL; ``SignatureDoesNotMatch`` for any change to
the signature, query (re-quoting, reordering, extra parameters), path, Host or
method (HEAD included); ``AccessDenied`` without a signature; and
``InvalidArgument`` "Only one auth mechanism allowed" when an ``Authorization``
header is sent (S3 answers that one with 400; the fake uses 403). The body is
streamed from the result's generator, so a 1 GiB result costs a few MiB.

Faults
------
Faults are planned per route (``"initialise"``, ``"find"``, ``"cancel"``,
``"result"``, ``"storage"``, ``"webhook_key"``) for the next ``times`` requests,
and consumed in order, one per request::

    fake.fail_next("find", 503, times=2, retry_after=5, body="html")
    fake.fail_next("initialise", 429, retry_after=datetime(..., tzinfo=UTC))
    fake.drop_next("cancel")                     # close before processing
    fake.drop_next("storage", after_bytes=1024)  # full Content-Length, 1 KiB, close
    fake.slow_next("find", seconds=0.5)          # then the normal answer

``fail_next(route, status=503, *, times=1, retry_after=None, body="auto")``:
``status`` is any HTTP error status; ``retry_after`` whole seconds, an aware
datetime (sent as an HTTP date) or a raw string; ``body`` ``"auto"`` (an
``ErrorResponse`` whose code names the status, e.g. ``SERVICE_UNAVAILABLE``; an
S3 XML error on storage), ``"json"``, ``"xml"``, ``"html"`` (an nginx-like error
page) or ``"empty"``. A status fault or a drop without ``after_bytes`` comes
before anything else, credentials included, as a proxy in front would: nothing is
processed (no execution is made or cancelled). ``drop_next(route, *, times=1,
after_bytes=None)`` with ``after_bytes`` processes the request, sends the headers
with the full ``Content-Length`` and at most that many body bytes (always fewer
than the whole body), then closes; cancel's empty answer is not sent at all.
``slow_next(route, seconds, *, times=1)`` waits, then answers normally; closing
the fake ends the wait. ``fake.pending_faults(route)`` counts what is left and
``fake.clear_faults()`` forgets all. Note that aiohttp retries a GET once after a
dropped connection: plan ``times=2`` for an aiohttp client to see a drop on
``find``, ``result`` or ``storage``.

Requests
--------
``fake.requests`` lists every request, storage included, as a
``RecordedRequest(route, method, path, query, headers, body)``: the route name
(``"unmatched"`` and ``"hosted"`` too), raw path and raw query string as received,
case-insensitive headers, body bytes. Its repr shows header names and the body
size, never values, so credentials stay in memory. ``fake.requests_for("find")``
filters by route; ``record_requests=False`` turns recording off.

Webhooks
--------
``FakeTransactionLink(webhook_url=...)``, or ``fake.set_webhook_url(url)`` later
(``None`` stops), POSTs one event per status change of every execution to that
URL, as the provider does: the first status on initialise, each step (by find, or
by time, noticed by a timer or a ``ManualClock``'s ``advance``; a clock jumping
several steps sends each, dated by its step), cancel, expiry. It needs the
``webhooks`` extra (``pip install "aiotlink[webhooks]"``); without it, setting a
URL raises ``ImportError`` saying so. The body is compact JSON, our documented
assumption of the provider's (it publishes none)::

    {"eventType": "WORKFLOW_STATUS_UPDATED", "workflowExecutionId": "<uuid>",
     "workflowDefinitionId": "...", "status": "RUNNING", "recordId": null,
     "occurredAt": "2027-01-15T08:00:00Z"}

``eventType`` is ``WORKFLOW_AWAITING`` for ``AWAITING``, ``WORKFLOW_COMPLETED`` for
a terminal status, else ``WORKFLOW_STATUS_UPDATED``; ``occurredAt`` comes from the
fake's clock. The ``JWS-SIGNATURE`` header is a detached compact JWS
(``<header>..<signature>``, RS256, header ``{"alg":"RS256","kid":"<uuid>"}``) over
the exact body bytes. ``GET /auth/webhooks/key/{kid}`` (any valid credential;
``pem=true``, the default, is the only form) answers the public key as a PEM in
``text/plain``; an unknown kid is 404 ``WEBHOOK_KEY_NOT_FOUND``.
``fake.webhook_key_id`` is the current kid; ``fake.rotate_webhook_key()`` makes a
new key and returns its kid, old kids staying served. RSA keys are generated on
first use and shared by the fakes of a process (the n-th key of every fake is the
same key, under its own kid): test keys, not secrets.

An attempt without a 2xx answer within ``webhook_timeout`` seconds (a refused
connection, a 3xx, a timeout) is retried up to 5 times, ``webhook_retry_seconds``
apart, with the same body and header. First attempts go out one at a time in the
order of the changes; retries and delays do not hold up the others. Deliveries
run in background tasks; ``close()`` cancels those not done.

Faults, consumed one per webhook in the order planned:
``drop_next_webhook(*, times=1)`` (never sent), ``duplicate_next_webhook(*,
times=1)`` (sent twice, same body and signature), ``reorder_next_webhooks(count=2)``
(hold the next ``count``, send them last first), ``delay_next_webhook(seconds, *,
times=1)``, ``corrupt_next_webhook_signature(*, times=1)`` (a byte of the signature
flipped), ``sign_next_webhook_with_unknown_key(*, times=1)`` (valid, under a kid
the key endpoint answers 404 for); ``pending_webhook_faults()`` and
``clear_webhook_faults()`` (which also sends webhooks held for a reorder).

``fake.webhook_deliveries`` lists a ``WebhookDelivery`` per webhook made:
``payload``, ``body``, ``signature``, ``kid``, ``url``, ``fault``, ``outcome``
(``pending``, ``delivered``, ``failed``, ``dropped``, ``cancelled``) and
``attempts``, each a ``WebhookAttempt(status, error, at)``: the HTTP status, or the
name of the error that stood for none (``"TimeoutError"``,
``"ClientConnectorError"``), and ``time.monotonic()`` when sent.
``await fake.webhooks_settled(timeout=10.0)`` waits until none is pending or in
flight (held and retried ones count), else raises ``TimeoutError``.

Process and pytest
------------------
``python -m aiotlink.testing [--port 8080] [--token tot_...] [--step-seconds 1]
[--storage-port 0] [--large-result-mib 64] [--redirect-threshold N] [--url-ttl S]
[--webhook-url URL]``
serves the fake on 127.0.0.1 with four ready definitions (``kyc-background``
completes, ``kyc-failing`` fails, ``kyc-interactive`` has a link and passes
through ``AWAITING``, ``large-report`` has a 64 MiB redirected result; their ids
are UUIDs, the same on every run), prints the URL, credentials and ids, and stops
cleanly with exit code 0 on Ctrl-C or SIGTERM. A port in use prints one error line
and exits 1.

With aiotlink installed, pytest gets the fixtures ``fake_transactionlink`` (a
started fake) and ``transactionlink_client`` (``TransactionLinkClient(fake.token,
base_url=fake.url)``), function-scoped and closed after each test, and
``transactionlink_defaults``: for the test, every ``TransactionLinkClient`` made
without ``token=``, ``base_url=`` or ``retry_backoff=`` (an app's own, in its
lifespan) gets the fake's token and URL (through ``TRANSACTIONLINK_TOKEN`` and
``TRANSACTIONLINK_BASE_URL``) and retries without sleeping; it gives the fake. They
need pytest-asyncio; without it they fail with a message saying so.

Redis
-----
``RedisServer(directory=None, *, port=0)`` runs the real ``redis-server`` (from the
system's package) on 127.0.0.1 with its append-only file on, for tests of durable
following (``aiotlink.arq``): ``with RedisServer() as redis:`` starts it on a free
port in a fresh temporary directory, ``redis.url`` is its URL, ``restart()`` stops
and starts it on the same port from the same files, ``kill()`` ends it with SIGKILL.
"""

from aiotlink.testing._clock import ManualClock
from aiotlink.testing._fake import FakeTransactionLink
from aiotlink.testing._records import RecordedRequest, WebhookAttempt, WebhookDelivery
from aiotlink.testing._redis import RedisServer
from aiotlink.testing._results import GeneratedResult

__all__ = [
    "FakeTransactionLink",
    "GeneratedResult",
    "ManualClock",
    "RecordedRequest",
    "RedisServer",
    "WebhookAttempt",
    "WebhookDelivery",
]

# Tracebacks and reprs name what users import (aiotlink.testing.FakeTransactionLink).
for _name in __all__:
    globals()[_name].__module__ = __name__
del _name
