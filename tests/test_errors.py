"""Mapping answers to errors, and what errors say."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from aiotlink import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    DownloadError,
    ErrorDetail,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseTooLargeError,
    ResponseValidationError,
    ResultTooLargeError,
    ServerError,
    TransactionLinkError,
    WaitTimeoutError,
    WorkflowFailedError,
)
from aiotlink._converter import decode_execution
from aiotlink._transport import authorization_value, error_for_response

from .conftest import execution_body

S3_EXPIRED = (
    b"<?xml version='1.0'?>"
    b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
)
URL = "https://api.transactionlink.io/workflows/x"
ERROR_JSON = (
    b'{"fingerprint":"fp-9","errors":'
    b'[{"code":"E1","message":"first"},{"code":"E2","message":"second"}]}'
)


@pytest.mark.parametrize(
    ("status", "error_class"),
    [
        (400, BadRequestError),
        (401, AuthenticationError),
        (403, PermissionDeniedError),
        (404, NotFoundError),
        (429, RateLimitError),
        (500, ServerError),
        (502, ServerError),
        (503, ServerError),
        (504, ServerError),
        (599, ServerError),
        (409, APIError),
        (408, APIError),
        (302, APIError),
    ],
)
def test_status_maps_to_its_class(status: int, error_class: type[APIError]) -> None:
    """Each status maps to exactly its error class, whatever the body."""
    for body in (ERROR_JSON, b"", b"<html>oops</html>", b"[1]", b'{"x": 1}'):
        error = error_for_response(status, {}, body, method="GET", url=URL)
        assert type(error) is error_class
        assert error.status == status


def test_error_document_fields() -> None:
    """fingerprint and errors come from the ErrorResponse body; str shows the first error."""
    error = error_for_response(404, {}, ERROR_JSON, method="GET", url=URL)
    assert error.fingerprint == "fp-9"
    assert error.errors == [ErrorDetail("E1", "first"), ErrorDetail("E2", "second")]
    assert (error.method, error.url, error.body_snippet) == ("GET", URL, None)
    assert str(error) == f"404 E1: first (+1 more) [fingerprint fp-9] on GET {URL}"


def test_fingerprint_without_errors() -> None:
    """A body with only a fingerprint still counts as an error document."""
    error = error_for_response(500, {}, b'{"fingerprint": "fp-1"}', method="POST", url=URL)
    assert error.fingerprint == "fp-1"
    assert error.errors == []
    assert str(error) == f"500 [fingerprint fp-1] on POST {URL}"


def test_malformed_error_entries_are_skipped() -> None:
    """Entries that are not objects are skipped; missing codes become empty text."""
    body = b'{"errors": ["x", {"message": "only a message"}], "fingerprint": 5}'
    error = error_for_response(400, {}, body, method="GET", url=URL)
    assert error.errors == [ErrorDetail("", "only a message")]
    assert error.fingerprint is None


def test_html_body_gives_a_short_snippet() -> None:
    """A proxy's HTML page is shown as a short, single-line snippet."""
    page = b"<html>\n<body>\n" + b"Bad gateway " * 100 + b"</body></html>"
    error = error_for_response(502, {}, page, method="GET", url=URL)
    assert error.body_snippet is not None
    assert error.body_snippet.startswith("<html> <body> Bad gateway")
    assert len(error.body_snippet) <= 200
    assert error.body_snippet in str(error)


def test_empty_body() -> None:
    """An empty 503 maps by status alone."""
    error = error_for_response(503, {}, b"", method="GET", url=URL)
    assert error.body_snippet is None
    assert str(error) == f"503 on GET {URL}"


def test_s3_xml_error_body() -> None:
    """S3's XML error body gives its Code and Message as the error."""
    body = S3_EXPIRED
    error = error_for_response(403, {}, body, method="GET", url=URL)
    assert error.errors == [ErrorDetail("AccessDenied", "Request has expired")]


