"""Credentials of the fake: organization tokens, legacy JWTs, and the header rules.

The reference accepts a ``tot_...`` token as the whole ``Authorization`` value, and
a legacy JWT as ``Bearer <jwt>``; nothing else authenticates.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from collections.abc import Mapping

import attrs

ORG_TOKEN_PREFIX = "tot_"


@attrs.frozen
class Grant:
    """What one credential may do. Holds no secret, so it is safe to print."""

    token_id: str
    can_run: bool
    can_view_workspace: bool
    legacy_jwt: bool


def new_org_token() -> str:
    """Make a fresh organization token, ``tot_`` and 40 hex digits."""
    return ORG_TOKEN_PREFIX + secrets.token_hex(20)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_jwt(*, secret: bytes, grant: Grant, issued_at: float) -> str:
    """Make a legacy JWT (HS256) for ``grant``: three base64url parts joined by dots.

    ``issued_at`` is in seconds since the epoch; the fake accepts the JWTs it made
    by value, so the claims are informative only.
    """
    header = _b64url(b'{"alg":"HS256","typ":"JWT"}')
    scopes = [
        name
        for name, allowed in (
            ("can_run", grant.can_run),
            ("can_view_workspace", grant.can_view_workspace),
        )
        if allowed
    ]
    claims = {"iss": "aiotlink-fake", "sub": grant.token_id, "iat": int(issued_at), "scope": scopes}
    payload = _b64url(json.dumps(claims, separators=(",", ":")).encode())
    signature = hmac.new(secret, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64url(signature)}"


def new_grant(*, can_run: bool, can_view_workspace: bool, legacy_jwt: bool) -> Grant:
    """Make a grant with a fresh token id."""
    return Grant(str(uuid.uuid4()), can_run, can_view_workspace, legacy_jwt)


def authorise(header: str | None, grants: Mapping[str, Grant]) -> Grant | None:
    """Return the grant an ``Authorization`` header value carries, or ``None`` (401).

    A ``tot_`` token counts only as the whole value; a JWT only after ``Bearer``
    (the scheme is case-insensitive, as HTTP schemes are). ``Bearer tot_...``, a
    raw JWT, another scheme, or a credential the fake did not issue count as none.
    """
    if not header:
        return None
    if header.startswith(ORG_TOKEN_PREFIX):
        grant = grants.get(header)
        return grant if grant is not None and not grant.legacy_jwt else None
    scheme, _, credential = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    grant = grants.get(credential)
    return grant if grant is not None and grant.legacy_jwt else None
