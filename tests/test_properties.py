"""Property-based tests of the pure decisions: whatever a server sends, they stay in contract.

Each test states its property in its docstring. The inputs are what a hostile or broken
server (or proxy) can put on the wire: arbitrary bytes, JSON nested beyond any parser's
recursion, numbers beyond float and int-to-text limits, Retry-After hints in any
spelling, and secrets echoed back in escaped spellings.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import itertools
import json
import math
import re
import sys
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from fractions import Fraction
from typing import Any, NamedTuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from aiotlink import (
    APIError,
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    WorkflowExecution,
)
from aiotlink._arguments import check_parameters, check_seconds
from aiotlink._converter import DecodeError, decode_execution
from aiotlink._polling import PollSchedule, poll_delay
from aiotlink._redaction import mask_url, scrub
from aiotlink._results import redirect_target
from aiotlink._retry import MAX_RETRY_AFTER, RETRY_AFTER_CEILING, parse_retry_after
from aiotlink._transport import error_for_response, error_of_answer, parse_json

from .conftest import execution_body

# No example database: a run leaves nothing behind in the working tree.
FAST = settings(max_examples=200, deadline=None, database=None)
SLOW = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)

# ---------------------------------------------------------------------------
# Strategies: JSON as bytes (anything a server may send) and as Python values.
# ---------------------------------------------------------------------------

_SPECIAL_NUMBERS = [
    b"1e999",
    b"-1e999",
    b"1E400",
    b"1.5e-400",
    b"NaN",
    b"-NaN",
    b"Infinity",
    b"-Infinity",
    b"0",
    b"-0",
    b"99999999999",
    b"18446744073709551616",
]


def _deep_text(depth: int, kind: str) -> bytes:
    """JSON text nested ``depth`` levels: arrays, objects, both, or left unclosed."""
    if kind == "arrays":
        return b"[" * depth + b"]" * depth
    if kind == "objects":
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "mixed":
        return b'[{"a":' * depth + b"null" + b"}]" * depth
    return b"[" * depth  # unclosed


def deep_json_text(max_depth: int) -> st.SearchStrategy[bytes]:
    """Deeply nested JSON text, up to ``max_depth`` levels."""
    return st.builds(
        _deep_text,
        st.integers(1, max_depth) | st.sampled_from([900, 990, 999, 1000, 1001, 5000, max_depth]),
        st.sampled_from(["arrays", "objects", "mixed", "unclosed"]),
    )


def _string_text(text: str) -> bytes:
    return json.dumps(text).encode()


json_scalar_text = st.one_of(
    st.sampled_from([b"null", b"true", b"false", *_SPECIAL_NUMBERS]),
    st.integers().map(lambda n: str(n).encode()),
    st.integers(1, 10_000).map(lambda n: b"9" * n),  # beyond int-to-text's 4,300 digits
    st.just(b"1" + b"0" * 9_999),
    st.floats().map(lambda x: repr(x).encode()),
    st.text(max_size=30).map(_string_text),
    # Surrogates and non-ASCII sent raw: not always valid UTF-8.
    st.text(max_size=30).map(
        lambda s: json.dumps(s, ensure_ascii=False).encode("utf-8", "surrogatepass")
    ),
)


def _array_text(items: list[bytes]) -> bytes:
    return b"[" + b",".join(items) + b"]"


def _object_text(members: dict[str, bytes]) -> bytes:
    return b"{" + b",".join(_string_text(k) + b":" + v for k, v in members.items()) + b"}"


json_text = st.recursive(
    json_scalar_text | deep_json_text(3_000),
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(_array_text),
        st.dictionaries(st.text(max_size=8), children, max_size=4).map(_object_text),
    ),
    max_leaves=12,
)


def _error_entry_text(code: bytes, message: bytes) -> bytes:
    return b'{"code":' + code + b',"message":' + message + b"}"


error_entry_text = st.builds(_error_entry_text, json_text, json_text) | json_text


def _error_document_text(fingerprint: bytes, errors: bytes) -> bytes:
    return b'{"fingerprint":' + fingerprint + b',"errors":' + errors + b"}"


error_document_text = st.builds(
    _error_document_text,
    json_text,
    st.lists(error_entry_text, max_size=3).map(_array_text) | json_text,
)

S3_ERROR = (
    b"<?xml version='1.0'?><Error><Code>SignatureDoesNotMatch</Code>"
    b"<Message>The request signature we calculated does not match</Message></Error>"
)

any_body = st.one_of(
    st.binary(max_size=300),
    st.sampled_from(
        [
            b"",
            b"   ",
            b"\xff\xfe\x00",
            b'"\xed\xa0\x80"',  # a surrogate encoded as UTF-8
            b"\xef\xbb\xbf{}",  # a UTF-8 byte-order mark
            "[1]".encode("utf-16"),
            b"\x00[\x00]",
            b"<html><body><h1>502 Bad Gateway</h1></body></html>",
            S3_ERROR,
        ]
    ),
    st.text(max_size=300).map(lambda s: s.encode("utf-8", "surrogatepass")),
    deep_json_text(100_000),
    json_text,
    error_document_text,
)


class Huge(NamedTuple):
    """Stands for ``sign * 10**digits`` until the test builds it.

    An int past 4,300 digits has no repr, so hypothesis could not report an example
    holding one: strategies hold this marker and tests call :func:`materialise`.
    """

    digits: int
    sign: int = 1

    def build(self) -> int:
        return self.sign * 10**self.digits


class Deep(NamedTuple):
    """Stands for :func:`nested_value` ``(depth, kind)``: too deep for hypothesis to print."""

    depth: int
    kind: str

    def build(self) -> Any:
        return nested_value(self.depth, self.kind)


def materialise(recipe: Any) -> Any:
    """``recipe`` (a shallow JSON-like value) with its :class:`Huge` and :class:`Deep` built."""
    if isinstance(recipe, Huge | Deep):
        return recipe.build()
    if isinstance(recipe, list):
        return [materialise(item) for item in recipe]
    if isinstance(recipe, dict):
        return {key: materialise(item) for key, item in recipe.items()}
    return recipe


huge_ints = st.builds(Huge, st.integers(4_000, 10_000), st.sampled_from([1, -1]))

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from([2**64, -(2**63) - 1, 10**400])
    | huge_ints
    | st.floats()
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=15,
)


def nested_value(depth: int, kind: str) -> Any:
    """A Python value nested ``depth`` levels deep, built without recursion."""
    value: Any = "leaf"
    for level in range(depth):
        as_list = kind == "lists" or (kind == "mixed" and level % 2)
        value = [value] if as_list else {"a": value}
    return value


deep_values = st.builds(
    Deep,
    st.integers(1, 10_000) | st.just(5_000),
    st.sampled_from(["dicts", "lists", "mixed"]),
)

offsets = st.timedeltas(
    min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23, minutes=59)
).map(lambda delta: timezone(timedelta(minutes=delta // timedelta(minutes=1))))
aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC) | offsets
)

_ZONES = ["GMT", "UTC", "-0000", "+0000", "+2359", "-2359", "+2400", "+9999", "EST", "XYZ", ""]

absurd_http_dates = st.builds(
    "{}, {:02d} {} {} {:02d}:{:02d}:{:02d} {}".format,
    st.sampled_from(["Mon", "Tue", "Xyz", ""]),
    st.integers(-5, 99),
    st.sampled_from(["Jan", "Feb", "Dec", "Foo"]),
    st.integers() | st.sampled_from([0, -1, 10000, 99999999999, 10**30]),
    st.integers(-1, 99),
    st.integers(-1, 99),
    st.integers(-1, 99),
    st.sampled_from(_ZONES),
)

retry_after_texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "1e999",
            "-1e999",
            "99999999999",
            "86401",
            "-5",
            "-0",
            "nan",
            "inf",
            "Infinity",
            "1_000",
            " 7 ",
            "+3",
            "0x10",
            "Mon, 01 Jan 99999999999 00:00:00 GMT",
            "Mon, 01 Jan 0000 00:00:00 GMT",
            "Mon, 01 Jan -1 00:00:00 GMT",
            "Fri, 31 Dec 9999 23:59:59 GMT",
            "Mon, 01 Jan 0001 00:00:00 GMT",
        ]
    ),
    st.integers().map(str),
    st.integers(1, 10_000).map(lambda n: "9" * n),
    st.floats().map(repr),
    st.floats().map("{:e}".format),
    st.floats(allow_nan=False, allow_infinity=False).map("{:f}".format),
    aware_datetimes.map(email.utils.format_datetime),
    aware_datetimes.map(lambda when: email.utils.format_datetime(when.astimezone(UTC), True)),
    absurd_http_dates,
)

headers_with_retry_after = st.builds(
    lambda extra, retry_after: {
        **extra,
        **({} if retry_after is None else {"Retry-After": retry_after}),
    },
    st.dictionaries(st.text(max_size=10), st.text(max_size=20), max_size=3),
    st.none() | retry_after_texts,
)

# ---------------------------------------------------------------------------
# parse_json
# ---------------------------------------------------------------------------


@FAST
@given(body=any_body)
@example(body=b"[" * 100_000 + b"]" * 100_000)
@example(body=b'{"a":' * 100_000 + b"1" + b"}" * 100_000)
@example(body=b"1" + b"0" * 9_999)
@example(body=b"1e999")
@example(body=b"NaN")
@example(body=b"\xff")
def test_parse_json_returns_a_value_or_raises_value_error(body: bytes) -> None:
    """parse_json of any bytes returns a value or raises ValueError, never anything else."""
    with contextlib.suppress(ValueError):
        parse_json(body)


# ---------------------------------------------------------------------------
# decode_execution
# ---------------------------------------------------------------------------

_EXECUTION_KEYS = sorted(execution_body())


def _replaced_body(changes: dict[str, Any], removed: list[str]) -> dict[str, Any]:
    body = execution_body(**changes)
    for key in removed:
        body.pop(key, None)
    return body


wrong_field_values = json_values | deep_values
execution_like = st.builds(
    _replaced_body,
    st.dictionaries(st.sampled_from(_EXECUTION_KEYS), wrong_field_values, max_size=4),
    st.lists(st.sampled_from(_EXECUTION_KEYS), max_size=2),
)


@settings(FAST, suppress_health_check=[HealthCheck.too_slow])
@given(value=json_values | deep_values | execution_like)
@example(value=execution_body())
@example(value=execution_body(executionVersion=Huge(5_000)))
@example(value=execution_body(status=Huge(5_000)))
@example(value=execution_body(expiresAt="9999-12-31T23:59:59-23:59"))
@example(value=execution_body(origin=Deep(5_000, "dicts")))
@example(value=execution_body(id=Deep(5_000, "lists")))
@example(value=Deep(5_000, "dicts"))
def test_decode_execution_returns_an_execution_or_raises_decode_error(value: Any) -> None:
    """decode_execution of any JSON value returns a WorkflowExecution or raises DecodeError."""
    try:
        execution = decode_execution(materialise(value))
    except DecodeError:
        return
    assert isinstance(execution, WorkflowExecution)


# ---------------------------------------------------------------------------
# error_for_response
# ---------------------------------------------------------------------------


def expected_class(status: int) -> type[APIError]:
    """The error class the contract names for ``status``."""
    by_status: dict[int, type[APIError]] = {
        400: BadRequestError,
        401: AuthenticationError,
        403: PermissionDeniedError,
        404: NotFoundError,
        429: RateLimitError,
    }
    return by_status.get(status, ServerError if status >= 500 else APIError)


def assert_retry_after_in_contract(retry_after: object) -> None:
    """``retry_after`` is None or a finite float in [0, RETRY_AFTER_CEILING]."""
    if retry_after is None:
        return
    assert isinstance(retry_after, float)
    assert math.isfinite(retry_after)
    assert 0 <= retry_after <= RETRY_AFTER_CEILING


@settings(SLOW, max_examples=150)
@given(
    status=st.integers(300, 599),
    headers=headers_with_retry_after,
    body=any_body,
    now=aware_datetimes,
)
@example(
    status=429,
    headers={"Retry-After": "Mon, 01 Jan 99999999999 00:00:00 GMT"},
    body=b"",
    now=NOW,
)
@example(status=503, headers={"Retry-After": "99999999999"}, body=b"", now=NOW)
@example(status=503, headers={"Retry-After": "1e999"}, body=b"", now=NOW)
@example(status=502, headers={}, body=b"[" * 100_000 + b"]" * 100_000, now=NOW)
@example(
    status=400,
    headers={},
    body=_error_document_text(b'"fp"', b'[{"code":' + b"9" * 5_000 + b',"message":"m"}]'),
    now=NOW,
)
@example(
    status=400,
    headers={},
    body=_error_document_text(b'"fp"', b'[{"code":' + _deep_text(3_000, "arrays") + b"}]"),
    now=NOW,
)
def test_error_for_response_maps_every_answer_to_its_error_class(
    status: int, headers: dict[str, str], body: bytes, now: datetime
) -> None:
    """Any 3xx-5xx answer gives its status's APIError class, printable, retry_after bounded."""
    error = error_for_response(status, headers, body, method="GET", url="https://x/y", now=now)
    assert type(error) is expected_class(status)
    assert error.status == status
    assert isinstance(str(error), str)
    assert isinstance(repr(error), str)
    assert_retry_after_in_contract(error.retry_after)


