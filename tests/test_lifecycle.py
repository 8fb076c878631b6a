"""The client's lifecycle: closing ends every wait, settings from the environment, checks first."""

from __future__ import annotations

import asyncio
import json
import math
import os
import traceback
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

import aiotlink
from aiotlink import (
    ClientClosedError,
    TransactionLinkClient,
    TransactionLinkError,
    WorkflowExecution,
)
from aiotlink._cli import main
from aiotlink._client import BASE_URL_ENV_VAR, DEFAULT_BASE_URL, TOKEN_ENV_VAR
from aiotlink.testing import FakeTransactionLink

from .conftest import EXECUTION_ID, TOKEN
from .servers import ScriptedServer, eventually

PACKAGE = Path(aiotlink.__file__).parent
# A poll interval that wakes nothing within a test: only closing can end these waits.
SLOW = {"poll_interval": 30.0}
WALK = ["INITIALISED", "RUNNING", "AWAITING", "COMPLETED"]
MISSING = "00000000-0000-4000-8000-000000000000"


def client_of(
    fake: FakeTransactionLink, session: aiohttp.ClientSession | None = None
) -> TransactionLinkClient:
    """A client of the fake that retries without sleeping."""
    return TransactionLinkClient(
        fake.token, base_url=fake.url, retry_backoff=False, session=session
    )


@pytest.fixture(params=["own-session", "callers-session"])
async def caller_session(
    request: pytest.FixtureRequest,
) -> AsyncIterator[aiohttp.ClientSession | None]:
    """None (the client opens its own session), or a caller's session that close() leaves open."""
    if request.param == "own-session":
        yield None
        return
    async with aiohttp.ClientSession() as session:
        yield session


def client_tasks() -> list[asyncio.Task[Any]]:
    """The pending tasks that run the client's code (the fake's own are not counted)."""
    found = []
    for task in asyncio.all_tasks():
        if task is asyncio.current_task() or task.done():
            continue
        code = getattr(task.get_coro(), "cr_code", None)
        where = Path(code.co_filename) if code is not None else Path()
        if where.is_relative_to(PACKAGE) and not where.is_relative_to(PACKAGE / "testing"):
            found.append(task)
    return found


async def no_new_finds(fake: FakeTransactionLink, seen: int) -> None:
    """Fail if a find reaches the fake past ``seen`` within 100 short loop turns (~0.1 s)."""
    for _ in range(100):
        await asyncio.sleep(0.001)
        assert len(fake.requests_for("find")) == seen, "a find was sent after close()"


def polls_of(fake: FakeTransactionLink, execution_id: str) -> int:
    """How many finds of ``execution_id`` the fake has seen."""
    return len([r for r in fake.requests_for("find") if r.path.endswith(execution_id)])


async def outcome_at_once(awaitable: Awaitable[Any]) -> BaseException | None:
    """The error ``awaitable`` ends with within a few loop iterations; fails if it goes on."""
    task = asyncio.ensure_future(awaitable)
    for _ in range(10):
        if task.done():
            break
        await asyncio.sleep(0)
    if not task.done():
        task.cancel()
        raise AssertionError("the call did not end at once")
    return task.exception()


async def first_of_watch(client: TransactionLinkClient, execution_id: str) -> WorkflowExecution:
    """The first execution ``watch`` yields."""
    watching = client.workflows.watch(execution_id, **SLOW)
    try:
        return await anext(watching)
    finally:
        await watching.aclose()


async def ended(tasks: dict[str, asyncio.Future[Any]]) -> dict[str, BaseException | None]:
    """What each task ended with, all within 2 s."""
    async with asyncio.timeout(2):
        outcomes = await asyncio.gather(*tasks.values(), return_exceptions=True)
    return {
        name: outcome if isinstance(outcome, BaseException) else None
        for name, outcome in zip(tasks, outcomes, strict=True)
    }


# --- closing ends every wait ------------------------------------------------


def test_client_closed_error_is_one_of_the_clients_errors() -> None:
    """ClientClosedError is a TransactionLinkError, not a RuntimeError."""
    assert issubclass(ClientClosedError, TransactionLinkError)
    assert not issubclass(ClientClosedError, RuntimeError)


