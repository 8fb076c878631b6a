"""Recognising and checking a result's $redirect."""

from __future__ import annotations

from typing import Any

import pytest

from aiotlink._results import redirect_target

HTTPS_API = "https://api.transactionlink.io"
LOCAL_API = "http://127.0.0.1:8080"


@pytest.mark.parametrize(
    "payload",
    [
        {"score": 1},
        {"$redirect": "https://s3/x", "other": 1},
        [{"$redirect": "https://s3/x"}],
        "text",
        None,
        {},
    ],
)
def test_plain_results_are_not_redirects(payload: Any) -> None:
    """Only an object whose single key is $redirect is a redirect."""
    assert redirect_target(payload, api_base_url=HTTPS_API) is None


def test_https_redirect_is_returned_as_given() -> None:
    """The URL is returned exactly as sent (no re-quoting)."""
    url = "https://b.s3.amazonaws.com/r.json?X-Amz-Credential=A%2FB&X-Amz-Signature=ff"
    assert redirect_target({"$redirect": url}, api_base_url=HTTPS_API) == url


def test_http_redirect_only_for_an_http_api() -> None:
    """http storage URLs are followed only when the API itself is http (local testing)."""
    url = "http://127.0.0.1:9000/r.json?X-Amz-Signature=ff"
    assert redirect_target({"$redirect": url}, api_base_url=LOCAL_API) == url
    with pytest.raises(ValueError, match="refusing to follow") as caught:
        redirect_target({"$redirect": url}, api_base_url=HTTPS_API)
    assert "X-Amz-Signature=***" in str(caught.value)


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (42, "not a URL string"),
        ("file:///etc/passwd", "refusing to follow"),
        ("https:///no-host", "refusing to follow"),
        ("/relative/path", "refusing to follow"),
        ("http://[::1", "not a valid URL"),
    ],
)
def test_bad_redirects_are_refused(target: Any, message: str) -> None:
    """A $redirect that is not a usable https URL raises ValueError."""
    with pytest.raises(ValueError, match=message):
        redirect_target({"$redirect": target}, api_base_url=HTTPS_API)
