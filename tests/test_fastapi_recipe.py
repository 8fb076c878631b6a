"""The README's FastAPI recipe, run as written: the app, and its test with the plugin."""

from __future__ import annotations

import re
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from aiotlink import TransactionLinkClient
from aiotlink.testing import FakeTransactionLink

README = Path(__file__).parent.parent / "README.md"


def readme_block(first_line: str) -> str:
    """The README's python block that starts with ``first_line``."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    (block,) = [block for block in blocks if block.startswith(first_line + "\n")]
    return str(block)


@pytest.fixture
def app_module() -> Iterator[types.ModuleType]:
    """The README's app.py, importable as ``app`` for the test's own import."""
    module = types.ModuleType("app")
    sys.modules["app"] = module
    try:
        exec(compile(readme_block("# app.py"), "README.md:app.py", "exec"), module.__dict__)
        yield module
    finally:
        del sys.modules["app"]


def readme_test(app_module: types.ModuleType) -> Callable[..., Any]:
    namespace: dict[str, Any] = {}
    exec(compile(readme_block("# test_app.py"), "README.md:test_app.py", "exec"), namespace)
    test: Callable[..., Any] = namespace["test_kyc"]
    return test


async def test_the_readme_test_passes_and_the_app_made_its_own_client_of_the_fake(
    app_module: types.ModuleType, transactionlink_defaults: FakeTransactionLink
) -> None:
    """The documented test runs the app's lifespan unchanged, against the fake, no sleeps."""
    fake = transactionlink_defaults
    await readme_test(app_module)(fake)
    client = app_module.app.state.transactionlink
    assert isinstance(client, TransactionLinkClient)
    assert client.base_url == fake.url
    assert client.retry_backoff is False
    assert len(fake.requests_for("find")) == 4  # three 503s retried at once, then the answer


async def test_the_readme_app_tells_its_callers_what_went_wrong(
    app_module: types.ModuleType, transactionlink_defaults: FakeTransactionLink
) -> None:
    """No result yet is 409, an unknown or malformed id 404, an unsigned webhook 401."""
    fake = transactionlink_defaults
    fake.add_definition("kyc", statuses=["RUNNING", "AWAITING", "COMPLETED"])
    app = app_module.app
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
            execution_id = (await http.post("/kyc")).json()["id"]
            not_yet = await http.get(f"/kyc/{execution_id}/result")
            unknown = await http.get("/kyc/00000000-0000-4000-8000-000000000001/result")
            malformed = await http.get("/kyc/not-an-id/result")
            missing = await http.get("/kyc/not-an-id")
            running = await http.get(f"/kyc/{execution_id}")
            waited = await http.get(f"/kyc/{execution_id}", params={"wait": 0.05})
            unsigned = await http.post("/transactionlink/webhooks", content=b"{}")
    assert not_yet.status_code == 409
    assert (unknown.status_code, malformed.status_code, missing.status_code) == (404, 404, 404)
    assert running.json()["status"] == "AWAITING"
    assert waited.json()["status"] in {"AWAITING", "COMPLETED"}
    assert unsigned.status_code == 401


def test_clients_made_outside_the_fixture_keep_the_usual_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without transactionlink_defaults, a client sleeps between retries."""
    monkeypatch.setenv("TRANSACTIONLINK_TOKEN", "tot_x_0123456789")
    assert TransactionLinkClient().retry_backoff is True
    assert TransactionLinkClient(retry_backoff=False).retry_backoff is False


async def test_explicit_settings_win_over_the_fixture(
    transactionlink_defaults: FakeTransactionLink,
) -> None:
    """A client given token, base_url and retry_backoff keeps them under the fixture."""
    client = TransactionLinkClient(
        "tot_mine_0123456789", base_url="https://api.example", retry_backoff=True
    )
    assert (client.base_url, client.retry_backoff) == ("https://api.example", True)
    fixture_made = TransactionLinkClient()
    assert (fixture_made.base_url, fixture_made.retry_backoff) == (
        transactionlink_defaults.url,
        False,
    )
