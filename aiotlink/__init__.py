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
    ExecutionType,
    JSONValue,
    Origin,
    RunResult,
    WebhookEvent,
    WorkflowExecution,
    WorkflowStatus,
)
from ._webhooks import Webhooks
from ._workflows import Workflows

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
    "ExecutionType",
    "JSONValue",
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
    "Webhooks",
    "WorkflowExecution",
    "WorkflowFailedError",
    "WorkflowStatus",
    "Workflows",
]

# Tracebacks and reprs name what users import (aiotlink.NotFoundError), not the private
# module it is defined in; pickles then name it so too. httpx does the same.
for _name in __all__:
    _exported = globals()[_name]
    if isinstance(_exported, type):
        _exported.__module__ = __name__
del _name, _exported
