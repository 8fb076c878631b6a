"""The fake's S3-like storage: big results behind pre-signed GET URLs.

It listens on its own port, so it is another origin than the API, as S3 is. It
answers GET only, by whole object or one byte range, and refuses with S3's XML
error bodies: 403 for a missing, altered or expired signature and for an
``Authorization`` header (S3 itself answers that one with 400), 404 for an
unknown key, 416 for a range past the end.
"""

from __future__ import annotations

import email.utils
import secrets
from collections.abc import Mapping
from xml.sax.saxutils import escape

import attrs

from aiotlink.testing._answers import Answer
from aiotlink.testing._clock import Clock
from aiotlink.testing._presign import Denial, check_presigned, presign
from aiotlink.testing._ranges import RangeNotSatisfiableError, if_range_allows, parse_range
from aiotlink.testing._results import ResultBody

BUCKET = "tlink-fake-results"
ACCESS_KEY = "AKIAFAKETRANSACTIONLINK"
REGION = "eu-central-1"

_ONE_AUTH_ONLY = (
    "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter,"
    " Signature query string parameter or the Authorization header should be specified"
)


def s3_error(status: int, denial: Denial, headers: Mapping[str, str] | None = None) -> Answer:
    """Answer with an S3-style XML error body for ``denial``."""
    request_id = secrets.token_hex(8).upper()
    fields = [("Code", denial.code), ("Message", denial.message), *denial.details]
    fields += [("RequestId", request_id), ("HostId", secrets.token_urlsafe(32))]
    body = '<?xml version="1.0" encoding="UTF-8"?>\n<Error>'
    body += "".join(f"<{name}>{escape(value)}</{name}>" for name, value in fields)
    body += "</Error>"
    return Answer.of_bytes(
        status,
        {**(headers or {}), "Content-Type": "application/xml", "x-amz-request-id": request_id},
        body.encode(),
    )


@attrs.frozen
class _StoredObject:
    body: ResultBody
    stored_at: float


class Storage:
    """Objects by path, the pre-signing of their URLs, and the answers to GETs.

    ``clock`` gives seconds since the epoch; ``url_ttl`` is the validity of a URL in
    seconds. The signing secret never leaves the instance.
    """

    def __init__(self, *, clock: Clock, url_ttl: int) -> None:
        """Start empty, with a fresh signing secret."""
        self._clock = clock
        self._url_ttl = url_ttl
        self._secret = secrets.token_bytes(32)
        self._objects: dict[str, _StoredObject] = {}

    def put(self, key: str, body: ResultBody) -> str:
        """Store ``body`` under ``key`` (kept if already there) and return its path."""
        path = f"/{BUCKET}/{key}"
        if path not in self._objects:
            self._objects[path] = _StoredObject(body, self._clock())
        return path

    def presigned_url(self, *, host: str, path: str) -> str:
        """Return a fresh URL, valid for ``url_ttl`` seconds, to GET ``path`` at ``host``."""
        query = presign(
            secret=self._secret,
            host=host,
            path=path,
            access_key=ACCESS_KEY,
            region=REGION,
            signed_at=self._clock(),
            ttl=self._url_ttl,
        )
        return f"http://{host}{path}?{query}"

    def answer(self, *, method: str, host: str, target: str, headers: Mapping[str, str]) -> Answer:
        """Answer a request for ``target`` (raw path and query, as received)."""
        if "Authorization" in headers:
            denial = Denial("InvalidArgument", _ONE_AUTH_ONLY, (("ArgumentName", "Authorization"),))
            return s3_error(403, denial)
        refusal = check_presigned(
            secret=self._secret, method=method, host=host, target=target, now=self._clock()
        )
        if refusal is not None:
            return s3_error(403, refusal)
        path = target.partition("?")[0]
        stored = self._objects.get(path)
        if stored is None:
            return s3_error(
                404, Denial("NoSuchKey", "The specified key does not exist.", (("Key", path),))
            )
        return self._object_answer(stored, headers)

    def _object_answer(self, stored: _StoredObject, headers: Mapping[str, str]) -> Answer:
        body = stored.body
        answer_headers = {
            "Content-Type": "application/json",
            "ETag": body.etag,
            "Accept-Ranges": "bytes",
            "Last-Modified": email.utils.formatdate(stored.stored_at, usegmt=True),
        }
        range_header = headers.get("Range")
        try:
            byte_range = (
                parse_range(range_header, body.size)
                if if_range_allows(headers.get("If-Range"), body.etag)
                else None
            )
        except RangeNotSatisfiableError:
            denial = Denial(
                "InvalidRange",
                "The requested range is not satisfiable",
                (("RangeRequested", range_header or ""), ("ActualObjectSize", str(body.size))),
            )
            return s3_error(416, denial, {"Content-Range": f"bytes */{body.size}"})
        if byte_range is None:
            return Answer(200, answer_headers, body.iter_bytes(), body.size)
        answer_headers["Content-Range"] = byte_range.content_range(body.size)
        return Answer(
            206,
            answer_headers,
            body.iter_bytes(byte_range.start, byte_range.stop),
            byte_range.stop - byte_range.start,
        )
