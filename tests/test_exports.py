"""The public surface: everything importable from the top-level package."""

from __future__ import annotations

from importlib.metadata import version

import aiotlink


def test_all_is_sorted_and_resolves() -> None:
    """__all__ is sorted and every name in it exists."""
    assert aiotlink.__all__ == sorted(aiotlink.__all__)
    for name in aiotlink.__all__:
        assert getattr(aiotlink, name) is not None


def test_api_contract_names_are_exported() -> None:
    """Every name API.md promises is importable from aiotlink."""
    promised = {
        "TransactionLinkClient", "WorkflowExecution", "WorkflowStatus", "Origin",
        "DownloadedResult", "TransactionLinkError", "APIError", "BadRequestError",
        "AuthenticationError", "PermissionDeniedError", "NotFoundError", "RateLimitError",
        "ServerError", "APIConnectionError", "APITimeoutError", "ResponseValidationError",
        "WorkflowFailedError", "WaitTimeoutError", "ResultTooLargeError",
        "WebhookEvent", "WebhookVerificationError",
    }  # fmt: skip
    assert promised <= set(aiotlink.__all__)


def test_version_comes_from_the_installed_metadata() -> None:
    """__version__ is the installed distribution's version."""
    assert aiotlink.__version__ == version("aiotlink")