def test_retry_after_is_parsed_onto_the_error() -> None:
    """Retry-After (seconds or HTTP date) is on the error in seconds."""
    error = error_for_response(429, {"Retry-After": "7"}, b"", method="GET", url=URL)
    assert error.retry_after == 7
    now = datetime(2026, 11, 28, 12, 0, 0, tzinfo=UTC)
    error = error_for_response(
        503, {"Retry-After": "Sat, 28 Nov 2026 12:00:30 GMT"}, b"", method="GET", url=URL, now=now
    )
    assert error.retry_after == 30
    assert "(retry after 30 s)" in str(error)


def test_error_tree() -> None:
    """Every error is a TransactionLinkError; timeouts are also builtin TimeoutErrors."""
    for cls in (APIError, APIConnectionError, ResponseValidationError, ResultTooLargeError,
                WorkflowFailedError, WaitTimeoutError, DownloadError, ClientClosedError,
                ResponseTooLargeError):  # fmt: skip
        assert issubclass(cls, TransactionLinkError)
        assert cls.__module__ == "aiotlink"  # what users import (issue 20)
    assert issubclass(ResultTooLargeError, ResponseTooLargeError)
    assert issubclass(APITimeoutError, APIConnectionError)
    assert issubclass(APITimeoutError, TimeoutError)
    assert issubclass(WaitTimeoutError, TimeoutError)
    for cls in (BadRequestError, AuthenticationError, PermissionDeniedError, NotFoundError,
                RateLimitError, ServerError):  # fmt: skip
        assert issubclass(cls, APIError)


def test_connection_error_text() -> None:
    """A connection error names the request and, for initialise, the risk of a duplicate."""
    error = APIConnectionError("connection lost", method="POST", url=URL, request_sent=True)
    assert str(error) == f"connection lost on POST {URL}"
    error.may_have_been_created = True
    assert "may have been created" in str(error)


def test_response_validation_error_text() -> None:
    """A validation error lists its problems after the request."""
    error = ResponseValidationError(
        "does not fit", problems=["required field missing @ $.status"], method="GET", url=URL
    )
    assert str(error) == f"does not fit on GET {URL}: required field missing @ $.status"


def test_result_too_large_points_to_download_result() -> None:
    """ResultTooLargeError says how big, the limit, and the way out."""
    error = ResultTooLargeError(max_bytes=10, size=20, url=URL)
    assert "is 20 bytes" in str(error)
    assert "download_result" in str(error)
    assert "is larger" in str(ResultTooLargeError(max_bytes=10, size=None, url=URL))


def test_waiting_errors_carry_the_execution() -> None:
    """WorkflowFailedError and WaitTimeoutError carry the execution they are about."""
    failed = decode_execution(execution_body(status="FAILED"))
    error = WorkflowFailedError(failed)
    assert (error.execution, error.status) == (failed, failed.status)
    assert "ended FAILED" in str(error)
    timeout = WaitTimeoutError(failed, 5.0)
    assert timeout.execution is failed
    assert "within 5 s; last status FAILED" in str(timeout)
    assert str(WaitTimeoutError(None, 1.5)) == "execution did not finish within 1.5 s"


@pytest.mark.parametrize(
    ("token", "header"),
    [
        ("tot_abc", "tot_abc"),
        ("eyJ.x.y", "Bearer eyJ.x.y"),
        ("Bearer eyJ.x.y", "Bearer eyJ.x.y"),
    ],
)
def test_authorization_value(token: str, header: str) -> None:
    """tot_ raw, JWT as Bearer, Bearer as is."""
    assert authorization_value(token) == header


def test_errors_survive_pickling() -> None:
    """Every error pickles (for process pools) with its attributes and its text."""
    import pickle

    failed = decode_execution(execution_body(status="FAILED"))
    errors = [
        error_for_response(404, {"Retry-After": "3"}, ERROR_JSON, method="GET", url=URL),
        APIConnectionError("connection lost", method="POST", url=URL, request_sent=True),
        APITimeoutError("timed out", method="GET", url=URL, request_sent=False),
        ResponseValidationError("bad", problems=["x @ $.status"], method="GET", url=URL),
        ResultTooLargeError(max_bytes=1, size=2, url=URL),
        WorkflowFailedError(failed),
        WaitTimeoutError(failed, 3.0),
    ]
    for error in errors:
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error)
        assert str(copy) == str(error)
        assert copy.__dict__ == error.__dict__
