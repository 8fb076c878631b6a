"""The errors the client raises on purpose, all under one root.

::

    TransactionLinkError
    ├── APIError                     an HTTP error answer (.status, .fingerprint, .errors)
    │   ├── BadRequestError          400
    │   ├── AuthenticationError      401
    │   ├── PermissionDeniedError    403
    │   ├── NotFoundError            404 (.unknown_route: the path is no endpoint: check base_url)
    │   │   └── ResultNotReadyError  404 WORKFLOW_RESULT_NOT_FOUND: no result (yet)
    │   ├── RateLimitError           429 (.retry_after)
    │   └── ServerError              5xx
    ├── APIConnectionError           no answer: connect failure, connection lost
    │   └── APITimeoutError          no answer in time; also a builtin TimeoutError
    ├── ResponseValidationError      a 2xx answer that does not fit the model
    ├── ResponseTooLargeError        an answer over max_response_bytes; nothing more read
    │   └── ResultTooLargeError      a result over max_bytes: use download_result
    ├── ClientClosedError            the client was closed (waits end with it at once)
    ├── DownloadError                (download_result) the file could not be written whole;
    │                                (stream_result) the rest could not be had after some
    ├── WebhookVerificationError     (webhooks) a delivery that is not a verified, signed event
    ├── WorkflowFailedError          (waiting) the execution ended other than COMPLETED
    └── WaitTimeoutError             (waiting) the deadline passed first

Programming errors (a malformed argument) raise ``ValueError`` (or ``TypeError``)
naming the argument, before any request. An execution id is a UUID (a ``uuid.UUID``,
or text ``uuid.UUID`` reads) in every method; anything else is ``ValueError``.

The error codes in ``APIError.errors`` are plain strings; :class:`ErrorCode` names the
ones the API is known to send, to compare with (``error.code == ErrorCode.X``).

No error carries a secret: the token and the signatures of pre-signed URLs are masked
in texts, and no error of a library underneath (whose request information holds the
headers) is chained as ``__cause__`` or ``__context__``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from ._models import WorkflowExecution

# What the error text says when a non-idempotent request failed after it may have
# reached the server: retrying blindly could start the workflow twice.
_MAY_HAVE_BEEN_CREATED = (
    "the request may have reached the server, so the execution may have been created; "
    "it was not retried: check before initialising again"
)


class ErrorCode(enum.StrEnum):
    """The error codes of ``APIError.errors`` known to the client, as constants.

    The API's reference publishes no list: these are the codes its answers carry as the
    fake server (``aiotlink.testing``) reproduces them. A ``StrEnum``: a member equals
    its text (``ErrorCode.WORKFLOW_ALREADY_FINISHED == "WORKFLOW_ALREADY_FINISHED"``),
    and codes not listed here still arrive, as plain strings.
    """

    UNAUTHORIZED = "UNAUTHORIZED"  # 401: token missing, unknown or expired
    ACCESS_DENIED = "ACCESS_DENIED"  # 403: the token lacks a permission
    NOT_FOUND = "NOT_FOUND"  # 404: no such endpoint (check base_url)
    WORKFLOW_NOT_FOUND = "WORKFLOW_NOT_FOUND"  # 404: no such execution
    WORKFLOW_DEFINITION_NOT_FOUND = "WORKFLOW_DEFINITION_NOT_FOUND"  # 404 on initialise
    WORKFLOW_RESULT_NOT_FOUND = "WORKFLOW_RESULT_NOT_FOUND"  # 404: no result (yet)
    WORKFLOW_ALREADY_FINISHED = "WORKFLOW_ALREADY_FINISHED"  # 400: cancel after the end
    INVALID_WORKFLOW_ID = "INVALID_WORKFLOW_ID"  # 400: the result's id is no UUID
    VALIDATION_ERROR = "VALIDATION_ERROR"  # 400: a field of initialise's body
    INVALID_REQUEST_BODY = "INVALID_REQUEST_BODY"  # 400: the body is no JSON object
    INVALID_REQUEST = "INVALID_REQUEST"  # 400: another malformed request
    UNSUPPORTED_MEDIA_TYPE = "UNSUPPORTED_MEDIA_TYPE"  # 415
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"  # 413
    WEBHOOK_KEY_NOT_FOUND = "WEBHOOK_KEY_NOT_FOUND"  # 404: no webhook key of that kid
    INTERNAL_SERVER_ERROR = "INTERNAL_SERVER_ERROR"  # 500
    # S3-style storage behind a $redirect, from its XML <Error><Code>:
    STORAGE_ACCESS_DENIED = "AccessDenied"  # 403: no signature, or the URL expired
    STORAGE_SIGNATURE_DOES_NOT_MATCH = "SignatureDoesNotMatch"  # 403: the URL was changed
    STORAGE_NO_SUCH_KEY = "NoSuchKey"  # 404: no such object
    STORAGE_INVALID_RANGE = "InvalidRange"  # 416: a Range past the object's end


@attrs.frozen
class ErrorDetail:
    """One entry of an error answer's ``errors`` list."""

    code: str
    message: str


