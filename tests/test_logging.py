"""What the client logs on the "aiotlink" logger, at which level, and never a secret."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from unittest import mock
from urllib.parse import unquote

import pytest
from aiohttp import web

from aiotlink import (
    NotFoundError,
    TransactionLinkClient,
    WaitTimeoutError,
    WorkflowFailedError,
)
from aiotlink.testing import FakeTransactionLink, GeneratedResult

from .conftest import EXECUTION_ID, TOKEN, execution_body
from .servers import Handler, ScriptedServer, reply

LOGGER = "aiotlink"
LARGE_SIZE = 12_000_000  # over the fake's 9 MB redirect threshold: served from storage
FAST = {"poll_interval": 0.01, "max_poll_interval": 0.02}
# The line of one HTTP attempt (aiotlink/_transport.py, _log_attempt).
ATTEMPT = re.compile(
    r"(?P<method>[A-Z]+) (?P<route>\S+) -> (?P<outcome>\S+) in (?P<ms>\d+\.\d) ms "
    r"\(attempt (?P<attempt>\d+), (?P<url>\S+)\)"
)
# Query parameters of a pre-signed URL whose values are credentials.
SIGNED_PARAMETERS = ("X-Amz-Signature", "X-Amz-Credential")


def client_of(fake: FakeTransactionLink, *, max_retries: int = 3) -> TransactionLinkClient:
    """A client of the fake that retries without sleeping."""
    return TransactionLinkClient(
        fake.token, base_url=fake.url, max_retries=max_retries, retry_backoff=False
    )


def ours(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[logging.LogRecord]:
    """The records of the aiotlink logger, of ``level`` only if given."""
    return [
        record
        for record in caplog.records
        if record.name == LOGGER and (level is None or record.levelno == level)
    ]


def messages(caplog: pytest.LogCaptureFixture, level: int | None = None) -> list[str]:
    """The texts of the aiotlink logger's records, of ``level`` only if given."""
    return [record.getMessage() for record in ours(caplog, level)]


def attempts(caplog: pytest.LogCaptureFixture) -> list[re.Match[str]]:
    """The DEBUG lines of HTTP attempts, parsed."""
    found = (ATTEMPT.fullmatch(text) for text in messages(caplog, logging.DEBUG))
    return [match for match in found if match is not None]


def signature_values(fake: FakeTransactionLink) -> set[str]:
    """Every credential value of every pre-signed URL storage was asked for, in both spellings."""
    values: set[str] = set()
    for request in fake.requests_for("storage"):
        for piece in request.query.split("&"):
            key, _, value = piece.partition("=")
            if key in SIGNED_PARAMETERS and value:
                values.update({value, unquote(value)})
    return values


def texts_of(record: logging.LogRecord) -> Iterator[str]:
    """Every text a handler or a reader of ``record`` may see."""
    logging.Formatter().format(record)  # fills exc_text, as a handler would
    yield record.getMessage()
    yield str(record.msg)
    arguments = record.args
    if isinstance(arguments, dict):
        arguments = tuple(arguments.values())
    for argument in arguments or ():
        yield str(argument)
        yield repr(argument)
    if record.exc_text:
        yield record.exc_text


async def completed(client: TransactionLinkClient, definition: str) -> str:
    """The id of a new execution of ``definition``, waited for until it completed."""
    execution = await client.workflows.initialise(definition)
    await client.workflows.wait_for_completion(execution.id, timeout=30, **FAST)
    return execution.id


# --- DEBUG: one line per HTTP attempt ---------------------------------------


