"""Pre-signed GET URLs in the style of S3's query-string authentication (SigV4).

The signature is a hex HMAC-SHA256, under a secret of the fake, over the method,
the host, the raw path and the raw query string without ``X-Amz-Signature``. It is
checked against the request target exactly as received, so a client that re-quotes
the URL (``%2F`` into ``/``), reorders or alters a parameter is refused, which is
stricter than S3 itself and catches those clients before S3 does.
"""

from __future__ import annotations

import calendar
import hashlib
import hmac
import time
from urllib.parse import quote, unquote

import attrs

ALGORITHM = "AWS4-HMAC-SHA256"
SIGNATURE_PARAMETER = "X-Amz-Signature"
_AMZ_DATE = "%Y%m%dT%H%M%SZ"


@attrs.frozen
class Denial:
    """Why storage refuses a request: an S3 error code, its message, extra XML fields."""

    code: str
    message: str
    details: tuple[tuple[str, str], ...] = ()


def _signature(*, secret: bytes, method: str, host: str, path: str, query: str) -> str:
    message = "\n".join((method, host, path, query)).encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def iso_utc(moment: float) -> str:
    """Format seconds since the epoch as ISO 8601 UTC to the second, with ``Z``."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(moment))


def presign(
    *, secret: bytes, host: str, path: str, access_key: str, region: str, signed_at: float, ttl: int
) -> str:
    """Return the query string that makes ``GET http://host/path`` valid for ``ttl`` seconds.

    ``signed_at`` is in seconds since the epoch. The credential is quoted with
    ``%2F`` for its slashes, as S3's are, and the signature comes last.
    """
    stamp = time.strftime(_AMZ_DATE, time.gmtime(signed_at))
    credential = f"{access_key}/{stamp[:8]}/{region}/s3/aws4_request"
    query = "&".join(
        (
            f"X-Amz-Algorithm={ALGORITHM}",
            f"X-Amz-Credential={quote(credential, safe='')}",
            f"X-Amz-Date={stamp}",
            f"X-Amz-Expires={ttl}",
            "X-Amz-SignedHeaders=host",
        )
    )
    signature = _signature(secret=secret, method="GET", host=host, path=path, query=query)
    return f"{query}&{SIGNATURE_PARAMETER}={signature}"


def check_presigned(
    *, secret: bytes, method: str, host: str, target: str, now: float
) -> Denial | None:
    """Check a request against its pre-signed query; ``None`` means it may proceed.

    ``target`` is the raw request target (path and query) as received; ``now`` is in
    seconds since the epoch. A missing signature gives ``AccessDenied``; any change
    to the method, host, path or query gives ``SignatureDoesNotMatch``; a URL past
    ``X-Amz-Date`` + ``X-Amz-Expires`` gives ``AccessDenied``, "Request has expired".
    """
    path, _, query = target.partition("?")
    parameters = query.split("&") if query else []
    signatures = [item for item in parameters if item.startswith(SIGNATURE_PARAMETER + "=")]
    if not signatures:
        return Denial("AccessDenied", "Access Denied")
    provided = signatures[0].partition("=")[2]
    parameters.remove(signatures[0])
    expected = _signature(
        secret=secret, method=method, host=host, path=path, query="&".join(parameters)
    )
    if not hmac.compare_digest(provided.encode(), expected.encode()):
        return Denial(
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided."
            " Check your key and signing method.",
            (("SignatureProvided", provided),),
        )
    # Signed, so these are the fake's own values and parse.
    values = {key: unquote(value) for key, _, value in (item.partition("=") for item in parameters)}
    signed_at = calendar.timegm(time.strptime(values["X-Amz-Date"], _AMZ_DATE))
    expires = int(values["X-Amz-Expires"])
    if now > signed_at + expires:
        return Denial(
            "AccessDenied",
            "Request has expired",
            (
                ("X-Amz-Expires", str(expires)),
                ("Expires", iso_utc(signed_at + expires)),
                ("ServerTime", iso_utc(now)),
            ),
        )
    return None