async def test_closing_the_client_ends_every_pending_wait_at_once(
    fake_transactionlink: FakeTransactionLink,
    caller_session: aiohttp.ClientSession | None,
) -> None:
    """Waits of every kind raise ClientClosedError within 2 s; nothing polls afterwards."""
    fake = fake_transactionlink
    definition = fake.add_definition("kyc", statuses=WALK)
    stuck = fake.add_definition("stuck", statuses=["INITIALISED", "RUNNING"])
    client = client_of(fake, caller_session)
    try:
        workflows = client.workflows
        ids = [(await workflows.initialise(definition)).id for _ in range(6)]
        busy = (await workflows.initialise(stuck)).id
        statuses: list[str] = []
        watched = asyncio.Event()

        async def async_on_status(execution: WorkflowExecution) -> None:
            statuses.append(execution.status.value)

        async def watching(execution_id: str) -> None:
            async for _ in workflows.watch(execution_id, **SLOW):
                watched.set()

        wait = workflows.wait_for_completion
        tasks: dict[str, asyncio.Future[Any]] = {
            "no timeout": asyncio.ensure_future(wait(ids[0], **SLOW)),
            "timeout": asyncio.ensure_future(wait(ids[1], timeout=600, **SLOW)),
            "on_status": asyncio.ensure_future(
                wait(ids[2], on_status=lambda e: statuses.append(e.status.value), **SLOW)
            ),
            "async on_status, timeout": asyncio.ensure_future(
                wait(ids[3], timeout=600, on_status=async_on_status, **SLOW)
            ),
            "watch": asyncio.ensure_future(watching(ids[4])),
            "shared id, first": asyncio.ensure_future(wait(ids[5], **SLOW)),
            "shared id, second": asyncio.ensure_future(wait(ids[5], timeout=600, **SLOW)),
            "run": asyncio.ensure_future(workflows.run(definition, timeout=600, **SLOW)),
            # Polled often: a close that left its timer armed would show a find at once.
            "polled often": asyncio.ensure_future(
                wait(busy, poll_interval=0.005, max_poll_interval=0.005)
            ),
        }
        # Every wait has had its first lookup (one per id, the shared one once), and a
        # poll of the busy one is due every few milliseconds.
        await eventually(lambda: len(statuses) == 2 and watched.is_set())
        await eventually(lambda: len({r.path for r in fake.requests_for("find")}) == 8)
        await eventually(lambda: polls_of(fake, busy) >= 3)
        assert not any(task.done() for task in tasks.values())

        await client.close()
        outcomes = await ended(tasks)
    finally:
        await client.close()
    assert {name: type(error) for name, error in outcomes.items()} == dict.fromkeys(
        tasks, ClientClosedError
    )
    await eventually(lambda: client_tasks() == [], timeout=2)
    await no_new_finds(fake, len(fake.requests_for("find")))


async def test_closing_ends_a_wait_whose_poll_is_in_flight(
    fake_transactionlink: FakeTransactionLink,
    caller_session: aiohttp.ClientSession | None,
) -> None:
    """A wait whose lookup is still unanswered ends at close; its request is dropped."""
    fake = fake_transactionlink
    definition = fake.add_definition("kyc", statuses=WALK)
    client = client_of(fake, caller_session)
    try:
        execution = await client.workflows.initialise(definition)
        fake.slow_next("find", 30)
        waiting = asyncio.ensure_future(client.workflows.wait_for_completion(execution.id))
        await eventually(lambda: len(fake.requests_for("find")) == 1)
        await client.close()
        outcome = await ended({"waiting": waiting})
    finally:
        await client.close()
    assert isinstance(outcome["waiting"], ClientClosedError)
    await eventually(lambda: client_tasks() == [], timeout=2)
    await no_new_finds(fake, 1)


async def test_waits_still_queued_for_their_turn_end_at_close_too(
    fake_transactionlink: FakeTransactionLink,
) -> None:
    """Of 3,000 waits started together, those admitted and those still queued all end."""
    fake = fake_transactionlink
    definition = fake.add_definition("kyc", statuses=WALK)
    client = client_of(fake)
    try:
        workflows = client.workflows
        ids = [(await workflows.initialise(definition)).id for _ in range(3)]
        everything = asyncio.gather(
            *(workflows.wait_for_completion(ids[n % 3], **SLOW) for n in range(3000)),
            return_exceptions=True,
        )
        # Close once some waits are in and others still wait for their turn
        # (Poller.admission lets 1,000 in per loop iteration).
        queued = workflows._poller._queued
        for _ in range(20):
            await asyncio.sleep(0)
            if 0 < len(queued) < 3000:
                break
        assert 0 < len(queued) < 3000
        await client.close()
        async with asyncio.timeout(2):
            outcomes = await everything
    finally:
        await client.close()
    assert {type(outcome) for outcome in outcomes} == {ClientClosedError}
    await eventually(lambda: client_tasks() == [], timeout=2)
    # Their first lookups were held until all were in: none was ever sent.
    await no_new_finds(fake, 0)