# ---------------------------------------------------------------------------
# Secrets echoed in error bodies
# ---------------------------------------------------------------------------

secret_tokens = st.from_regex(r"tot_secret_[A-Za-z0-9]{8,32}", fullmatch=True)


@st.composite
def json_spellings(draw: st.DrawFn, secret: str) -> str:
    r"""``secret`` as JSON may spell it inside a string: plain, some or all \u escapes."""
    mode = draw(st.sampled_from(["plain", "first", "all", "mixed"]))
    spelled = []
    for index, character in enumerate(secret):
        if mode == "plain":
            escape = False
        elif mode == "first":
            escape = index == 0
        elif mode == "all":
            escape = True
        else:
            escape = draw(st.booleans())
        if escape:
            upper = draw(st.booleans())
            spelled.append(f"\\u{ord(character):04X}" if upper else f"\\u{ord(character):04x}")
        else:
            spelled.append(character)
    return "".join(spelled)


_BODY_TEMPLATES = [
    '{{"fingerprint":"fp-1","errors":[{{"code":"UNAUTHORIZED","message":"bad token {}"}}]}}',
    '{{"fingerprint":"fp-1","errors":[{{"code":"{}","message":"m"}}]}}',
    '{{"fingerprint":"{}","errors":[]}}',
    '{{"fingerprint":"fp","errors":[{{"code":"a","message":"b"}},{{"code":"c","message":"{}"}}]}}',
    '{{"headers":{{"Authorization":"{}"}}}}',
    '"{}"',
    "<html><body>Authorization: {}</body></html>",
    "{}",
]


