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


def test_public_classes_name_the_package_as_their_module() -> None:
    """Every exported class shows aiotlink (or aiotlink.testing) as its module."""
    import aiotlink.testing

    classes = [getattr(aiotlink, name) for name in aiotlink.__all__]
    assert len([cls for cls in classes if isinstance(cls, type)]) >= 30
    for cls in classes:
        if isinstance(cls, type):
            assert cls.__module__ == "aiotlink", cls
            assert getattr(aiotlink, cls.__qualname__) is cls
    for name in aiotlink.testing.__all__:
        assert getattr(aiotlink.testing, name).__module__ == "aiotlink.testing"
    assert repr(aiotlink.TransactionLinkClient) == "<class 'aiotlink.TransactionLinkClient'>"


def test_a_traceback_names_the_error_as_users_import_it() -> None:
    """The last line of a traceback reads aiotlink.NotFoundError, and errors still pickle."""
    import pickle
    import traceback

    error = aiotlink.ResultNotReadyError(404, method="GET", url="https://api.example/x")
    try:
        raise error
    except aiotlink.NotFoundError:
        last_line = traceback.format_exc().splitlines()[-1]
    assert last_line.startswith("aiotlink.ResultNotReadyError: 404")
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is aiotlink.ResultNotReadyError
    assert str(restored) == str(error)


def test_workflows_and_the_new_names_are_exported() -> None:
    """Workflows, ErrorCode, ExecutionType, JSONValue and ResultNotReadyError are importable."""
    from aiotlink import ErrorCode, ExecutionType, JSONValue, ResultNotReadyError, Workflows

    client = aiotlink.TransactionLinkClient("tot_x_0123456789")
    assert isinstance(client.workflows, Workflows)
    assert issubclass(ResultNotReadyError, aiotlink.NotFoundError)
    assert ErrorCode.WORKFLOW_RESULT_NOT_FOUND == "WORKFLOW_RESULT_NOT_FOUND"
    assert ExecutionType("SOMETHING_NEW").is_known is False
    assert JSONValue is not None
    assert "workflows" in (aiotlink.TransactionLinkClient.__doc__ or "")
