"""Checking arguments before any request: each malformed one is a ValueError naming it."""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Mapping
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

# Where the client's settings come from when not given (README.md, "Quick start").
DEFAULT_BASE_URL = "https://api.transactionlink.io"
TOKEN_ENV_VAR = "TRANSACTIONLINK_TOKEN"
BASE_URL_ENV_VAR = "TRANSACTIONLINK_BASE_URL"
# The provider's bounds for expiresAt (its API reference, initialise-workflow).
MIN_EXPIRY = timedelta(minutes=30)
MAX_EXPIRY = timedelta(days=30)
UUID_PATTERN = re.compile(r"[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")


def shown(value: object) -> str:
    """``repr(value)`` cut to a length fit for an error message, whatever ``value`` is."""
    try:
        text = repr(value)
    except Exception:  # a 5,000-digit int, a repr that fails
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 60 else text[:59] + "…"


def check_seconds(name: str, value: object, *, allow_none: bool = False) -> float | None:
    """A finite, positive number of seconds (or ``None`` where allowed), else ``ValueError``.

    Infinity is refused: asyncio and aiohttp turn it into an OverflowError at every
    call; ``None`` is how "no limit" is said.
    """
    if value is None and allow_none:
        return None
    seconds = math.nan
    if isinstance(value, int | float) and not isinstance(value, bool):
        # An int beyond a float's range is no finite number of seconds either.
        seconds = float(value) if isinstance(value, float) or abs(value) < 2**1000 else math.inf
    if not (seconds > 0 and math.isfinite(seconds)):
        also = " or None" if allow_none else ""
        raise ValueError(
            f"{name} must be a finite, positive number of seconds{also}, got {shown(value)}"
        )
    return seconds


def check_count(name: str, value: object, *, minimum: int, maximum: int | None = None) -> int:
    """A whole number at least ``minimum`` (and at most ``maximum``), else ``ValueError``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {shown(value)}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be at most {maximum}, got {shown(value)}")
    return value


def check_flag(name: str, value: object) -> bool:
    """``True`` or ``False``, else ``TypeError`` naming the argument ("no" is truthy)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


def check_callable(name: str, value: object) -> None:
    """``None`` or something callable, else ``ValueError``."""
    if value is not None and not callable(value):
        raise ValueError(f"{name} must be a function or None, got {type(value).__name__}")