@st.composite
def bodies_echoing(draw: st.DrawFn) -> tuple[str, bytes]:
    """A secret token and an error body that echoes it in some JSON spelling."""
    secret = draw(secret_tokens)
    spelling = draw(json_spellings(secret))
    template = draw(st.sampled_from(_BODY_TEMPLATES))
    padding = draw(st.text(st.characters(codec="ascii", exclude_characters='"\\'), max_size=40))
    return secret, template.format(padding + spelling).encode()


_JSON_ESCAPE = re.compile(r"\\+u([0-9a-fA-F]{4})")


def unescaped(text: str) -> str:
    r"""``text`` with each JSON ``\u`` escape decoded, however many backslashes lead it."""
    return _JSON_ESCAPE.sub(lambda match: chr(int(match[1], 16)), text)


def assert_secret_absent(secret: str, text: str) -> None:
    """Neither ``secret`` nor any JSON-escaped spelling of it is in ``text``."""
    assert secret not in text
    assert secret not in unescaped(text)


class _Content:
    """A body that arrives in pieces: each read returns at most the next piece.

    As aiohttp's stream does: a read returns what has arrived, which may end anywhere,
    in the middle of an echoed token too.
    """

    def __init__(self, body: bytes, cuts: list[int]) -> None:
        edges = sorted({0, len(body), *(cut % (len(body) + 1) for cut in cuts)})
        self._pieces = [body[start:end] for start, end in itertools.pairwise(edges)]

    async def read(self, n: int = -1) -> bytes:
        if not self._pieces:
            return b""
        piece = self._pieces.pop(0)
        if 0 <= n < len(piece):
            self._pieces.insert(0, piece[n:])
            piece = piece[:n]
        return piece


