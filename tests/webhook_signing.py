"""Signing webhook deliveries as the provider does, and as a forger would, for the tests.

Written with cryptography's primitives directly, not joserfc, so that the tests can
make every malformed and hostile signature the client must refuse.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import uuid
from functools import cache
from typing import Any

import attrs
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@cache
def rsa_private_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    """One key per size for the whole test run: generating one costs ~100 ms."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def weak_rsa_private_key(bits: int = 512) -> rsa.RSAPrivateKey:
    """An RSA key too small to trust, built from its primes: cryptography makes none under 1024."""

    def probable_prime(size: int) -> int:
        while True:
            candidate = secrets.randbits(size) | (1 << (size - 1)) | 1
            if candidate % 65537 != 1 and all(
                pow(witness, candidate - 1, candidate) == 1 for witness in (2, 3, 5, 7, 11, 13)
            ):
                return candidate

    p, q = probable_prime(bits // 2), probable_prime(bits // 2)
    e = 65537
    d = pow(e, -1, (p - 1) * (q - 1))
    public = rsa.RSAPublicNumbers(e, p * q)
    return rsa.RSAPrivateNumbers(
        p, q, d, d % (p - 1), d % (q - 1), pow(q, -1, p), public
    ).private_key()


@attrs.frozen
class Signer:
    """Signs bodies as the provider does: a detached compact JWS, RS256, with ``kid``."""

    key: rsa.RSAPrivateKey
    kid: str = attrs.field(factory=lambda: str(uuid.uuid4()))

    @property
    def public_pem(self) -> str:
        return (
            self.key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode("ascii")
        )

    def header(self, **changes: Any) -> dict[str, Any]:
        header: dict[str, Any] = {"alg": "RS256", "kid": self.kid}
        header.update(changes)
        return {name: value for name, value in header.items() if value is not None}

    def sign(self, body: bytes, header: dict[str, Any] | None = None) -> str:
        """``<header>..<signature>`` of ``body`` (RS256 whatever the header says)."""
        protected = b64url(json.dumps(header or self.header()).encode())
        return f"{protected}..{b64url(self.rs(protected, body, hashes.SHA256()))}"

    def rs(self, protected: str, body: bytes, digest: hashes.HashAlgorithm) -> bytes:
        signing_input = f"{protected}.{b64url(body)}".encode("ascii")
        return self.key.sign(signing_input, padding.PKCS1v15(), digest)

    def signed_as(self, body: bytes, alg: str) -> str:
        """A signature made as ``alg`` says, by a forger holding only the public key."""
        protected = b64url(json.dumps(self.header(alg=alg)).encode())
        signing_input = f"{protected}.{b64url(body)}".encode("ascii")
        if alg == "none":
            return f"{protected}.."
        if alg == "HS256":  # the public key, which anyone can fetch, as an HMAC secret
            secret = self.public_pem.encode()
            return (
                f"{protected}..{b64url(hmac.new(secret, signing_input, hashlib.sha256).digest())}"
            )
        if alg == "RS512":
            return f"{protected}..{b64url(self.rs(protected, body, hashes.SHA512()))}"
        if alg == "ES256":
            forged = ec.generate_private_key(ec.SECP256R1())
            return f"{protected}..{b64url(forged.sign(signing_input, ec.ECDSA(hashes.SHA256())))}"
        raise ValueError(alg)


def event_body(execution_id: str, status: str = "COMPLETED", **changes: Any) -> bytes:
    """A delivery's body as the fake sends it (README.md, "Webhooks")."""
    payload: dict[str, Any] = {
        "eventType": "WORKFLOW_COMPLETED",
        "workflowExecutionId": execution_id,
        "workflowDefinitionId": "kyc",
        "status": status,
        "recordId": None,
        "occurredAt": "2026-12-04T10:00:00Z",
    }
    payload.update(changes)
    return json.dumps(payload, separators=(",", ":")).encode()
