r"""Keeping secrets out of logs, reprs and error texts.

Two kinds of secret pass through the client: the API token (in the ``Authorization``
header of every API call) and the signature of a pre-signed storage URL (in its query
string). A hostile or broken server may echo either back, in any spelling that still
reads as the secret: JSON ``\u`` escapes, percent-encoding, HTML character references.
"""

from __future__ import annotations

import functools
import html.entities
import re
from collections.abc import Iterable
from urllib.parse import unquote

# Query parameters that carry a pre-signed URL's credentials (S3 SigV4 and SigV2, GCS,
# Azure SAS, generic tokens). Whoever holds them can read the object until the URL
# expires. Compared case-insensitively, after percent-decoding the key.
_SIGNATURE_PARAMETERS = frozenset(
    name.lower()
    for name in (
        "X-Amz-Signature",
        "X-Amz-Credential",
        "X-Amz-Security-Token",
        "X-Goog-Signature",
        "X-Goog-Credential",
        "Signature",
        "AWSAccessKeyId",
        "sig",
        "token",
        "access_token",
        "authorization",  # Backblaze B2's download authorisation
        "key",  # API keys (Google's among them)
        "api_key",
        "apikey",
    )
)
# Both separators a query string may use (the W3C once recommended ";").
_QUERY_SEPARATOR = re.compile(r"([&;])")
MASK = "***"
# Values shorter than this are not scrubbed from bodies: "sig=1" would mangle every "1".
_MIN_SCRUBBED_LENGTH = 6


def _query_parts(url: str) -> tuple[str, list[str], str] | None:
    """``url`` split into what precedes its query, the query's parts, and the fragment."""
    head, question_mark, rest = url.partition("?")
    if not question_mark:
        return None
    query, hash_mark, fragment = rest.partition("#")
    return head, _QUERY_SEPARATOR.split(query), hash_mark + fragment


def _is_signature_key(key: str) -> bool:
    return unquote(key).strip().lower() in _SIGNATURE_PARAMETERS


def mask_url(url: str) -> str:
    """The URL with the values of its signature query parameters replaced by ``***``.

    Keys are matched however they are spelled: any case, percent-encoded
    (``X%2DAmz%2DSignature``), after ``&`` or ``;``.
    """
    parts = _query_parts(url)
    if parts is None:
        return url
    head, pieces, fragment = parts
    for index in range(0, len(pieces), 2):  # odd indexes hold the separators
        key, equals, _ = pieces[index].partition("=")
        if equals and _is_signature_key(key):
            pieces[index] = f"{key}={MASK}"
    return f"{head}?{''.join(pieces)}{fragment}"


def url_secrets(url: str) -> tuple[str, ...]:
    """The signature values in ``url``'s query, as sent and percent-decoded.

    What storage may echo in an error body (S3 puts the signature it computed and the
    one it got into ``SignatureDoesNotMatch``).
    """
    parts = _query_parts(url)
    if parts is None:
        return ()
    found: list[str] = []
    for piece in parts[1][::2]:
        key, equals, value = piece.partition("=")
        if equals and _is_signature_key(key):
            found.extend({value, unquote(value)})
    return tuple(found)


def _html_names() -> dict[str, list[str]]:
    """HTML's named character references of each single character (``_``: ``lowbar;``)."""
    names: dict[str, list[str]] = {}
    for name, text in html.entities.html5.items():
        if len(text) == 1 and name.endswith(";"):
            names.setdefault(text, []).append(name)
    return names


_HTML_NAMES = _html_names()


def _character_spellings(character: str) -> str:
    """A regex for one character as itself or escaped as JSON, a URL or HTML would."""
    code = ord(character)
    spellings = [
        re.escape(character),
        rf"\\u{code:04x}",  # JSON (matched case-insensitively, so \u00C4 too)
        rf"&#0*{code};",  # HTML, decimal
        rf"&#x0*{code:x};",  # HTML, hexadecimal
        *(re.escape(f"&{name}") for name in _HTML_NAMES.get(character, ())),  # &lowbar;
    ]
    if code < 0x80:
        spellings.append(rf"%{code:02x}")  # percent-encoding
    return "(?:" + "|".join(spellings) + ")"


@functools.lru_cache(maxsize=64)
def _secret_pattern(secrets: tuple[str, ...]) -> re.Pattern[bytes] | None:
    """One pattern matching every spelling of every secret in ``secrets``."""
    wanted = sorted(
        {secret for secret in secrets if len(secret) >= _MIN_SCRUBBED_LENGTH},
        key=len,
        reverse=True,
    )
    if not wanted:
        return None
    alternatives = ("".join(map(_character_spellings, secret)) for secret in wanted)
    return re.compile("|".join(alternatives).encode(), re.IGNORECASE)


# The longest spelling of one character above (``&UnderBar;``, ``\u005f``), rounded up.
_LONGEST_SPELLING = 12


def scrub(body: bytes, secrets: Iterable[str], *, cut: bool = False) -> bytes:
    """``body`` with every spelling of each secret replaced by ``***``.

    For error bodies before they are read into an error: a proxy may echo request
    headers into its page, storage its signature into its XML. Bounded bodies only
    (ERROR_BODY_LIMIT): the pattern grows with the secrets' length. ``cut``: the body
    was cut short at a bound, so its end may hold the start of a secret, which no
    pattern of the whole secret matches; as many bytes as any spelling of the longest
    secret could take are dropped from the end first.
    """
    wanted = tuple(secrets)
    if cut and wanted:
        body = body[: max(0, len(body) - _LONGEST_SPELLING * max(map(len, wanted)))]
    pattern = _secret_pattern(wanted)
    if pattern is None or not body:
        return body
    return pattern.sub(MASK.encode(), body)


def carries_secret(body: bytes, secrets: Iterable[str]) -> bool:
    """Whether ``body`` holds any secret, as itself or in a spelling that JSON decodes.

    For successful answers, whose values reach texts (an execution's id and status in
    errors and logs) rather than being scrubbed: the API never sends the client's own
    token back, so an answer that does is refused. The plain search is all most bodies
    cost; the pattern runs only on bodies with an escape in them.
    """
    wanted = tuple(secrets)
    if any(secret.encode() in body for secret in wanted if secret):
        return True
    if b"\\" not in body:
        return False
    pattern = _secret_pattern(wanted)
    return pattern is not None and pattern.search(body) is not None


def scrub_text(text: str, secrets: Iterable[str]) -> str:
    """``text`` with every spelling of each secret replaced by ``***``."""
    return scrub(text.encode("utf-8", "surrogateescape"), secrets).decode(
        "utf-8", "surrogateescape"
    )