class _ErrorAnswer:
    """The parts of an aiohttp response that reading an error answer uses."""

    def __init__(
        self, status: int, headers: Mapping[str, str], body: bytes, cuts: list[int]
    ) -> None:
        self.status = status
        self.headers = headers
        self.content = _Content(body, cuts)


async def _transport_error(status: int, body: bytes, secret: str, cuts: list[int]) -> APIError:
    answer: Any = _ErrorAnswer(status, {}, body, cuts)
    return await error_of_answer(
        answer, method="GET", display_url="https://api.example/workflows", secrets=(secret,)
    )


@FAST
@given(
    status=st.sampled_from([400, 401, 403, 404, 429, 500, 502, 503]),
    echo=bodies_echoing(),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=4),
)
@example(
    status=401,
    echo=(
        "tot_secret_0123456789",
        b'{"errors":[{"code":"x","message":"\\u0074ot_secret_0123456789"}]}',
    ),
    cuts=[],
)
@example(status=502, echo=("tot_secret_0123456789", b"saw tot_secret_0123456789"), cuts=[12])
def test_the_transport_never_puts_the_token_in_an_error(
    status: int, echo: tuple[str, bytes], cuts: list[int]
) -> None:
    """A transport error never holds the token, plain or escaped, however the body is cut."""
    secret, body = echo
    error = asyncio.run(_transport_error(status, body, secret, cuts))
    # However the body arrived, the error is the one of the whole body: a read that
    # stopped at the first piece could keep the start of a token, past scrubbing.
    assert str(error) == str(asyncio.run(_transport_error(status, body, secret, [])))
    assert_secret_absent(secret, str(error))
    assert_secret_absent(secret, repr(error))
    for detail in error.errors:
        assert_secret_absent(secret, f"{detail.code} {detail.message}")
    assert_secret_absent(secret, str(error.fingerprint))
    assert_secret_absent(secret, str(error.body_snippet))


