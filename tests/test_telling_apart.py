"""Errors that tell cases apart, one rule for ids, and messages that say what happened."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from aiotlink import (
    APIConnectionError,
    APITimeoutError,
    BadRequestError,
    ErrorCode,
    ExecutionType,
    NotFoundError,
    ResultNotReadyError,
    TransactionLinkClient,
    WorkflowStatus,
)
from aiotlink._converter import DecodeError, decode_execution
from aiotlink._transport import error_for_response
from aiotlink.testing import FakeTransactionLink

from .conftest import EXECUTION_ID, TOKEN, execution_body
from .servers import ScriptedServer, drop, reply, stall

RESULT = ("GET", f"/workflows/{EXECUTION_ID}/result")


async def test_no_result_yet_is_a_result_not_ready_error_and_still_a_not_found() -> None:
    """A result asked for before the end is ResultNotReadyError, caught as NotFoundError."""
    async with FakeTransactionLink() as fake:
        kyc = fake.add_definition(statuses=["RUNNING", "COMPLETED"])
        async with TransactionLinkClient(fake.token, base_url=fake.url) as client:
            execution = await client.workflows.initialise(kyc)
            with pytest.raises(NotFoundError) as caught:
                await client.workflows.get_result(execution.id)
            missing = "00000000-0000-4000-8000-000000000001"
            with pytest.raises(NotFoundError) as no_execution:
                await client.workflows.find(missing)
    assert type(caught.value) is ResultNotReadyError
    assert caught.value.code == ErrorCode.WORKFLOW_RESULT_NOT_FOUND
    assert not caught.value.unknown_route
    assert "base_url" not in str(caught.value)
    assert type(no_execution.value) is NotFoundError
    assert no_execution.value.code == ErrorCode.WORKFLOW_NOT_FOUND
    assert not no_execution.value.unknown_route
    assert "base_url" not in str(no_execution.value)


async def test_a_wrong_base_url_path_says_check_base_url() -> None:
    """A base URL with a path the API does not serve: the 404 says to check base_url."""
    async with FakeTransactionLink() as fake:
        kyc = fake.add_definition()
        async with TransactionLinkClient(fake.token, base_url=fake.url + "/v3") as client:
            with pytest.raises(NotFoundError) as caught:
                await client.workflows.initialise(kyc)
    assert type(caught.value) is NotFoundError
    assert caught.value.unknown_route
    assert caught.value.code == ErrorCode.NOT_FOUND
    assert "check base_url" in str(caught.value)


async def test_a_404_without_the_api_error_document_says_check_base_url(
    server: ScriptedServer,
) -> None:
    """A web server's plain 404 (no ErrorResponse body) is an unknown route."""
    server.script("GET", "/workflows/7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10", reply(404, text="nope"))
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(NotFoundError) as caught:
            await client.workflows.find("7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10")
    assert caught.value.unknown_route
    assert str(caught.value).endswith("-- no such endpoint at this URL: check base_url")


def test_a_storage_404_never_blames_base_url() -> None:
    """Storage is not the API: its 404 says nothing of base_url."""
    error = error_for_response(404, {}, b"", method="GET", url="https://s3/x", from_api=False)
    assert isinstance(error, NotFoundError)
    assert not error.unknown_route
    assert "base_url" not in str(error)


def test_error_codes_are_strings_that_compare_as_their_text() -> None:
    """ErrorCode members equal the codes as the API sends them; .code is the first one."""
    body = b'{"errors":[{"code":"WORKFLOW_ALREADY_FINISHED","message":"done"}]}'
    error = error_for_response(400, {}, body, method="POST", url="u")
    assert isinstance(error, BadRequestError)
    assert error.code == ErrorCode.WORKFLOW_ALREADY_FINISHED
    assert error.code == "WORKFLOW_ALREADY_FINISHED"
    assert error_for_response(400, {}, b"{}", method="POST", url="u").code is None


async def test_every_code_the_fake_sends_is_a_constant() -> None:
    """The fake's error answers carry only codes that ErrorCode names."""
    async with FakeTransactionLink() as fake:
        kyc = fake.add_definition(statuses=["RUNNING", "COMPLETED"])
        weak = fake.add_token(can_run=False)
        seen: set[str] = set()

        async def code_of(token: str, base_url: str, call: str, *arguments: Any) -> None:
            async with TransactionLinkClient(token, base_url=base_url, max_retries=0) as client:
                try:
                    await getattr(client.workflows, call)(*arguments)
                except NotFoundError as error:
                    seen.add(str(error.code))
                except BadRequestError as error:
                    seen.add(str(error.code))
                except Exception as error:  # 401, 403: APIError too
                    seen.add(str(getattr(error, "code", None)))

        async with TransactionLinkClient(fake.token, base_url=fake.url) as client:
            execution = await client.workflows.initialise(kyc)
            done = await client.workflows.initialise(kyc)
            await client.workflows.wait_for_completion(done.id, poll_interval=0.01)
        await code_of("tot_unknown_000000", fake.url, "initialise", kyc)
        await code_of(weak, fake.url, "initialise", kyc)
        await code_of(fake.token, fake.url, "initialise", "no-such-definition")
        await code_of(fake.token, fake.url, "find", "00000000-0000-4000-8000-000000000001")
        await code_of(fake.token, fake.url, "get_result", execution.id)
        await code_of(fake.token, fake.url, "cancel", done.id)
        await code_of(fake.token, fake.url + "/v3", "find", execution.id)
    assert len(seen) == 7, seen
    assert seen <= set(ErrorCode), seen - set(ErrorCode)