def calls(
    client: TransactionLinkClient, execution_id: str, definition: str, tmp_path: Path
) -> dict[str, Callable[[], Awaitable[Any]]]:
    """Every call of the client, on ``execution_id`` (or ``definition``)."""
    workflows = client.workflows
    return {
        "initialise": lambda: workflows.initialise(definition),
        "find": lambda: workflows.find(execution_id),
        "cancel": lambda: workflows.cancel(execution_id),
        "get_result": lambda: workflows.get_result(execution_id),
        "download_result": lambda: workflows.download_result(execution_id, tmp_path / "r.json"),
        "wait_for_completion": lambda: workflows.wait_for_completion(execution_id, **SLOW),
        "watch": lambda: first_of_watch(client, execution_id),
        "run": lambda: workflows.run(definition, **SLOW),
    }


@pytest.mark.parametrize("used", [True, False], ids=["used", "never-used"])
async def test_every_call_after_close_raises_client_closed_at_once_without_a_request(
    fake_transactionlink: FakeTransactionLink, tmp_path: Path, used: bool
) -> None:
    """After close, each call raises ClientClosedError at once, sending nothing."""
    fake = fake_transactionlink
    definition = fake.add_definition("kyc", statuses=["INITIALISED", "COMPLETED"])
    async with client_of(fake) as helper:
        execution = await helper.workflows.initialise(definition)
    client = client_of(fake)
    if used:  # its session open, its poll loops made
        await client.workflows.wait_for_completion(execution.id, poll_interval=0.01)
    await client.close()
    requests = len(fake.requests)
    for name, call in calls(client, execution.id, definition, tmp_path).items():
        error = await outcome_at_once(call())
        assert isinstance(error, ClientClosedError), (name, error)
    assert len(fake.requests) == requests
    assert os.listdir(tmp_path) == []  # no file, not even a temporary one


async def test_close_is_safe_to_repeat(fake_transactionlink: FakeTransactionLink) -> None:
    """Closing a closed client again does nothing and raises nothing."""
    client = client_of(fake_transactionlink)
    await client.close()
    await client.close()
    async with client:
        pass
    assert isinstance(await outcome_at_once(client.workflows.find(MISSING)), ClientClosedError)


# --- views share the lifecycle ----------------------------------------------


async def test_closing_the_original_ends_the_waits_of_its_views(
    fake_transactionlink: FakeTransactionLink, tmp_path: Path
) -> None:
    """Waits through with_options views end with ClientClosedError when the client closes."""
    fake = fake_transactionlink
    definition = fake.add_definition("kyc", statuses=WALK)
    client = client_of(fake)
    try:
        view = client.with_options(timeout=5, max_retries=1)
        other = client.with_options(retry_backoff=True)
        ids = [(await view.workflows.initialise(definition)).id for _ in range(3)]
        seen: list[str] = []
        tasks: dict[str, asyncio.Future[Any]] = {
            "view": asyncio.ensure_future(view.workflows.wait_for_completion(ids[0], **SLOW)),
            "view, on_status": asyncio.ensure_future(
                view.workflows.wait_for_completion(
                    ids[1], timeout=600, on_status=lambda e: seen.append(e.status.value), **SLOW
                )
            ),
            "another view": asyncio.ensure_future(
                other.workflows.wait_for_completion(ids[2], **SLOW)
            ),
            "the client": asyncio.ensure_future(client.workflows.wait_for_completion(ids[2])),
        }
        await eventually(lambda: seen != [] and len(fake.requests_for("find")) >= 4)
        await client.close()
        outcomes = await ended(tasks)
    finally:
        await client.close()
    assert {name: type(error) for name, error in outcomes.items()} == dict.fromkeys(
        tasks, ClientClosedError
    )
    for name, call in calls(view, ids[0], definition, tmp_path).items():
        error = await outcome_at_once(call())
        assert isinstance(error, ClientClosedError), (name, error)
    await eventually(lambda: client_tasks() == [], timeout=2)
    await no_new_finds(fake, len(fake.requests_for("find")))