@FAST
@given(echo=bodies_echoing())
def test_scrub_removes_every_json_spelling_of_the_token(echo: tuple[str, bytes]) -> None:
    """scrub(body, [token]) leaves neither the token nor a JSON-escaped spelling of it."""
    secret, body = echo
    scrubbed = scrub(body, [secret]).decode("utf-8", "surrogateescape")
    assert_secret_absent(secret, scrubbed)


# ---------------------------------------------------------------------------
# parse_retry_after
# ---------------------------------------------------------------------------


@FAST
@given(value=retry_after_texts, now=aware_datetimes)
@example(value="Mon, 01 Jan 99999999999 00:00:00 GMT", now=NOW)
@example(value="99999999999", now=NOW)
@example(value="1e999", now=NOW)
@example(value="Fri, 31 Dec 9999 23:59:59 GMT", now=datetime(1, 1, 2, tzinfo=UTC))
def test_parse_retry_after_is_none_or_a_bounded_wait(value: str, now: datetime) -> None:
    """parse_retry_after never raises and gives None or a finite float in [0, one day]."""
    assert_retry_after_in_contract(parse_retry_after(value, now=now))


# ---------------------------------------------------------------------------
# The poll schedule
# ---------------------------------------------------------------------------

poll_arguments = st.one_of(
    st.floats(),
    st.floats(min_value=1e-3, max_value=1e6),
    st.integers(-5, 10**6),
    st.sampled_from([10**400, 2**1024, sys.float_info.max, 5e-324]),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
    st.fractions(),
    st.decimals(),
    st.just(1 + 2j),
)