ID_TAKERS = [
    ("find", ()),
    ("cancel", ()),
    ("get_result", ()),
    ("download_result", ("result.json",)),
    ("wait_for_completion", ()),
]


@pytest.mark.parametrize("bad_id", ["not-a-uuid", "", "../x", "7d0c1a3e", 42, None])
@pytest.mark.parametrize(("call", "more"), ID_TAKERS)
async def test_one_rule_for_malformed_ids_in_every_method(
    server: ScriptedServer, tmp_path: Path, call: str, more: tuple[Any, ...], bad_id: Any
) -> None:
    """Every method that takes an execution id raises the same ValueError, before any request."""
    more = tuple(str(tmp_path / part) for part in more)
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        with pytest.raises(ValueError, match=r"^execution_id must be a UUID, got "):
            await getattr(client.workflows, call)(bad_id, *more)
        with pytest.raises(ValueError, match=r"^execution_id must be a UUID, got "):
            async for _ in client.workflows.watch(bad_id):
                pass
        with pytest.raises(ValueError, match=r"^execution_id must be a UUID, got "):
            async for _ in client.workflows.as_completed([bad_id]):
                pass
        with pytest.raises(ValueError, match=r"^execution_id must be a UUID, got "):
            client.workflows.nudge(bad_id)
    assert server.seen == []


async def test_ids_in_other_uuid_forms_are_sent_in_the_canonical_form(
    server: ScriptedServer,
) -> None:
    """An id in upper case, without hyphens or in braces goes out as lower 8-4-4-4-12."""
    canonical = "7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10"
    server.script("POST", f"/workflows/{canonical}/cancel", reply(200))
    async with TransactionLinkClient(TOKEN, base_url=server.url) as client:
        for written in (canonical.upper(), canonical.replace("-", ""), "{" + canonical + "}"):
            await client.workflows.cancel(written)
    assert len(server.requests_to("POST", f"/workflows/{canonical}/cancel")) == 3


def free_port() -> int:
    with contextlib.closing(socket.socket()) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_connection_error_says_how_many_attempts_over_how_long() -> None:
    """After the retries, APIConnectionError names the attempts made and the time taken."""
    base_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with TransactionLinkClient(
        TOKEN, base_url=base_url, max_retries=2, retry_backoff=False
    ) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.workflows.find("7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10")
    assert caught.value.attempts == 3
    assert caught.value.elapsed is not None
    assert caught.value.elapsed >= 0
    assert " (after 3 attempts over " in str(caught.value)


async def test_a_connection_lost_once_without_retries_says_one_attempt(
    server: ScriptedServer,
) -> None:
    """With max_retries=0 the message says one attempt."""
    server.script("GET", "/workflows/7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10", drop())
    async with TransactionLinkClient(TOKEN, base_url=server.url, max_retries=0) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.workflows.find("7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10")
    assert caught.value.attempts == 1
    assert "(after 1 attempt over " in str(caught.value)


async def test_a_timeout_names_its_limit(server: ScriptedServer) -> None:
    """APITimeoutError says which timeout ran out, and how many attempts it had."""
    server.script("GET", "/workflows/7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10", stall(5, reply(200)))
    async with TransactionLinkClient(
        TOKEN, base_url=server.url, timeout=0.2, max_retries=1, retry_backoff=False
    ) as client:
        with pytest.raises(APITimeoutError) as caught:
            await client.workflows.find("7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10")
    assert caught.value.timeout == 0.2
    assert "(timeout=0.2 s)" in str(caught.value)
    assert "after 2 attempts over" in str(caught.value)
    assert caught.value.elapsed is not None
    assert caught.value.elapsed >= 0.4


# --- types that tell values apart ----------------------------------------------------


