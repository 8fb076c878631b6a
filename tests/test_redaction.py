"""Masking the credentials of pre-signed URLs."""

from __future__ import annotations

from aiotlink._redaction import mask_url


def test_s3_signature_parameters_are_masked() -> None:
    """X-Amz-Signature, -Credential and -Security-Token values become ***; the rest stays."""
    url = (
        "https://bucket.s3.amazonaws.com/results/r.json?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=AKIA%2F20261128%2Fs3&X-Amz-Date=20261128T000000Z"
        "&X-Amz-Security-Token=FQoG123&X-Amz-Signature=abcdef"
    )
    assert mask_url(url) == (
        "https://bucket.s3.amazonaws.com/results/r.json?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        "&X-Amz-Credential=***&X-Amz-Date=20261128T000000Z"
        "&X-Amz-Security-Token=***&X-Amz-Signature=***"
    )


def test_other_providers_and_case() -> None:
    """GCS, Azure SAS and SigV2 signatures are masked too, whatever the case."""
    assert mask_url("https://x/o?x-goog-signature=s1&sig=s2#frag") == (
        "https://x/o?x-goog-signature=***&sig=***#frag"
    )
    assert mask_url("https://x/o?AWSAccessKeyId=A&Signature=B&Expires=1") == (
        "https://x/o?AWSAccessKeyId=***&Signature=***&Expires=1"
    )


def test_urls_without_signatures_are_unchanged() -> None:
    """A URL with no signature parameter comes back as it was, byte for byte."""
    url = "https://api.transactionlink.io/workflows/a%2Fb?design=signature"
    assert mask_url(url) == url