def is_real_number(value: object) -> bool:
    """A number the contract accepts as one: int or float, not bool."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_finite(value: float) -> bool:
    """Whether ``value`` is finite (every int is, even one too large for a float)."""
    return isinstance(value, int) or math.isfinite(value)


@FAST
@given(poll_interval=poll_arguments, max_poll_interval=poll_arguments, factor=poll_arguments)
@example(poll_interval=math.inf, max_poll_interval=math.inf, factor=2.0)
@example(poll_interval=1.0, max_poll_interval=30.0, factor=math.inf)
@example(poll_interval=10**400, max_poll_interval=10**400, factor=2.0)
@example(poll_interval=1e308, max_poll_interval=1e308, factor=10.0)
def test_poll_schedule_refuses_bad_values_and_stays_in_its_bounds(
    poll_interval: Any, max_poll_interval: Any, factor: Any
) -> None:
    """PollSchedule takes finite positive numbers, else ValueError; its intervals stay in bounds."""
    try:
        schedule = PollSchedule(poll_interval, max_poll_interval, factor)
    except ValueError:
        return
    for accepted in (poll_interval, max_poll_interval, factor):
        assert is_real_number(accepted)
        assert is_finite(accepted)
        assert accepted > 0
    low, high = schedule.poll_interval, schedule.max_poll_interval
    assert is_finite(low)
    assert is_finite(high)
    assert 0 < low <= high
    interval = low
    for _ in range(200):
        interval = schedule.next_interval(interval)
        assert is_finite(interval)
        assert low <= interval <= high


@FAST
@given(
    interval=st.floats(min_value=0, exclude_min=True, allow_infinity=False),
    retry_after=st.none()
    | st.floats(min_value=0, allow_nan=False)
    | st.sampled_from([0.0, 59.9, 60.0, 61.0, 86400.0, 1e9, 1e308]),
    random_fraction=st.floats(min_value=0, max_value=1, exclude_max=True),
)
@example(interval=5.0, retry_after=1e9, random_fraction=0.0)
@example(interval=5.0, retry_after=1e308, random_fraction=0.5)
def test_poll_delay_honours_retry_after_up_to_its_cap(
    interval: float, retry_after: float | None, random_fraction: float
) -> None:
    """poll_delay is finite, at least 0.8 x interval, and at most max(interval, 60 s)."""
    delay = poll_delay(interval, retry_after=retry_after, random_fraction=random_fraction)
    assert math.isfinite(delay)
    assert 0.8 * interval <= delay <= max(interval, MAX_RETRY_AFTER)


# ---------------------------------------------------------------------------
# mask_url
# ---------------------------------------------------------------------------

SIGNATURE_KEYS = [
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "X-Goog-Signature",
    "X-Goog-Credential",
    "Signature",
    "AWSAccessKeyId",
    "sig",
    "token",
]


@st.composite
def key_spellings(draw: st.DrawFn) -> str:
    """A signature parameter's key in any case, some characters percent-encoded."""
    key = draw(st.sampled_from(SIGNATURE_KEYS))
    spelled = []
    for character in key:
        how = draw(st.sampled_from(["as is", "swapped", "upper hex", "lower hex"]))
        if how == "as is":
            spelled.append(character)
        elif how == "swapped":
            spelled.append(character.swapcase())
        elif how == "upper hex":
            spelled.append(f"%{ord(character):02X}")
        else:
            spelled.append(f"%{ord(character):02x}")
    return "".join(spelled)


secret_values = st.builds(
    "SeCrEt{}".format,
    st.text(
        st.sampled_from("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789%-_.~+/="),
        min_size=4,
        max_size=40,
    ),
)
plain_parameters = st.builds(
    "{}={}".format,
    st.sampled_from(["X-Amz-Date", "X-Amz-Algorithm", "Expires", "design", "response-type"]),
    st.text(st.sampled_from("0123456789"), max_size=10),
)


