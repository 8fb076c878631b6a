"""The package's layers: resources reach HTTP only through the request layer.

The client composes the request layer and the resources on it (``_requester.py``'s
docstring draws it); a resource that reached into the client would be a second request
path, where scrubbing, bounds and the retry policy get lost.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from aiotlink import TransactionLinkClient

PACKAGE = Path(__file__).resolve().parent.parent / "aiotlink"
RESOURCES = ("_workflows.py", "_download.py")


def imported_modules(path: Path) -> set[str]:
    """The aiotlink modules ``path`` imports (relative imports resolved by name)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            names.add(node.module.rsplit(".", 1)[-1])
        elif isinstance(node, ast.Import):
            names.update(alias.name.rsplit(".", 1)[-1] for alias in node.names)
    return names


def test_no_module_but_the_package_imports_the_client() -> None:
    """Only ``aiotlink/__init__.py`` imports ``_client``; everything else stands below it."""
    importers = [
        str(path.relative_to(PACKAGE))
        for path in PACKAGE.rglob("*.py")
        if "_client" in imported_modules(path)
    ]
    assert importers == ["__init__.py"]


@pytest.mark.parametrize("resource", RESOURCES)
def test_resources_use_the_request_layer_only(resource: str) -> None:
    """A resource names neither the client nor aiohttp's sessions: only its Requester."""
    source = (PACKAGE / resource).read_text()
    assert "TransactionLinkClient" not in source
    assert "._client" not in source
    assert "ClientSession" not in source
    assert "session.get(" not in source
    assert "session.request(" not in source


def test_a_view_is_of_the_clients_own_class_and_shares_its_sessions() -> None:
    """with_options goes through the constructor's path: a subclass's view is a subclass."""

    class Tenant(TransactionLinkClient):
        pass

    client = Tenant("tot_view_test_token")
    view = client.with_options(max_retries=0)
    assert type(view) is Tenant
    assert view._sessions is client._sessions
    assert view._requester is not client._requester
    assert (view.max_retries, client.max_retries) == (0, 3)
