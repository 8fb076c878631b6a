"""The record of requests the fake received."""

from __future__ import annotations

import json

import aiohttp

from aiotlink.testing import FakeTransactionLink, RecordedRequest

from .helpers import auth, exact, initialise


async def test_every_request_is_recorded_raw(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Each request is kept with its route, method, raw path and query, headers and body."""
    fake.add_definition("kyc")
    execution = await initialise(session, fake, "kyc", parameters={"a": 1})
    async with session.get(
        exact(f"{fake.url}/workflows/{execution['id']}?x=a%2Fb&y"), headers=auth(fake.token)
    ):
        pass
    first, second = fake.requests
    assert (first.route, first.method, first.path, first.query) == (
        "initialise",
        "POST",
        "/workflows",
        "",
    )
    assert json.loads(first.body)["parameters"] == {"a": 1}
    assert first.headers["authorization"] == fake.token
    assert first.headers["CONTENT-TYPE"] == "application/json"
    assert (second.route, second.method, second.query, second.body) == (
        "find",
        "GET",
        "x=a%2Fb&y",
        b"",
    )
    assert second.path == f"/workflows/{execution['id']}"


async def test_requests_for_filters_by_route(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """requests_for returns one route's requests, in order, unmatched and storage included."""
    async with session.get(f"{fake.url}/workflows/a", headers=auth(fake.token)):
        pass
    async with session.delete(f"{fake.url}/workflows/b"):
        pass
    async with session.get(f"{fake.storage_url}/bucket/key?X-Amz-Date=1"):
        pass
    async with session.get(f"{fake.url}/workflows/c", headers=auth(fake.token)):
        pass
    assert [request.path for request in fake.requests_for("find")] == [
        "/workflows/a",
        "/workflows/c",
    ]
    assert [request.method for request in fake.requests_for("unmatched")] == ["DELETE"]
    (storage,) = fake.requests_for("storage")
    assert (storage.path, storage.query) == ("/bucket/key", "X-Amz-Date=1")


def test_the_repr_shows_no_header_values(fake: FakeTransactionLink) -> None:
    """A record's repr lists header names and the body size, never the Authorization value."""
    from multidict import CIMultiDict, CIMultiDictProxy

    headers = CIMultiDictProxy(CIMultiDict({"Authorization": fake.token, "Accept": "x"}))
    record = RecordedRequest("find", "GET", "/workflows/a", "", headers, b"secret-body")
    text = repr(record)
    assert fake.token not in text
    assert "secret-body" not in text
    assert "'Authorization'" in text
    assert "<11 bytes>" in text


async def test_recording_can_be_turned_off(session: aiohttp.ClientSession) -> None:
    """record_requests=False keeps the record empty, for long benchmarks."""
    async with FakeTransactionLink(record_requests=False) as fake:
        async with session.get(f"{fake.url}/workflows/a", headers=auth(fake.token)):
            pass
        assert fake.requests == []