def check_text(name: str, value: object) -> str:
    """``value`` as a non-empty string, else ``ValueError`` naming the argument."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {shown(value)}")
    return value


def check_execution_id(value: object) -> str:
    """An execution id as it goes in a URL path: a UUID, in lower case 8-4-4-4-12 form.

    The one rule of every method that takes an execution id: a ``UUID``, or text that
    ``uuid.UUID`` reads (any case, with or without hyphens or braces); anything else is
    a ``ValueError`` before any request. Lower case, as ``str(UUID)`` writes it: one
    execution is then one key for the shared polls, whichever way it was written (a
    wait started with the id in upper case, a webhook that names it in lower case).
    """
    if isinstance(value, UUID):
        return str(value)
    if isinstance(value, str) and UUID_PATTERN.fullmatch(value):
        return value.lower()  # the usual form, without building a UUID (polls ask often)
    return str(check_uuid("execution_id", value))


def check_uuid(name: str, value: object) -> UUID:
    """``value`` (a ``UUID`` or its text) as a ``UUID``, else ``ValueError`` naming it."""
    if isinstance(value, UUID):
        return value
    if isinstance(value, str):
        try:
            return UUID(value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be a UUID, got {shown(value)}")


def check_parameters(parameters: Mapping[str, Any] | None) -> Mapping[str, Any]:
    """The workflow parameters as a JSON object (``None`` is ``{}``)."""
    if parameters is None:
        return {}
    if not isinstance(parameters, Mapping):
        raise ValueError(f"parameters must be a mapping, got {type(parameters).__name__}")
    if not all(isinstance(key, str) for key in parameters):
        # json.dumps would turn 1 into "1" without a word: say so instead.
        raise ValueError("parameters must have string keys (they are JSON object keys)")
    try:
        json.dumps(parameters, allow_nan=False)
    except (TypeError, ValueError) as exc:
        problem = f"parameters must be JSON-serialisable: {exc}"
    except RecursionError:
        problem = "parameters nest too deep to send as JSON"
    else:
        return parameters
    raise ValueError(problem)


def check_expires_at(expires_at: datetime | timedelta | None, *, now: datetime) -> datetime | None:
    """The expiry as an aware datetime, checked to lie 30 minutes to 30 days after ``now``."""
    if expires_at is None:
        return None
    if isinstance(expires_at, timedelta):
        if not MIN_EXPIRY <= expires_at <= MAX_EXPIRY:  # before now + it can overflow
            raise ValueError(
                f"expires_at must lie between 30 minutes and 30 days from now, got {expires_at}"
            )
        when = now + expires_at
    elif isinstance(expires_at, datetime):
        if expires_at.tzinfo is None or expires_at.utcoffset() is None:
            raise ValueError("expires_at must be timezone-aware (e.g. datetime.now(UTC) + ...)")
        when = expires_at
    else:
        raise ValueError(
            f"expires_at must be a datetime or a timedelta, got {type(expires_at).__name__}"
        )
    try:
        ahead = when - now
    except OverflowError:  # datetime.min in a zone east of UTC
        ahead = -MAX_EXPIRY
    if not MIN_EXPIRY <= ahead <= MAX_EXPIRY:
        raise ValueError(
            f"expires_at must lie between 30 minutes and 30 days from now, got {when.isoformat()}"
        )
    return when


def check_destination(path: str | os.PathLike[str]) -> Path:
    """``path`` as a ``Path`` a result may be written to; ``ValueError`` otherwise.

    Its folder must exist, and the path must be a regular file or nothing yet. A FIFO,
    a device, a socket or a directory is refused: the result would replace it (as root,
    ``/dev/null`` itself). A symbolic link is replaced by the file, never written
    through (README.md, "Large results to disk"), unless what it points to is such a
    special file (``/dev/stdout`` is a link to a terminal or a pipe): refused too, as
    the person meant that special file, not a file in its place. Errors the OS gives only when the
    file is made (a read-only or pseudo filesystem, a name too long) are the
    download's :class:`DownloadError`.
    """
    if not isinstance(path, str | os.PathLike):
        raise ValueError(f"path must be a str or a path, got {type(path).__name__}")
    text = os.fspath(path)
    if "\0" in text:
        raise ValueError("path must not contain a NUL character")
    if text.endswith(("/", os.sep)):
        # pathlib would drop the separator, and with it that a directory was meant.
        raise ValueError(f"path ends with a separator, so it names a directory: {text}")
    destination = Path(text)
    try:
        mode: int | None = os.lstat(destination).st_mode
    except OSError:
        mode = None  # not there yet, or not to be known before the file is made
    if mode is not None and stat.S_ISLNK(mode):
        try:
            mode = os.stat(destination).st_mode
        except OSError:
            mode = None  # a dangling link (or a loop): replaced like any link
        linked = "a link to "
    else:
        linked = ""
    if mode is not None and not stat.S_ISREG(mode):
        kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise ValueError(f"path is {linked}{kind}, which a result must not replace: {destination}")
    if not destination.parent.is_dir():
        raise ValueError(f"path's folder does not exist: {destination.parent}")
    return destination


# How deep a JSON document a person hands in (a parameters file, a definition file) may
# nest: far beyond any real one, and far below what would exhaust the interpreter's stack.
MAX_JSON_DEPTH = 64


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (JSON has no NaN or Infinity)")


def parse_strict_json(text: str | bytes, what: str) -> Any:
    """The JSON value of ``text``, else ``ValueError`` naming ``what`` (never quoting it).

    Stricter than ``json.loads``: ``NaN`` and ``Infinity`` are refused (they are not
    JSON, and the API could not read them back), and so is nesting deeper than
    ``MAX_JSON_DEPTH``. The message gives the position, not the text: the file may
    hold a secret.
    """
    try:
        value = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        problem = f"{what} nests deeper than {MAX_JSON_DEPTH} levels"
    except UnicodeDecodeError as error:
        problem = f"{what} is not UTF-8 ({error.reason})"
    except json.JSONDecodeError as error:
        problem = f"{what} is not valid JSON: {error.msg} at line {error.lineno}"
    except ValueError as error:  # from _refuse_constant
        problem = f"{what}: {error}"
    else:
        stack = [(value, 1)]
        while stack:
            item, depth = stack.pop()
            if isinstance(item, dict | list):
                if depth > MAX_JSON_DEPTH:
                    raise ValueError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
                children = item.values() if isinstance(item, dict) else item
                stack.extend((child, depth + 1) for child in children)
        return value
    raise ValueError(problem)


def read_small_file(path: str, limit: int, name: str) -> bytes:
    """The bytes of a file a person names (a token, a definition), at most ``limit``.

    ``ValueError`` names ``name`` and the OS's reason, or that the file is too large,
    never what it holds: it may be a secret, or a wrong file read by mistake.
    """
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as error:
        raise ValueError(f"cannot read {name}: {error.strerror or error}") from None
    if len(data) > limit:
        raise ValueError(f"{name} is over {limit} bytes (not shown)")
    return data
