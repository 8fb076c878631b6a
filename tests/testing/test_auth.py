"""Authentication forms and permissions of the fake."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable

import aiohttp
import pytest

from aiotlink.testing import FakeTransactionLink
from aiotlink.testing._auth import Grant, authorise

from .helpers import error_codes, initialise


async def status_of_find(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, header: str | None
) -> int:
    """Find a known execution with ``header`` as Authorization; return the status."""
    fake.add_definition("kyc")
    execution = await initialise(session, fake, "kyc")
    headers = {} if header is None else {"Authorization": header}
    async with session.get(f"{fake.url}/workflows/{execution['id']}", headers=headers) as response:
        if response.status == 401:
            assert await error_codes(response) == ["UNAUTHORIZED"]
        return response.status


async def test_a_raw_org_token_is_accepted(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A tot_ token sent as the whole Authorization value authenticates."""
    assert fake.token.startswith("tot_")
    assert await status_of_find(fake, session, fake.token) == 200


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
async def test_a_bearer_jwt_is_accepted(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, scheme: str
) -> None:
    """The fake's legacy JWT after the Bearer scheme (any case) authenticates."""
    assert await status_of_find(fake, session, f"{scheme} {fake.jwt}") == 200


@pytest.mark.parametrize(
    "make_header",
    [
        lambda fake: None,
        lambda fake: "",
        lambda fake: "tot_0123456789abcdef",
        lambda fake: f"Bearer {fake.token}",
        lambda fake: fake.jwt,
        lambda fake: f"Basic {fake.token}",
        lambda fake: f"Token {fake.token}",
        lambda fake: "Bearer ",
        lambda fake: f"Bearer {fake.jwt}x",
        lambda fake: f"{fake.token}x",
    ],
    ids=[
        "missing",
        "empty",
        "unknown-tot",
        "bearer-tot",
        "raw-jwt",
        "basic",
        "token-scheme",
        "bearer-nothing",
        "altered-jwt",
        "altered-tot",
    ],
)
async def test_other_credentials_answer_401(
    fake: FakeTransactionLink,
    session: aiohttp.ClientSession,
    make_header: Callable[[FakeTransactionLink], str | None],
) -> None:
    """A missing, unknown, or wrongly presented credential answers 401."""
    header = make_header(fake)
    assert await status_of_find(fake, session, header) == 401


def test_the_jwt_is_shaped_like_a_jwt(fake: FakeTransactionLink) -> None:
    """fake.jwt is three base64url parts: an HS256 header, claims, and a signature."""
    parts = fake.jwt.split(".")
    assert len(parts) == 3

    def decode(part: str) -> bytes:
        return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))

    assert json.loads(decode(parts[0])) == {"alg": "HS256", "typ": "JWT"}
    claims = json.loads(decode(parts[1]))
    assert claims["scope"] == ["can_run", "can_view_workspace"]
    assert len(decode(parts[2])) == 32


async def test_initialise_needs_can_run(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A credential without can_run gets 403 on initialise, for tot_ tokens and JWTs alike."""
    fake.add_definition("kyc")
    body = {"workflowDefinitionId": "kyc", "locale": "en", "parameters": {}}
    for header in (
        fake.add_token(can_run=False),
        "Bearer " + fake.add_token(can_run=False, legacy_jwt=True),
    ):
        async with session.post(
            f"{fake.url}/workflows", json=body, headers={"Authorization": header}
        ) as response:
            assert response.status == 403
            assert await error_codes(response) == ["ACCESS_DENIED"]
    viewer_less = fake.add_token(can_view_workspace=False)
    await initialise(session, fake, "kyc", credential=viewer_less)


@pytest.mark.parametrize(
    ("method", "suffix", "statuses"),
    [
        ("GET", "", ["COMPLETED"]),
        ("POST", "/cancel", ["RUNNING"]),
        ("GET", "/result", ["COMPLETED"]),
    ],
)
async def test_find_cancel_and_result_need_can_view_workspace(
    fake: FakeTransactionLink,
    session: aiohttp.ClientSession,
    method: str,
    suffix: str,
    statuses: list[str],
) -> None:
    """A credential without can_view_workspace gets 403 on find, cancel and result."""
    fake.add_definition("kyc", statuses=statuses)
    execution = await initialise(session, fake, "kyc")
    url = f"{fake.url}/workflows/{execution['id']}{suffix}"
    blind = fake.add_token(can_view_workspace=False)
    async with session.request(method, url, headers={"Authorization": blind}) as response:
        assert response.status == 403
    viewer = fake.add_token(can_run=False)
    async with session.request(method, url, headers={"Authorization": viewer}) as response:
        assert response.status == 200


async def test_authentication_comes_before_other_checks(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Without a credential, an unknown id or a bad body still answers 401, not 404 or 400."""
    async with session.get(f"{fake.url}/workflows/unknown") as response:
        assert response.status == 401
    async with session.get(f"{fake.url}/workflows/not-a-uuid/result") as response:
        assert response.status == 401
    async with session.post(f"{fake.url}/workflows", data=b"{") as response:
        assert response.status == 401


def test_authorise_is_a_pure_lookup() -> None:
    """authorise() maps header values to grants by the two documented forms only."""
    org = Grant("a", can_run=True, can_view_workspace=True, legacy_jwt=False)
    legacy = Grant("b", can_run=True, can_view_workspace=False, legacy_jwt=True)
    grants = {"tot_x": org, "jwt.y.z": legacy}
    assert authorise("tot_x", grants) is org
    assert authorise("Bearer jwt.y.z", grants) is legacy
    assert authorise("Bearer tot_x", grants) is None
    assert authorise("jwt.y.z", grants) is None
    assert authorise(None, grants) is None
    assert "tot_x" not in repr(org)
