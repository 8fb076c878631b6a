"""aiotlink: the asyncio-native client for TransactionLink's Workflows API (v3)."""

from importlib.metadata import version as _version

from ._client import TransactionLinkClient
from ._errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ClientClosedError,
    DownloadError,
    ErrorCode,
    ErrorDetail,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ResponseTooLargeError,
    ResponseValidationError,
    ResultNotReadyError,
    ResultTooLargeError,
    ServerError,
    TransactionLinkError,
    WaitTimeoutError,
    WebhookVerificationError,
    WorkflowFailedError,
)
from ._models import (
    DownloadedResult,
    Origin,
    RunResult,
    WebhookEvent,
    WorkflowExecution,
    WorkflowStatus,
)

__version__ = _version("aiotlink")

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "AuthenticationError",
    "BadRequestError",
    "ClientClosedError",
    "DownloadError",
    "DownloadedResult",
    "ErrorCode",
    "ErrorDetail",
    "NotFoundError",
    "Origin",
    "PermissionDeniedError",
    "RateLimitError",
    "ResponseTooLargeError",
    "ResponseValidationError",
    "ResultNotReadyError",
    "ResultTooLargeError",
    "RunResult",
    "ServerError",
    "TransactionLinkClient",
    "TransactionLinkError",
    "WaitTimeoutError",
    "WebhookEvent",
    "WebhookVerificationError",
    "WorkflowExecution",
    "WorkflowFailedError",
    "WorkflowStatus",
]
