"""The S3-like storage: pre-signed URLs, their refusals, and byte ranges."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable

import aiohttp
import pytest

from aiotlink.testing import FakeTransactionLink, GeneratedResult, ManualClock
from aiotlink.testing._presign import check_presigned, presign
from aiotlink.testing._ranges import (
    ByteRange,
    RangeNotSatisfiableError,
    if_range_allows,
    parse_range,
)

from .helpers import auth, exact, initialise

SIZE = 50_000
RESULT = GeneratedResult(SIZE, seed=3)
DOCUMENT = b"".join(RESULT.iter_bytes())


@pytest.fixture
async def url(fake: FakeTransactionLink, session: aiohttp.ClientSession) -> str:
    """A pre-signed URL to a 50,000-byte redirected result."""
    definition_id = fake.add_definition(statuses=["COMPLETED"], result=RESULT)
    execution = await initialise(session, fake, definition_id)
    async with session.get(
        f"{fake.url}/workflows/{execution['id']}/result", headers=auth(fake.token)
    ) as response:
        redirect: str = (await response.json())["$redirect"]
        return redirect


async def s3_error(response: aiohttp.ClientResponse) -> dict[str, str]:
    """Check an S3 XML error answer and return its fields."""
    assert response.headers["Content-Type"] == "application/xml"
    text = await response.text()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    root = ElementTree.fromstring(text)
    assert root.tag == "Error"
    fields = {child.tag: child.text or "" for child in root}
    assert {"Code", "Message", "RequestId", "HostId"} <= set(fields)
    return fields


async def test_the_url_as_given_serves_the_whole_object(
    url: str, session: aiohttp.ClientSession
) -> None:
    """A GET of the exact URL, with no credentials, answers 200 with the object."""
    async with session.get(exact(url)) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == str(SIZE)
        assert response.headers["Accept-Ranges"] == "bytes"
        assert response.headers["Content-Type"] == "application/json"
        assert "Last-Modified" in response.headers
        assert await response.read() == DOCUMENT


async def test_an_expired_url_is_refused(
    url: str, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """Past url_ttl seconds, the URL answers 403 AccessDenied, Request has expired."""
    clock.advance(300)
    async with session.get(exact(url)) as response:
        assert response.status == 200
    clock.advance(1)
    async with session.get(exact(url)) as response:
        assert response.status == 403
        fields = await s3_error(response)
    assert fields["Code"] == "AccessDenied"
    assert fields["Message"] == "Request has expired"
    assert fields["X-Amz-Expires"] == "300"
    assert fields["Expires"] < fields["ServerTime"]


async def test_a_small_url_ttl_is_honoured(session: aiohttp.ClientSession) -> None:
    """url_ttl sets X-Amz-Expires of the URLs the fake signs."""
    async with FakeTransactionLink(redirect_threshold=10, url_ttl=7) as fake:
        definition_id = fake.add_definition(statuses=["COMPLETED"], result=RESULT)
        execution = await initialise(session, fake, definition_id)
        async with session.get(
            f"{fake.url}/workflows/{execution['id']}/result", headers=auth(fake.token)
        ) as response:
            assert "X-Amz-Expires=7&" in (await response.json())["$redirect"]


@pytest.mark.parametrize(
    "alter",
    [
        lambda url: url[:-1] + ("0" if url[-1] != "0" else "1"),
        lambda url: url.replace("X-Amz-Expires=300", "X-Amz-Expires=3000"),
        lambda url: url.replace("%2F", "/"),
        lambda url: url.replace("%2F", "%2f"),
        lambda url: (
            url.replace("X-Amz-Algorithm=AWS4-HMAC-SHA256&", "")
            + "&X-Amz-Algorithm=AWS4-HMAC-SHA256"
        ),
        lambda url: url.replace("result.json", "result.JSON"),
        lambda url: url + "&extra=1",
    ],
    ids=["signature", "expires", "requoted", "lowercase-escape", "reordered", "path", "extra"],
)
async def test_an_altered_url_is_refused(
    url: str, session: aiohttp.ClientSession, alter: Callable[[str], str]
) -> None:
    """Any change to the signature, query or path answers 403 SignatureDoesNotMatch."""
    altered = alter(url)
    assert altered != url
    async with session.get(exact(altered)) as response:
        assert response.status == 403
        assert (await s3_error(response))["Code"] == "SignatureDoesNotMatch"


async def test_another_host_header_is_refused(url: str, session: aiohttp.ClientSession) -> None:
    """The URL is signed for its host: another Host header answers 403 SignatureDoesNotMatch."""
    async with session.get(exact(url), headers={"Host": "localhost"}) as response:
        assert response.status == 403
        assert (await s3_error(response))["Code"] == "SignatureDoesNotMatch"


async def test_a_client_that_requotes_the_url_is_refused(
    url: str, session: aiohttp.ClientSession
) -> None:
    """aiohttp's default handling of a str URL decodes %2F and is refused, as S3 may."""
    async with session.get(url) as response:
        assert response.status == 403
    assert "%2F" not in str(response.url.raw_query_string)