@st.composite
def signed_urls(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A pre-signed URL, and the secret values of its signature parameters."""
    secrets = draw(st.lists(secret_values, min_size=1, max_size=3))
    parameters = [f"{draw(key_spellings())}={secret}" for secret in secrets]
    parameters += draw(st.lists(plain_parameters, max_size=3))
    parameters = draw(st.permutations(parameters))
    separators = [draw(st.sampled_from(["&", ";"])) for _ in parameters[1:]]
    query = parameters[0] + "".join(s + p for s, p in zip(separators, parameters[1:], strict=True))
    fragment = draw(st.sampled_from(["", "#part", "#"]))
    return f"https://bucket.s3.example.com/results/r.json?{query}{fragment}", secrets


@FAST
@given(signed=signed_urls())
@example(signed=("https://x/o?X%2DAmz%2DSignature=SeCrEtabcd", ["SeCrEtabcd"]))
@example(signed=("https://x/o?a=1;token=SeCrEtabcd", ["SeCrEtabcd"]))
def test_mask_url_hides_every_signature_value(signed: tuple[str, list[str]]) -> None:
    """mask_url leaves no signature parameter's value, however the key is spelled."""
    url, secrets = signed
    masked = mask_url(url)
    for secret in secrets:
        assert secret not in masked


# ---------------------------------------------------------------------------
# redirect_target
# ---------------------------------------------------------------------------

url_like_texts = st.builds(
    "{}{}{}{}{}".format,
    st.sampled_from(["https", "http", "HTTPS", "ftp", "javascript", "", "h ttp"]),
    st.sampled_from(["://", ":", ":///", "//", ""]),
    st.text(max_size=20)
    | st.sampled_from(["[::1", "[::1]", "xn--", "xn--zz", "a..b", "é.example", "\x00", "%zz"]),
    st.sampled_from(["", ":", ":443", ":99999999999999", ":-1", ":abc"]),
    st.text(max_size=20),
)


@FAST
@given(
    payload=json_values
    | st.builds(lambda target: {"$redirect": target}, json_values | url_like_texts),
    api_base_url=st.sampled_from(["https://api.transactionlink.io", "http://127.0.0.1:8080"]),
)
def test_redirect_target_is_none_a_string_or_value_error(payload: Any, api_base_url: str) -> None:
    """redirect_target of any JSON value returns None or a str, or raises ValueError."""
    try:
        target = redirect_target(materialise(payload), api_base_url=api_base_url)
    except ValueError:
        return
    assert target is None or isinstance(target, str)


# ---------------------------------------------------------------------------
# Argument checks
# ---------------------------------------------------------------------------

argument_names = st.from_regex(r"[a-z][a-z_]{3,15}", fullmatch=True)
seconds_values = st.one_of(
    st.floats(),
    st.integers(),
    st.sampled_from([10**400, 2**1024, 0, -1, True, False, math.inf, -math.inf, math.nan]),
    st.none(),
    st.text(max_size=5),
    st.fractions(),
    st.decimals(),
    st.lists(st.integers(), max_size=2),
)


def must_be_accepted(value: object) -> bool:
    """A finite positive int or float (not bool) that a float can hold."""
    if not is_real_number(value):
        return False
    assert isinstance(value, int | float)
    if isinstance(value, int):
        return 0 < value <= sys.float_info.max
    return math.isfinite(value) and value > 0


def must_be_refused(value: object) -> bool:
    """Not a number, a bool, not finite, or not positive."""
    if isinstance(value, bool) or not isinstance(value, int | float | Fraction | Decimal):
        return True
    if isinstance(value, Decimal) and (value.is_nan() or value.is_infinite()):
        return True
    if isinstance(value, float) and not math.isfinite(value):
        return True
    return not value > 0


@FAST
@given(name=argument_names, value=seconds_values)
@example(name="poll_interval", value=math.inf)
@example(name="poll_interval", value=10**400)
@example(name="timeout", value=True)
def test_check_seconds_takes_only_finite_positive_numbers(name: str, value: object) -> None:
    """check_seconds takes only finite positive real numbers, else ValueError naming its name."""
    refusal: ValueError | None = None
    try:
        seconds = check_seconds(name, value)
    except ValueError as error:
        refusal = error
    if refusal is not None:
        assert not must_be_accepted(value), f"{value!r} was refused"
        assert name in str(refusal)
        return
    assert not must_be_refused(value), f"{value!r} was accepted"
    assert isinstance(seconds, float)
    assert math.isfinite(seconds)
    assert seconds > 0
    if must_be_accepted(value):
        assert isinstance(value, int | float)
        assert seconds == float(value)


@settings(SLOW, max_examples=30)
@given(
    depth=st.integers(1, 12_000) | st.sampled_from([5_000, 1_000, 999]),
    kind=st.sampled_from(["dicts", "lists", "mixed"]),
)
@example(depth=5_000, kind="dicts")
def test_check_parameters_refuses_deep_nesting_with_value_error(depth: int, kind: str) -> None:
    """check_parameters of any nesting gives a mapping or ValueError; 5,000 deep is refused."""
    parameters = {"root": nested_value(depth, kind)}
    if depth >= 5_000:
        with pytest.raises(ValueError, match="parameters"):
            check_parameters(parameters)
        return
    try:
        checked = check_parameters(parameters)
    except ValueError:
        return
    assert isinstance(checked, Mapping)