async def test_closing_a_view_leaves_the_client_and_its_waits_alone(
    fake_transactionlink: FakeTransactionLink,
) -> None:
    """A view's close() does nothing: the client and waits through the view go on."""
    fake = fake_transactionlink
    definition = fake.add_definition("kyc", statuses=WALK, step_seconds=0.1)
    async with client_of(fake) as client:
        view = client.with_options(max_retries=1)
        execution = await client.workflows.initialise(definition)
        waiting = asyncio.ensure_future(
            view.workflows.wait_for_completion(execution.id, poll_interval=0.01)
        )
        await eventually(lambda: len(fake.requests_for("find")) >= 1)
        await view.close()
        assert not waiting.done()
        async with asyncio.timeout(5):
            done = await waiting
        assert done.status == "COMPLETED"
        assert (await view.workflows.find(execution.id)).status == "COMPLETED"
        assert (await client.workflows.find(execution.id)).status == "COMPLETED"


# --- TRANSACTIONLINK_BASE_URL -----------------------------------------------


def test_base_url_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without base_url, TRANSACTIONLINK_BASE_URL is used (without its trailing slash)."""
    monkeypatch.setenv(BASE_URL_ENV_VAR, "https://eu.api.example.test/")
    assert TransactionLinkClient(TOKEN).base_url == "https://eu.api.example.test"


@pytest.mark.parametrize("value", [None, ""], ids=["unset", "empty"])
def test_base_url_falls_back_to_the_production_api(
    monkeypatch: pytest.MonkeyPatch, value: str | None
) -> None:
    """With TRANSACTIONLINK_BASE_URL unset or empty the client uses the production API."""
    if value is None:
        monkeypatch.delenv(BASE_URL_ENV_VAR, raising=False)
    else:
        monkeypatch.setenv(BASE_URL_ENV_VAR, value)
    assert DEFAULT_BASE_URL == "https://api.transactionlink.io"
    assert TransactionLinkClient(TOKEN).base_url == DEFAULT_BASE_URL


@pytest.mark.parametrize("environment", ["https://other.example.test", "not a url"])
def test_an_explicit_base_url_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch, environment: str
) -> None:
    """base_url= is used whatever TRANSACTIONLINK_BASE_URL says, even a malformed value."""
    monkeypatch.setenv(BASE_URL_ENV_VAR, environment)
    client = TransactionLinkClient(TOKEN, base_url="http://127.0.0.1:9")
    assert client.base_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    "value",
    [
        "not a url",
        "api.transactionlink.io",
        "ftp://api.example.test",
        "http://",
        "http://[::1",
        "https://api.example.test/?region=eu",
        "https://api.example.test/#top",
    ],
)
def test_a_malformed_base_url_in_the_environment_is_a_value_error(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A TRANSACTIONLINK_BASE_URL that is no http(s) base URL raises ValueError."""
    monkeypatch.setenv(BASE_URL_ENV_VAR, value)
    with pytest.raises(ValueError, match="base_url|" + BASE_URL_ENV_VAR):
        TransactionLinkClient(TOKEN)