async def test_execution_type_is_an_enum_and_the_fake_status_a_workflow_status() -> None:
    """executionType decodes to ExecutionType; fake.status_of gives a WorkflowStatus."""
    async with FakeTransactionLink() as fake:
        background = fake.add_definition(statuses=["RUNNING", "COMPLETED"])
        hosted = fake.add_definition(interactive=True)
        async with TransactionLinkClient(fake.token, base_url=fake.url) as client:
            first = await client.workflows.initialise(background)
            second = await client.workflows.initialise(hosted)
        status = fake.status_of(first.id)
    assert first.execution_type is ExecutionType.BACKGROUND
    assert second.execution_type is ExecutionType.INTERACTIVE
    assert first.execution_type == "BACKGROUND"  # still equal to its text
    assert status is WorkflowStatus.RUNNING
    assert status == "RUNNING"


def test_an_unknown_execution_type_still_decodes() -> None:
    """A value the client does not know is kept, as for statuses, and is_known is False."""
    execution = decode_execution(execution_body(executionType="SCHEDULED"))
    assert isinstance(execution.execution_type, ExecutionType)
    assert execution.execution_type == "SCHEDULED"
    assert not execution.execution_type.is_known
    assert decode_execution(execution_body()).execution_type.is_known
    with pytest.raises(DecodeError):
        decode_execution(execution_body(executionType=7))


async def test_a_download_short_on_every_attempt_says_how_many_attempts(
    server: ScriptedServer, storage: ScriptedServer, tmp_path: Path
) -> None:
    """Storage that always ends its body early: the error counts every attempt."""

    async def short(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(status=206, headers={"Content-Range": "bytes 0-999/1000"})
        response.enable_chunked_encoding()  # no Content-Length: the body just ends
        await response.prepare(request)
        await response.write(b"[" + b"1," * 200)
        await response.write_eof()
        return response

    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?X-Amz-Signature=ab"}))
    storage.script("GET", "/r.json", short)
    async with TransactionLinkClient(
        TOKEN, base_url=server.url, max_retries=2, retry_backoff=False
    ) as client:
        with pytest.raises(APIConnectionError) as caught:
            await client.workflows.download_result(EXECUTION_ID, tmp_path / "r.json")
    assert "got 401 of 1000 bytes" in str(caught.value)
    assert caught.value.attempts == 3
    assert " (after 3 attempts over " in str(caught.value)


async def test_a_storage_read_that_times_out_names_its_timeout(
    server: ScriptedServer, storage: ScriptedServer
) -> None:
    """Storage that stops sending mid-body: APITimeoutError names the per-read timeout."""

    async def stalls(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "1000"})
        await response.prepare(request)
        await response.write(b"[" + b"1," * 100)
        await asyncio.sleep(5)
        return response

    server.script(*RESULT, reply(200, {"$redirect": f"{storage.url}/r.json?X-Amz-Signature=ab"}))
    storage.script("GET", "/r.json", stalls)
    async with TransactionLinkClient(
        TOKEN, base_url=server.url, timeout=0.2, max_retries=0
    ) as client:
        with pytest.raises(APITimeoutError) as caught:
            async for _ in client.workflows.stream_result(EXECUTION_ID):
                pass
    assert caught.value.timeout == 0.2
    assert "(timeout=0.2 s)" in str(caught.value)
    assert "X-Amz-Signature=ab" not in str(caught.value)


async def test_every_code_the_fakes_storage_sends_is_a_constant() -> None:
    """The S3-style codes of the fake's storage (behind a $redirect) are ErrorCode members."""
    import re

    import aiohttp
    import yarl

    from aiotlink.testing import GeneratedResult

    async with (
        FakeTransactionLink(redirect_threshold=1000) as fake,
        TransactionLinkClient(fake.token, base_url=fake.url) as client,
    ):
        definition = fake.add_definition(statuses=["COMPLETED"], result=GeneratedResult(150_000))
        execution_id = (await client.workflows.initialise(definition)).id
        await client.workflows.wait_for_completion(execution_id, poll_interval=0.01)
        async with aiohttp.ClientSession() as session:
            async with session.get(
                f"{fake.url}/workflows/{execution_id}/result",
                headers={"Authorization": fake.token},
            ) as answer:
                url = (await answer.json())["$redirect"]
            path = url.partition("?")[0]
            tampered = url.replace("X-Amz-Signature=", "X-Amz-Signature=00", 1)
            attempts: list[tuple[str, dict[str, str]]] = [
                (path, {}),  # no signature
                (tampered, {}),  # a changed URL
                (url, {"Range": "bytes=999999999-"}),  # past the object's end
            ]
            codes: set[str] = set()
            for target, headers in attempts:
                async with session.get(yarl.URL(target, encoded=True), headers=headers) as answer:
                    found = re.search(r"<Code>([^<]+)</Code>", await answer.text())
                    assert found is not None, (answer.status, target)
                    codes.add(found.group(1))
    assert codes == {"AccessDenied", "SignatureDoesNotMatch", "InvalidRange"}
    assert codes <= set(ErrorCode)
    assert "NoSuchKey" in set(ErrorCode)  # the fake's answer for an object it lacks