async def test_a_url_without_signature_is_refused(url: str, session: aiohttp.ClientSession) -> None:
    """A storage URL without X-Amz-Signature answers 403 AccessDenied."""
    unsigned = url.split("&X-Amz-Signature=")[0]
    for target in (unsigned, unsigned.split("?")[0]):
        async with session.get(exact(target)) as response:
            assert response.status == 403
            assert (await s3_error(response))["Code"] == "AccessDenied"


async def test_an_authorization_header_is_refused(
    fake: FakeTransactionLink, url: str, session: aiohttp.ClientSession
) -> None:
    """Sending Authorization to storage answers 403 InvalidArgument: one auth mechanism only."""
    async with session.get(exact(url), headers=auth(fake.token)) as response:
        assert response.status == 403
        fields = await s3_error(response)
    assert fields["Code"] == "InvalidArgument"
    assert fields["Message"].startswith("Only one auth mechanism allowed")
    assert fake.token not in json.dumps(fields)


@pytest.mark.parametrize("method", ["HEAD", "PUT", "POST", "DELETE"])
async def test_only_get_is_signed(url: str, session: aiohttp.ClientSession, method: str) -> None:
    """A URL pre-signed for GET refuses other methods, HEAD included, with 403."""
    async with session.request(method, exact(url)) as response:
        assert response.status == 403
        body = await response.read()
    assert (body == b"") is (method == "HEAD")


