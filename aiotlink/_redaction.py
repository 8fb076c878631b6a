"""Keeping secrets out of logs, reprs and error texts."""

from __future__ import annotations

import re

# Query parameters that carry a pre-signed URL's credentials (S3 SigV4 and SigV2, GCS,
# Azure SAS). Whoever holds them can read the object until the URL expires.
_SIGNATURE_PARAMETERS = (
    "X-Amz-Signature",
    "X-Amz-Credential",
    "X-Amz-Security-Token",
    "X-Goog-Signature",
    "X-Goog-Credential",
    "Signature",
    "AWSAccessKeyId",
    "sig",
)
_SIGNATURE_PATTERN = re.compile(
    r"(?P<key>[?&](?:" + "|".join(_SIGNATURE_PARAMETERS) + r")=)[^&#]*",
    re.IGNORECASE,
)
MASK = "***"


def mask_url(url: str) -> str:
    """The URL with the values of its signature query parameters replaced by ``***``."""
    return _SIGNATURE_PATTERN.sub(lambda match: match["key"] + MASK, url)