class TransactionLinkError(Exception):
    """Root of every error the client raises on purpose.

    ``execution_id`` is set on an error that ``as_completed`` yields as the outcome of
    one execution: the id it was given (``None`` otherwise).
    """

    execution_id: str | None = None

    def __reduce__(self) -> tuple[object, ...]:
        # Errors cross process boundaries (ProcessPoolExecutor, multiprocessing), and
        # Exception's own pickling would call __init__ with the wrong arguments.
        return _restore, (type(self), self.args, self.__dict__)


def _restore(
    cls: type[TransactionLinkError], args: tuple[object, ...], state: dict[str, object]
) -> TransactionLinkError:
    error = cls.__new__(cls)
    error.args = args
    error.__dict__.update(state)
    return error


class APIError(TransactionLinkError):
    """The API (or storage, or a proxy in front of them) answered with an error status.

    ``status`` is the HTTP status, ``fingerprint`` the provider's id of this error
    instance (quote it to their support; ``None`` when the body had none), ``errors``
    the list of :class:`ErrorDetail`, ``method`` and ``url`` the request (signature
    parameters of a pre-signed URL masked). ``body_snippet`` is the start of a body
    that was not an error document, e.g. a proxy's HTML page.
    """

    def __init__(
        self,
        status: int,
        *,
        method: str,
        url: str,
        fingerprint: str | None = None,
        errors: Sequence[ErrorDetail] = (),
        body_snippet: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.method = method
        self.url = url
        self.fingerprint = fingerprint
        self.errors = list(errors)
        self.body_snippet = body_snippet
        self.retry_after = retry_after
        self.may_have_been_created = False

    @property
    def code(self) -> str | None:
        """The first error's code (compare with :class:`ErrorCode`), ``None`` if none."""
        return self.errors[0].code if self.errors else None

    def _hint(self) -> str | None:
        """A sentence on what to do, for the end of the message (subclasses add one)."""
        return None

    def __str__(self) -> str:
        parts = [f"{self.status}"]
        if self.errors:
            first = self.errors[0]
            parts.append(f"{first.code}: {first.message}")
            if len(self.errors) > 1:
                parts.append(f"(+{len(self.errors) - 1} more)")
        elif self.body_snippet:
            parts.append(repr(self.body_snippet))
        if self.fingerprint:
            parts.append(f"[fingerprint {self.fingerprint}]")
        parts.append(f"on {self.method} {self.url}")
        if self.retry_after is not None:
            parts.append(f"(retry after {self.retry_after:g} s)")
        if self.may_have_been_created:
            parts.append(f"-- {_MAY_HAVE_BEEN_CREATED}")
        hint = self._hint()
        if hint is not None:
            parts.append(f"-- {hint}")
        return " ".join(parts)


class BadRequestError(APIError):
    """400: the request was invalid."""


class AuthenticationError(APIError):
    """401: the token is missing, unknown or expired."""


class PermissionDeniedError(APIError):
    """403: the token lacks the permission, or storage refused a pre-signed URL."""


class NotFoundError(APIError):
    """404: no such execution, no result yet, or no such endpoint.

    ``unknown_route`` is True when the answer is not the API's own "not found" of an
    execution: a 404 without the API's error document (a proxy's, a web server's) or
    with the code of an unknown path (``ErrorCode.NOT_FOUND``). The request went to a
    path the API does not serve: ``base_url`` is most likely wrong, and the message
    says so.
    """

    unknown_route = False

    def _hint(self) -> str | None:
        if not self.unknown_route:
            return None
        return "no such endpoint at this URL: check base_url"


class ResultNotReadyError(NotFoundError):
    """404 ``WORKFLOW_RESULT_NOT_FOUND``: the execution has no result (yet).

    It has not completed, or ended other than ``COMPLETED``. A :class:`NotFoundError`,
    so ``except NotFoundError`` catches it as before.
    """


class RateLimitError(APIError):
    """429: too many requests; ``retry_after`` is the server's wait in seconds, if given."""


class ServerError(APIError):
    """5xx: the server (or a proxy in front of it) failed."""


class APIConnectionError(TransactionLinkError):
    """No HTTP answer: the connection could not be made, or was lost.

    ``request_sent`` is False only when the server provably never saw the request
    (the connection could not be established).
    """

    def __init__(self, message: str, *, method: str, url: str, request_sent: bool) -> None:
        super().__init__(message)
        self.message = message
        self.method = method
        self.url = url
        self.request_sent = request_sent
        self.may_have_been_created = False
        # Set by the retry loop once it gives up: how many attempts failed, over how long.
        self.attempts: int | None = None
        self.elapsed: float | None = None

    def __str__(self) -> str:
        text = f"{self.message} on {self.method} {self.url}"
        if self.attempts is not None and self.elapsed is not None:
            plural = "s" if self.attempts != 1 else ""
            text += f" (after {self.attempts} attempt{plural} over {self.elapsed:.2f} s)"
        if self.may_have_been_created:
            text += f" -- {_MAY_HAVE_BEEN_CREATED}"
        return text


class APITimeoutError(APIConnectionError, TimeoutError):
    """No answer within the timeout; ``except TimeoutError`` catches it too.

    ``timeout`` is the limit that ran out, in seconds (``None`` if unknown); the
    message names it, and the option that sets it.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str,
        url: str,
        request_sent: bool,
        timeout: float | None = None,
    ) -> None:
        if timeout is not None:
            message = f"{message} (timeout={timeout:g} s)"
        super().__init__(message, method=method, url=url, request_sent=request_sent)
        self.timeout = timeout


class ResponseValidationError(TransactionLinkError):
    """A successful answer whose body does not fit the expected model.

    ``problems`` lists what does not fit, each naming the field path (``... @ $.status``).
    """

    def __init__(self, message: str, *, problems: Sequence[str] = (), method: str, url: str):
        super().__init__(message)
        self.message = message
        self.problems = list(problems)
        self.method = method
        self.url = url

    def __str__(self) -> str:
        text = f"{self.message} on {self.method} {self.url}"
        if self.problems:
            text += ": " + "; ".join(self.problems)
        return text


class ResponseTooLargeError(TransactionLinkError):
    """An answer is longer than the client reads; no more of it was read.

    ``max_bytes`` is the bound, ``size`` the announced length (``None`` when the body
    simply went on past the bound), ``url`` the request's (signatures masked).
    """

    def __init__(self, *, max_bytes: int, size: int | None, url: str) -> None:
        self.max_bytes = max_bytes
        self.size = size
        self.url = url
        super().__init__(self._describe())

    def _describe(self) -> str:
        return (
            f"the answer {self._seen()}, over max_response_bytes={self.max_bytes} (from "
            f"{self.url}); not read further. Raise TransactionLinkClient(max_response_bytes=...) "
            "if the API really sends answers this long"
        )

    def _seen(self) -> str:
        return f"is {self.size} bytes" if self.size is not None else "is larger"


class ResultTooLargeError(ResponseTooLargeError):
    """The result is larger than ``max_bytes``; stream it to disk with ``download_result``.

    ``to_disk`` is True when ``download_result`` itself refused it (over its own
    ``max_bytes``): nothing was left on disk.
    """

    def __init__(
        self, *, max_bytes: int, size: int | None, url: str, to_disk: bool = False
    ) -> None:
        self.to_disk = to_disk
        super().__init__(max_bytes=max_bytes, size=size, url=url)

    def _describe(self) -> str:
        if self.to_disk:
            return (
                f"the result {self._seen()}, over download_result's max_bytes={self.max_bytes} "
                f"(from {self.url}); nothing was written. Raise max_bytes, or pass None"
            )
        return (
            f"the result {self._seen()}, over max_bytes={self.max_bytes} (from {self.url}); "
            "stream it to disk with client.workflows.download_result(execution_id, path) "
            "or raise max_bytes"
        )


class DownloadError(TransactionLinkError):
    """A result could not be written whole to ``path``, or streamed whole.

    The disk refused (the OS error is the ``__cause__``), or storage's answers could
    not be put together into one object. The destination is left as it was and no
    temporary file remains. From ``stream_result`` (``path`` is ``None``): the rest of
    the result could not be had after some of it was yielded (no ETag to resume by,
    or storage changed the object).
    """

    def __init__(self, message: str, *, path: Path | None) -> None:
        super().__init__(message)
        self.path = path


class WebhookVerificationError(TransactionLinkError):
    """A webhook delivery that is not a verified event.

    Malformed, unsigned, wrongly signed, or signed with a key that could not be had.
    ``reason`` is short and generic (never the body, the signature or the key), so that
    it is safe to log and to answer with.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ClientClosedError(TransactionLinkError):
    """The client was closed: no call can start, and every wait on it has ended."""

    def __init__(self, message: str = "the TransactionLinkClient was closed") -> None:
        super().__init__(message)


class WorkflowFailedError(TransactionLinkError):
    """The execution reached a terminal status other than COMPLETED.

    ``execution`` is that terminal execution, ``status`` its status.
    """

    def __init__(self, execution: WorkflowExecution) -> None:
        self.execution = execution
        self.status = execution.status
        super().__init__(f"workflow execution {execution.id} ended {execution.status.value}")


class WaitTimeoutError(TransactionLinkError, TimeoutError):
    """The wait's deadline passed before the execution ended.

    ``execution`` is the last execution seen (``None`` if none was seen yet). The remote
    execution is left running unless the caller asked for it to be cancelled.
    """

    def __init__(self, execution: WorkflowExecution | None, timeout: float) -> None:
        self.execution = execution
        self.timeout = timeout
        last = f"; last status {execution.status.value}" if execution is not None else ""
        super().__init__(f"execution did not finish within {timeout:g} s{last}")