async def test_an_unknown_key_with_a_valid_signature_is_404(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A correctly signed URL to a key that holds nothing answers 404 NoSuchKey."""
    host = fake.storage_url.removeprefix("http://")
    url = fake._storage.presigned_url(host=host, path="/tlink-fake-results/nothing.json")
    async with session.get(exact(url)) as response:
        assert response.status == 404
        assert (await s3_error(response))["Code"] == "NoSuchKey"


@pytest.mark.parametrize(
    ("header", "start", "stop"),
    [
        ("bytes=0-", 0, SIZE),
        ("bytes=100-", 100, SIZE),
        ("bytes=100-199", 100, 200),
        ("bytes=49999-60000", 49_999, SIZE),
        ("bytes=-10", SIZE - 10, SIZE),
        ("bytes=-60000", 0, SIZE),
    ],
)
async def test_a_range_answers_206(
    url: str, session: aiohttp.ClientSession, header: str, start: int, stop: int
) -> None:
    """Range bytes=N-, N-M and -S answer 206 with Content-Range and exactly those bytes."""
    async with session.get(exact(url), headers={"Range": header}) as response:
        assert response.status == 206
        assert response.headers["Content-Range"] == f"bytes {start}-{stop - 1}/{SIZE}"
        assert response.headers["Content-Length"] == str(stop - start)
        assert response.headers["ETag"] == RESULT.etag
        assert await response.read() == DOCUMENT[start:stop]


@pytest.mark.parametrize("header", ["bytes=50000-", "bytes=60000-60010", "bytes=-0"])
async def test_a_range_past_the_end_answers_416(
    url: str, session: aiohttp.ClientSession, header: str
) -> None:
    """A range that starts at or past the end answers 416 InvalidRange with bytes */size."""
    async with session.get(exact(url), headers={"Range": header}) as response:
        assert response.status == 416
        assert response.headers["Content-Range"] == f"bytes */{SIZE}"
        assert (await s3_error(response))["Code"] == "InvalidRange"


@pytest.mark.parametrize(
    "header", ["bytes=0-1,5-6", "items=0-5", "bytes=9-3", "bytes=x-", "bytes=-"]
)
async def test_an_unusable_range_serves_the_whole_object(
    url: str, session: aiohttp.ClientSession, header: str
) -> None:
    """Several ranges, another unit, or a malformed range answer 200 with everything."""
    async with session.get(exact(url), headers={"Range": header}) as response:
        assert response.status == 200
        assert await response.read() == DOCUMENT


async def test_if_range_honours_the_etag(url: str, session: aiohttp.ClientSession) -> None:
    """If-Range with the ETag keeps the range; another ETag or a date sends the full 200."""
    async with session.get(exact(url)) as response:
        etag = response.headers["ETag"]
        last_modified = response.headers["Last-Modified"]
    matching = {"Range": "bytes=10-", "If-Range": etag}
    async with session.get(exact(url), headers=matching) as response:
        assert response.status == 206
        assert await response.read() == DOCUMENT[10:]
    for other in ('"0123456789abcdef0123456789abcdef"', f"W/{etag}", last_modified):
        async with session.get(
            exact(url), headers={"Range": "bytes=10-", "If-Range": other}
        ) as response:
            assert response.status == 200
            assert await response.read() == DOCUMENT


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("bytes=0-0", ByteRange(0, 1)),
        (" BYTES=5-", ByteRange(5, 10)),
        ("bytes=2-100", ByteRange(2, 10)),
        ("bytes=-3", ByteRange(7, 10)),
        ("bytes=-", None),
        ("bytes=4-3", None),
        ("bytes=1-2,4-5", None),
        ("bytes=\u0661-2", None),  # an Arabic-Indic digit is not an ASCII digit
    ],
)
def test_parse_range(header: str | None, expected: ByteRange | None) -> None:
    """parse_range reads one byte range of a 10-byte object, or None to send it all."""
    assert parse_range(header, 10) == expected


@pytest.mark.parametrize("header", ["bytes=10-", "bytes=10-20", "bytes=-0"])
def test_parse_range_refuses_ranges_past_the_end(header: str) -> None:
    """parse_range raises RangeNotSatisfiableError for a range past a 10-byte object."""
    with pytest.raises(RangeNotSatisfiableError):
        parse_range(header, 10)


def test_if_range_allows_only_the_exact_etag() -> None:
    """if_range_allows accepts no If-Range or the exact strong ETag, nothing else."""
    assert if_range_allows(None, '"a"')
    assert if_range_allows(' "a" ', '"a"')
    assert not if_range_allows('W/"a"', '"a"')
    assert not if_range_allows("Sat, 28 Nov 2026 05:00:00 GMT", '"a"')


def test_check_presigned_is_pure() -> None:
    """check_presigned accepts its own URL until it expires, and nothing altered."""
    secret = b"s" * 32
    query = presign(
        secret=secret, host="h:1", path="/b/k", access_key="AK", region="r", signed_at=1000, ttl=60
    )
    target = f"/b/k?{query}"
    assert check_presigned(secret=secret, method="GET", host="h:1", target=target, now=1060) is None
    expired = check_presigned(secret=secret, method="GET", host="h:1", target=target, now=1061)
    assert expired is not None
    assert expired.message == "Request has expired"
    for method, host, altered_target, other_secret in [
        ("HEAD", "h:1", target, secret),
        ("GET", "h:2", target, secret),
        ("GET", "h:1", target.replace("/k?", "/K?"), secret),
        ("GET", "h:1", target, b"t" * 32),
    ]:
        denial = check_presigned(
            secret=other_secret, method=method, host=host, target=altered_target, now=1000
        )
        assert denial is not None
        assert denial.code == "SignatureDoesNotMatch"
