"""Results: recognising and checking the ``$redirect`` to pre-signed storage.

Results over 9 MB come as ``{"$redirect": "<pre-signed URL>"}``. The URL is fetched
without any credential and exactly as given, because its signature covers the query
string byte for byte.
"""

from __future__ import annotations

from typing import Any

from yarl import URL

from ._redaction import mask_url

REDIRECT_KEY = "$redirect"


def redirect_target(payload: Any, *, api_base_url: str) -> str | None:
    """The storage URL if ``payload`` is a ``$redirect``, else ``None`` (a plain result).

    Only ``https`` URLs are followed, or ``http`` ones when the API itself is reached
    over ``http`` (a local fake server).

    Raises:
        ValueError: a ``$redirect`` whose URL is missing, malformed or not allowed.
    """
    if not isinstance(payload, dict) or len(payload) != 1 or REDIRECT_KEY not in payload:
        return None
    target = payload[REDIRECT_KEY]
    if not isinstance(target, str):
        raise ValueError(f"{REDIRECT_KEY} is not a URL string")
    try:
        url = URL(target, encoded=True)
    except ValueError:
        raise ValueError(f"{REDIRECT_KEY} is not a valid URL") from None
    allowed_schemes = {"https", "http"} if URL(api_base_url).scheme == "http" else {"https"}
    if url.scheme not in allowed_schemes or not url.host:
        raise ValueError(
            f"refusing to follow {REDIRECT_KEY} to {mask_url(target)!r}: "
            f"only {' or '.join(sorted(allowed_schemes))} URLs with a host are followed"
        )
    return target
