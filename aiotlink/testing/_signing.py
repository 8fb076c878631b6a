"""Signing the fake's webhooks as the provider does: a detached compact JWS, RS256.

The ``JWS-SIGNATURE`` header is ``<b64url(header)>..<b64url(signature)>`` (RFC 7515
appendix F): the payload segment is left out, and the signing input is
``b64url(header) + "." + b64url(body)``, so a receiver verifies the raw body bytes.
The header is ``{"alg":"RS256","kid":"<uuid>"}``.

joserfc is imported only when a webhook is signed or a key served, so the base
install of ``aiotlink.testing`` works without the ``webhooks`` extra.

RSA keys come from a process-wide pool: generating a 2048-bit key costs 50-100 ms,
so the n-th key any fake of the process uses is the same key, under a fresh ``kid``
per fake. The keys of a fake are test fixtures, not secrets; a fake's keys are still
all distinct from one another, so a rotated key or the unknown-kid fault cannot be
verified with another key of that fake.
"""

from __future__ import annotations

import base64
import importlib
import threading
import uuid
from types import ModuleType
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from joserfc.jwk import RSAKey

INSTALL_HINT = 'pip install "aiotlink[webhooks]"'
"""What to install for the fake's webhooks (joserfc and cryptography)."""

ALGORITHM = "RS256"
"""The provider's signing algorithm."""

_KEY_BITS = 2048

_pool: list[RSAKey] = []
_pool_lock = threading.Lock()


def require_joserfc() -> ModuleType:
    """Import joserfc's JWS module, or raise ``ImportError`` saying what to install."""
    try:
        return importlib.import_module("joserfc.jws")
    except ImportError as exc:
        raise ImportError(
            f"the fake's webhooks need joserfc and cryptography: {INSTALL_HINT}", name="joserfc"
        ) from exc


def pooled_key(index: int) -> RSAKey:
    """Return the ``index``-th RSA key of the process-wide pool, generating it if needed."""
    require_joserfc()
    from joserfc.jwk import RSAKey

    with _pool_lock:
        while len(_pool) <= index:
            _pool.append(RSAKey.generate_key(_KEY_BITS, private=True, auto_kid=False))
        return _pool[index]


@attrs.frozen
class SigningKey:
    """A key of one fake: its ``kid`` and its slot in the process-wide pool.

    The RSA key itself is taken from the pool only when first used, so a ``kid``
    costs nothing until something is signed or served with it.
    """

    kid: str
    slot: int

    @property
    def private_key(self) -> RSAKey:
        """The RSA key (generated on first use)."""
        return pooled_key(self.slot)

    def public_pem(self) -> bytes:
        """The public key as PEM (``-----BEGIN PUBLIC KEY-----``)."""
        return self.private_key.as_pem(private=False)


class KeyRing:
    """The signing keys of one fake: the current one, every one it served, and strangers.

    Rotation makes a new current key; the old ``kid``s stay served. A stranger key
    signs validly under a ``kid`` that is never served (the unknown-kid fault).
    """

    def __init__(self) -> None:
        """Name the first key; no RSA key is generated yet."""
        self._slots = 0
        self._served: dict[str, SigningKey] = {}
        self._stranger_slot: int | None = None
        self.current = self._new_key()
        self._served[self.current.kid] = self.current

    def _new_key(self) -> SigningKey:
        key = SigningKey(str(uuid.uuid4()), self._slots)
        self._slots += 1
        return key

    def rotate(self) -> SigningKey:
        """Make a new current key, keep serving the old ones, and return the new one."""
        self.current = self._new_key()
        self._served[self.current.kid] = self.current
        return self.current

    def stranger(self) -> SigningKey:
        """Return a key under a fresh ``kid`` that is never served.

        Its RSA key is one of this fake's own slots, distinct from every served key.
        """
        if self._stranger_slot is None:
            self._stranger_slot = self._new_key().slot
        return SigningKey(str(uuid.uuid4()), self._stranger_slot)

    def served(self, kid: str) -> SigningKey | None:
        """Return the served key named ``kid``, or ``None``."""
        return self._served.get(kid)


def sign_detached(body: bytes, key: SigningKey) -> str:
    """Sign ``body`` with ``key``; return the detached compact JWS (empty middle segment)."""
    jws = require_joserfc()
    header = {"alg": ALGORITHM, "kid": key.kid}
    compact: str = jws.serialize_compact(header, body, key.private_key, algorithms=[ALGORITHM])
    protected, _, rest = compact.partition(".")
    _, _, signature = rest.partition(".")
    return f"{protected}..{signature}"


def corrupt_signature(detached: str) -> str:
    """Flip every bit of the signature's last byte: still well-formed, no longer valid."""
    protected, _, signature = detached.rpartition(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[-1] ^= 0xFF
    return f"{protected}.{base64.urlsafe_b64encode(bytes(raw)).rstrip(b'=').decode('ascii')}"