async def test_the_client_calls_the_api_named_by_the_environment(
    fake_transactionlink: FakeTransactionLink, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests go to the TRANSACTIONLINK_BASE_URL of the environment."""
    fake = fake_transactionlink
    definition = fake.add_definition("kyc")
    monkeypatch.setenv(BASE_URL_ENV_VAR, fake.url)
    async with TransactionLinkClient(fake.token) as client:
        execution = await client.workflows.initialise(definition)
    assert client.base_url == fake.url
    assert [request.path for request in fake.requests_for("initialise")] == ["/workflows"]
    assert execution.workflow_definition_id == definition


async def test_the_demo_runs_against_the_api_named_by_the_environment(
    fake_transactionlink: FakeTransactionLink,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With the token and TRANSACTIONLINK_BASE_URL set, the demo runs against that API."""
    fake = fake_transactionlink
    definition = fake.add_definition("kyc", statuses=["INITIALISED", "RUNNING", "COMPLETED"])
    monkeypatch.setenv(TOKEN_ENV_VAR, fake.token)
    monkeypatch.setenv(BASE_URL_ENV_VAR, fake.url)
    arguments = ["demo", "--definition", definition, "--poll-interval", "0.05", "--timeout", "60"]
    # The demo runs its own event loop (asyncio.run): in a thread, while this loop serves.
    assert await asyncio.to_thread(main, arguments) == 0
    output = capsys.readouterr()
    assert fake.url in output.out.splitlines()[0]
    assert "COMPLETED" in output.out
    assert fake.token not in output.out + output.err
    (initialise,) = fake.requests_for("initialise")
    assert json.loads(initialise.body)["workflowDefinitionId"] == definition


# --- arguments checked before any request -----------------------------------

NOT_FINITE: list[Any] = [math.inf, -math.inf, math.nan, 10**400]


@pytest.mark.parametrize("value", NOT_FINITE, ids=["inf", "-inf", "nan", "10**400"])
def test_the_clients_timeout_must_be_finite(server: ScriptedServer, value: Any) -> None:
    """timeout=inf, nan or 10**400 raises ValueError naming timeout, for a client or a view."""
    with pytest.raises(ValueError, match=r"^timeout\b"):
        TransactionLinkClient(TOKEN, base_url=server.url, timeout=value)
    client = TransactionLinkClient(TOKEN, base_url=server.url)
    with pytest.raises(ValueError, match=r"^timeout\b"):
        client.with_options(timeout=value)
    assert server.seen == []


async def start_waiting(method: str, client: TransactionLinkClient, **arguments: Any) -> None:
    """Start ``method`` (wait_for_completion, watch or run) with ``arguments``."""
    workflows = client.workflows
    if method == "watch":
        async for _ in workflows.watch(EXECUTION_ID, **arguments):
            break
    elif method == "run":
        await workflows.run("kyc-basic", **arguments)
    else:
        await workflows.wait_for_completion(EXECUTION_ID, **arguments)


@pytest.mark.parametrize("method", ["wait_for_completion", "watch", "run"])
@pytest.mark.parametrize(
    "argument", ["timeout", "poll_interval", "max_poll_interval", "poll_factor"]
)
@pytest.mark.parametrize("value", NOT_FINITE, ids=["inf", "-inf", "nan", "10**400"])
async def test_wait_arguments_must_be_finite(
    server: ScriptedServer,
    client: TransactionLinkClient,
    method: str,
    argument: str,
    value: Any,
) -> None:
    """A wait's timeout, intervals and factor refuse inf, nan and 10**400, naming the argument."""
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        await start_waiting(method, client, **{argument: value})
    assert server.seen == []


TOKEN_HEAD = "tot_Secret0123456789"
TOKEN_TAIL = "Tail9876543210abcdef"


@pytest.mark.parametrize(
    "inner",
    ["\x0b", "\x7f", "\x00", "é", " ", "\t", "\n"],
    ids=["vertical-tab", "delete", "nul", "non-ascii", "space", "tab", "newline"],
)
@pytest.mark.parametrize("source", ["argument", "environment"])
def test_a_token_with_a_character_a_header_cannot_carry_is_refused_unechoed(
    server: ScriptedServer, monkeypatch: pytest.MonkeyPatch, inner: str, source: str
) -> None:
    """A token with control, non-ASCII or blank characters: ValueError that never shows it."""
    token = TOKEN_HEAD + inner + TOKEN_TAIL
    if source == "environment":
        monkeypatch.setenv(TOKEN_ENV_VAR, token.replace("\x00", "\x01"))
        token = token.replace("\x00", "\x01")  # an environment cannot hold a NUL
        passed = None
    else:
        passed = token
    with pytest.raises(ValueError, match="token") as caught:
        TransactionLinkClient(passed, base_url=server.url)
    shown = "".join(traceback.format_exception(caught.value)) + repr(caught.value)
    for part in (token, TOKEN_HEAD, TOKEN_TAIL, repr(token)[1:-1]):
        assert part not in shown
    assert server.seen == []


async def test_a_session_with_auth_is_refused(server: ScriptedServer) -> None:
    """A caller's session with auth= raises ValueError that says so, before any request."""
    with warnings.catch_warnings():
        # aiohttp 3.14 deprecates BasicAuth; callers' sessions may still carry one.
        warnings.simplefilter("ignore", DeprecationWarning)
        session = aiohttp.ClientSession(auth=aiohttp.BasicAuth("u", "p"))
    try:
        with pytest.raises(ValueError, match="auth"):
            TransactionLinkClient(TOKEN, base_url=server.url, session=session)
    finally:
        await session.close()
    assert server.seen == []


@pytest.mark.parametrize("value", [0, True, False, -1, 2.5, "4096"])
def test_max_response_bytes_must_be_a_positive_whole_number(
    server: ScriptedServer, value: Any
) -> None:
    """max_response_bytes=0, True, a negative, a float or a string raises ValueError."""
    with pytest.raises(ValueError, match="max_response_bytes"):
        TransactionLinkClient(TOKEN, base_url=server.url, max_response_bytes=value)
    assert server.seen == []