async def test_each_attempt_is_a_debug_line_with_route_status_time_attempt_and_url(
    fake_transactionlink: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    """Every attempt logs method, route template, status, ms, attempt number and URL."""
    fake = fake_transactionlink
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    definition = fake.add_definition("kyc")
    async with client_of(fake) as client:
        execution = await client.workflows.initialise(definition)
        fake.fail_next("find", 503, times=2)
        await client.workflows.find(execution.id)
    seen = [
        (match["method"], match["route"], match["outcome"], match["attempt"], match["url"])
        for match in attempts(caplog)
    ]
    find_url = f"{fake.url}/workflows/{execution.id}"
    assert seen == [
        ("POST", "/workflows", "200", "1", f"{fake.url}/workflows"),
        ("GET", "/workflows/{id}", "503", "1", find_url),
        ("GET", "/workflows/{id}", "503", "2", find_url),
        ("GET", "/workflows/{id}", "200", "3", find_url),
    ]
    assert all(float(match["ms"]) >= 0 for match in attempts(caplog))


async def test_an_attempt_without_an_answer_logs_the_error_type(
    fake_transactionlink: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    """An attempt that got no answer (a dropped connection) logs its error's type name."""
    fake = fake_transactionlink
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    definition = fake.add_definition("kyc")
    async with client_of(fake) as client:
        execution = await client.workflows.initialise(definition)
        caplog.clear()
        fake.drop_next("find", times=2)  # aiohttp may retry a dropped GET once itself
        await client.workflows.find(execution.id)
    outcomes = [(match["outcome"], int(match["attempt"])) for match in attempts(caplog)]
    assert outcomes[0] == ("APIConnectionError", 1)
    assert outcomes[-1] == ("200", len(outcomes))
    assert len(outcomes) >= 2


async def test_a_storage_attempt_logs_its_url_with_the_signature_masked(
    fake_transactionlink: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    """get_result's GETs of pre-signed storage are logged, attempt by attempt, URL masked."""
    fake = fake_transactionlink
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    definition = fake.add_definition("large", result=GeneratedResult(LARGE_SIZE))
    async with client_of(fake) as client:
        execution_id = await completed(client, definition)
        caplog.clear()
        fake.fail_next("storage", 503)
        await client.workflows.get_result(execution_id)
    seen = [(match["method"], match["outcome"], match["attempt"]) for match in attempts(caplog)]
    assert seen == [("GET", "200", "1"), ("GET", "503", "1"), ("GET", "200", "2")]
    result_line, *storage_lines = attempts(caplog)
    assert result_line["route"] == "/workflows/{id}/result"
    assert result_line["url"] == f"{fake.url}/workflows/{execution_id}/result"
    for line in storage_lines:
        assert line["url"].startswith(fake.storage_url)
        assert "X-Amz-Signature=***" in line["url"]
        assert "X-Amz-Credential=***" in line["url"]
    for secret in signature_values(fake):
        assert secret not in caplog.text


# --- DEBUG: status changes and download phases ------------------------------


async def test_each_status_change_of_a_wait_is_one_debug_line(
    fake_transactionlink: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    """A wait logs "execution <id> is <STATUS>" once per change, not once per poll."""
    fake = fake_transactionlink
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    walk = ["INITIALISED", "RUNNING", "AWAITING", "COMPLETED"]
    definition = fake.add_definition("kyc", statuses=walk, step_seconds=0.1)
    async with client_of(fake) as client:
        execution = await client.workflows.initialise(definition)
        caplog.clear()
        await client.workflows.wait_for_completion(execution.id, timeout=30, **FAST)
    prefix = f"execution {execution.id} is "
    changes = [text.removeprefix(prefix) for text in messages(caplog, logging.DEBUG)]
    changes = [status for status in changes if status in walk]
    assert changes[-1] == "COMPLETED"
    assert changes == sorted(set(changes), key=walk.index)  # in order, each once
    # More polls than changes: an unchanged poll logs no status line.
    assert len(fake.requests_for("find")) > len(changes)


async def test_a_download_logs_each_phase_at_debug(
    fake_transactionlink: FakeTransactionLink,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """download_result logs its start, the storage redirect, storage's status, commit, done."""
    fake = fake_transactionlink
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    definition = fake.add_definition("large", result=GeneratedResult(LARGE_SIZE))
    destination = tmp_path / "result.json"
    async with client_of(fake) as client:
        execution_id = await completed(client, definition)
        caplog.clear()
        await client.workflows.download_result(execution_id, destination)
    lines = messages(caplog, logging.DEBUG)

    def first(condition: str, pattern: str) -> int:
        for index, text in enumerate(lines):
            if re.search(pattern, text):
                return index
        raise AssertionError(f"no DEBUG line for {condition} in {lines}")

    result_url = re.escape(f"{fake.url}/workflows/{execution_id}/result")
    storage = re.escape(fake.storage_url) + r"\S*X-Amz-Signature=\*\*\*"
    path = re.escape(str(destination))
    phases = [
        first("the start", rf"download\w* .*{result_url}"),
        first("the redirect", rf"storage.*{storage}"),
        first("storage's status", rf"^GET storage -> 200 in [\d.]+ ms \(attempt 1, {storage}"),
        first("the commit", rf"^(?!.*{path}).*\b{LARGE_SIZE} bytes"),
        first("the end", rf"{path}.*\b{LARGE_SIZE}\b"),
    ]
    assert phases == sorted(phases)
    assert len(set(phases)) == len(phases)


# --- INFO: initialise, cancel, the end of a wait ----------------------------


async def test_initialise_cancel_and_the_end_of_each_wait_are_logged_at_info(
    fake_transactionlink: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    """INFO says when an execution starts, is cancelled, and a wait completes, fails, times out."""
    fake = fake_transactionlink
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    ok = fake.add_definition("kyc", statuses=["INITIALISED", "RUNNING", "COMPLETED"])
    failing = fake.add_definition("failing", statuses=["INITIALISED", "RUNNING", "FAILED"])
    stuck = fake.add_definition("stuck", statuses=["INITIALISED", "RUNNING"])
    async with client_of(fake) as client:
        workflows = client.workflows

        caplog.clear()
        started = await workflows.initialise(ok)
        (line,) = messages(caplog, logging.INFO)
        assert started.id in line
        assert ok in line

        caplog.clear()
        await workflows.wait_for_completion(started.id, **FAST)
        (line,) = messages(caplog, logging.INFO)
        assert started.id in line
        assert "COMPLETED" in line

        doomed = await workflows.initialise(failing)
        caplog.clear()
        with pytest.raises(WorkflowFailedError):
            await workflows.wait_for_completion(doomed.id, **FAST)
        (line,) = messages(caplog, logging.INFO)
        assert doomed.id in line
        assert "FAILED" in line

        slow = await workflows.initialise(stuck)
        caplog.clear()
        with pytest.raises(WaitTimeoutError):
            await workflows.wait_for_completion(slow.id, timeout=0.1, **FAST)
        (line,) = messages(caplog, logging.INFO)
        assert slow.id in line
        assert "0.1 s" in line  # says it was the wait's own deadline

        caplog.clear()
        await workflows.cancel(slow.id)
        (line,) = messages(caplog, logging.INFO)
        assert slow.id in line
        assert "cancel" in line
    assert fake.status_of(slow.id) == "CANCELLED"


# --- WARNING: retries and skipped polls -------------------------------------


async def test_each_retry_is_a_warning_with_the_request_and_the_reason(
    fake_transactionlink: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    """Each retry logs a WARNING naming the method, URL, attempt and the failure."""
    fake = fake_transactionlink
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    definition = fake.add_definition("kyc")
    async with client_of(fake) as client:
        fake.fail_next("initialise", 429, retry_after=1)
        execution = await client.workflows.initialise(definition)
        fake.fail_next("find", 503, times=2)
        await client.workflows.find(execution.id)
    warnings = messages(caplog, logging.WARNING)
    assert len(warnings) == 3
    rate_limited, *unavailable = warnings
    assert f"POST {fake.url}/workflows " in rate_limited
    assert "429" in rate_limited
    for number, text in enumerate(unavailable, start=1):
        assert f"GET {fake.url}/workflows/{execution.id} " in text
        assert "503" in text
        assert f"attempt {number} " in text


async def test_a_skipped_poll_is_a_warning_and_the_wait_goes_on(
    fake_transactionlink: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    """A poll that fails transiently after the retries logs a WARNING; the wait completes."""
    fake = fake_transactionlink
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    definition = fake.add_definition("kyc")
    async with client_of(fake, max_retries=0) as client:
        execution = await client.workflows.initialise(definition)
        fake.fail_next("find", 503)
        done = await client.workflows.wait_for_completion(execution.id, timeout=30, **FAST)
    assert done.status == "COMPLETED"
    (warning,) = messages(caplog, logging.WARNING)
    assert execution.id in warning
    assert "503" in warning


# --- never a secret ---------------------------------------------------------


async def test_a_whole_flow_with_faults_logs_every_kind_of_line_and_no_secret(
    fake_transactionlink: FakeTransactionLink,
    caplog: pytest.LogCaptureFixture,
    tmp_path: Path,
) -> None:
    """No record's text, format, arguments or traceback holds a token or a signature."""
    fake = fake_transactionlink
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    walk = ["INITIALISED", "RUNNING", "AWAITING", "COMPLETED"]
    kyc = fake.add_definition("kyc", statuses=walk)
    large = fake.add_definition("large", result=GeneratedResult(LARGE_SIZE))
    failing = fake.add_definition("failing", statuses=["INITIALISED", "RUNNING", "FAILED"])
    hosted = fake.add_definition("hosted", statuses=["INITIALISED", "AWAITING"], interactive=True)
    async with (
        client_of(fake) as client,
        TransactionLinkClient(fake.jwt, base_url=fake.url, retry_backoff=False) as legacy,
    ):
        workflows = client.workflows
        fake.fail_next("initialise", 429, retry_after=1)
        started = await workflows.initialise(kyc, parameters={"customerId": "c-42"})
        fake.fail_next("find", 503, body="html")
        fake.drop_next("find", times=2)  # aiohttp may retry a dropped GET once itself
        await workflows.find(started.id)
        # Polls that fail after all their retries are skipped; the wait goes on.
        fake.fail_next("find", 503, times=2 * (client.max_retries + 1))
        await workflows.wait_for_completion(started.id, timeout=30, **FAST)
        assert await workflows.get_result(started.id) == {
            "executionId": started.id,
            "workflowDefinitionId": kyc,
            "parameters": {"customerId": "c-42"},
        }

        big = await workflows.run(large, timeout=60, **FAST)
        fake.fail_next("storage", 503, body="xml")
        fake.fail_next("result", 429, retry_after=1)
        result = await workflows.get_result(big.execution.id)
        assert len(result["data"]) > LARGE_SIZE // 2
        fake.fail_next("storage", 403)  # a refused URL: the download asks for a fresh one
        fake.drop_next("storage", after_bytes=2_000_000)  # then resumes with Range
        downloaded = await workflows.download_result(big.execution.id, tmp_path / "large.json")
        assert downloaded.size == LARGE_SIZE
        assert downloaded.redirected

        with pytest.raises(WorkflowFailedError) as failed:
            await workflows.run(failing, timeout=30, **FAST)
        interactive = await legacy.workflows.initialise(hosted)
        assert interactive.token is not None
        with pytest.raises(WaitTimeoutError):
            await legacy.workflows.wait_for_completion(interactive.id, timeout=0.1, **FAST)
        fake.fail_next("cancel", 503)
        await legacy.workflows.cancel(interactive.id)
        with pytest.raises(NotFoundError):
            await workflows.find("00000000-0000-4000-8000-000000000000")
        with pytest.raises(NotFoundError):
            await workflows.get_result(interactive.id)

    signatures = signature_values(fake)
    # run, get_result (503, then 200), download (403, dropped, resumed).
    assert len(fake.requests_for("storage")) >= 6
    secrets = {fake.token, fake.jwt, interactive.token, *signatures}
    records = ours(caplog)
    leaks = [
        (record.levelname, record.getMessage())
        for record in caplog.records
        for text in texts_of(record)
        for secret in secrets
        if secret in text
    ]
    assert leaks == []

    # Every kind of line of the contract came at least once.
    storage = re.escape(fake.storage_url) + r"\S*X-Amz-Signature=\*\*\*"
    result_url = re.escape(f"{fake.url}/workflows/{big.execution.id}/result")
    path = re.escape(str(downloaded.path))
    expected = {
        "DEBUG: an attempt answered": (logging.DEBUG, r" -> \d{3} in [\d.]+ ms \(attempt 1, "),
        "DEBUG: a retried attempt": (logging.DEBUG, r" -> \d{3} in [\d.]+ ms \(attempt [2-9], "),
        "DEBUG: an attempt without answer": (logging.DEBUG, r" -> [A-Za-z]+Error in "),
        "DEBUG: a status change": (
            logging.DEBUG,
            rf"^execution {started.id} is (AWAITING|COMPLETED)$",
        ),
        "DEBUG: a download's start": (logging.DEBUG, rf"download\w* .*{result_url}"),
        "DEBUG: a download's redirect": (logging.DEBUG, rf"storage.*{storage}"),
        "DEBUG: storage's status": (logging.DEBUG, rf"^GET storage -> 2\d\d in .*{storage}"),
        "DEBUG: a download's commit": (logging.DEBUG, rf"^(?!.*{path}).*\b{LARGE_SIZE} bytes"),
        "DEBUG: a download's end": (logging.DEBUG, rf"{path}.*\b{LARGE_SIZE}\b"),
        "INFO: initialise": (logging.INFO, rf"{started.id}.*{kyc}"),
        "INFO: cancel": (logging.INFO, rf"cancel.*{interactive.id}"),
        "INFO: a wait completed": (logging.INFO, rf"{started.id}.*COMPLETED"),
        "INFO: a wait failed": (logging.INFO, rf"{failed.value.execution.id}.*FAILED"),
        "INFO: a wait timed out": (logging.INFO, rf"{interactive.id}.*0\.1 s"),
        "WARNING: a retry": (logging.WARNING, r"retr.*HTTP 429"),
        "WARNING: a skipped poll": (logging.WARNING, rf"^(?!retr).*{started.id}.*503"),
    }
    missing = [
        name
        for name, (level, pattern) in expected.items()
        if not any(
            record.levelno == level and re.search(pattern, record.getMessage())
            for record in records
        )
    ]
    assert missing == []


def echoing(status: int) -> Handler:
    """An error answer that echoes the request's Authorization, as some proxies do."""

    async def handler(request: web.Request) -> web.StreamResponse:
        credential = request.headers.get("Authorization", "")
        if status != 404:
            return web.Response(status=status, text=f"<html><pre>{credential}</pre></html>")
        # An error document that spells the token in JSON escapes: it decodes to the token.
        escaped = "".join(f"\\u{ord(char):04x}" for char in credential)
        text = '{"errors": [{"code": "ECHO", "message": "' + escaped + '"}]}'
        assert json.loads(text)["errors"][0]["message"] == credential
        return web.Response(status=status, text=text)

    return handler


async def test_an_error_body_that_echoes_the_token_leaves_no_trace_in_the_logs(
    server: ScriptedServer, client: TransactionLinkClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Skipped polls, retries and failed waits log errors whose echoed token is masked."""
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    other = "0b7e4c52-1d3a-4f6b-8e9c-2a5d7f1b3c40"
    server.script("GET", f"/workflows/{EXECUTION_ID}", echoing(503), echoing(502))
    server.script(
        "GET", f"/workflows/{EXECUTION_ID}", reply(200, execution_body(status="COMPLETED"))
    )
    server.script("GET", f"/workflows/{other}", echoing(404))
    without_retries = client.with_options(max_retries=0)
    done = await without_retries.workflows.wait_for_completion(EXECUTION_ID, timeout=30, **FAST)
    assert done.status == "COMPLETED"
    with pytest.raises(NotFoundError):
        await client.workflows.wait_for_completion(other, timeout=30, **FAST)
    assert len(messages(caplog, logging.WARNING)) == 2  # the two skipped polls
    assert any(other in text for text in messages(caplog, logging.INFO))  # the failed wait
    leaks = [
        record.getMessage()
        for record in caplog.records
        for text in texts_of(record)
        if TOKEN in text or TOKEN.removeprefix("tot_") in text
    ]
    assert leaks == []


async def test_at_warning_an_api_call_does_no_debug_logging_work(
    fake_transactionlink: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    """With the aiotlink logger at WARNING, an attempt does not even call logger.debug."""
    fake = fake_transactionlink
    definition = fake.add_definition("kyc", statuses=["INITIALISED", "RUNNING"])
    logger = logging.getLogger(LOGGER)
    async with client_of(fake) as client:
        execution = await client.workflows.initialise(definition)
        with mock.patch.object(logger, "debug", wraps=logger.debug) as debug:
            caplog.set_level(logging.DEBUG, logger=LOGGER)
            await client.workflows.find(execution.id)
            assert debug.call_count == 1  # the spy sees the attempt's line when it is wanted
            debug.reset_mock()
            caplog.set_level(logging.WARNING, logger=LOGGER)
            for _ in range(5):
                await client.workflows.find(execution.id)
            assert debug.call_count == 0


async def test_the_end_of_a_watch_is_logged_at_info(
    fake_transactionlink: FakeTransactionLink, caplog: pytest.LogCaptureFixture
) -> None:
    """watch() logs how it ended: the terminal status, or giving up at its timeout."""
    fake = fake_transactionlink
    caplog.set_level(logging.INFO, logger=LOGGER)
    done = fake.add_definition("done", statuses=["RUNNING", "COMPLETED"])
    stuck = fake.add_definition("stuck", statuses=["RUNNING"])
    async with client_of(fake) as client:
        finished = (await client.workflows.initialise(done)).id
        seen = [e.status async for e in client.workflows.watch(finished, **FAST)]
        waiting = (await client.workflows.initialise(stuck)).id
        with pytest.raises(WaitTimeoutError):
            async for _ in client.workflows.watch(waiting, timeout=0.1, **FAST):
                pass
    assert seen[-1] == "COMPLETED"
    lines = messages(caplog, logging.INFO)
    assert f"execution {finished} ended COMPLETED" in lines
    assert any(line.startswith(f"gave up waiting for execution {waiting}") for line in lines)
