"""The fake against workflows.openapi.json: every field, status and status code."""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest

from aiotlink.testing import FakeTransactionLink, ManualClock

from .helpers import SCHEMAS, SPEC, auth, error_of, find, initialise

_ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6})?Z")

# Where the reference is loose: recordId is nullable in find but not in the
# initialise schemas, and expiresAt is "if set" without being marked nullable.
_NULLABLE_ANYWHERE = {"$.recordId", "$.expiresAt"}


def check_schema(value: Any, schema: dict[str, Any], where: str = "$") -> None:
    """Check ``value`` against the small part of OpenAPI 3.0 the reference uses."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[1]
        if name not in SCHEMAS:  # ApiOriginDto & co. are never defined
            return
        schema = SCHEMAS[name]
    if value is None:
        assert schema.get("nullable") or where in _NULLABLE_ANYWHERE, f"{where} is null"
        return
    kind = schema.get("type")
    if kind == "object" or "properties" in schema:
        assert isinstance(value, dict), where
        for field in schema.get("required", []):
            assert field in value, f"{where}.{field} is missing"
        for field, field_schema in schema.get("properties", {}).items():
            if field in value:
                check_schema(value[field], field_schema, f"{where}.{field}")
    elif kind == "array":
        assert isinstance(value, list), where
        for index, item in enumerate(value):
            check_schema(item, schema["items"], f"{where}[{index}]")
    elif kind == "number":
        assert isinstance(value, int | float), where
        assert not isinstance(value, bool), where
    elif kind == "uuid" or schema.get("format") == "uuid":
        assert isinstance(value, str), where
        assert str(uuid.UUID(value)) == value, where
    elif kind == "string":
        assert isinstance(value, str), where
        if schema.get("format") == "date-time":
            assert _ISO_UTC.fullmatch(value), f"{where} = {value!r}"
        if schema.get("format") == "uri":
            assert value.startswith("http://"), where
    else:  # a type the reference does not use
        raise AssertionError(f"{where}: unchecked schema {schema}")
    if "enum" in schema:
        assert value in schema["enum"], where


def all_fields(schema_name: str) -> set[str]:
    """Every property of a schema of the reference."""
    return set(SCHEMAS[schema_name]["properties"])


def add_uuid_definition(fake: FakeTransactionLink, **options: Any) -> str:
    """Add a definition with a UUID id, as the reference's ids are."""
    return fake.add_definition(str(uuid.uuid4()), **options)


async def test_background_initialise_fits_the_background_schema(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """A background initialise answers every field of the background schema, link and token null."""
    definition_id = add_uuid_definition(fake)
    expires_at = datetime.fromtimestamp(clock.now, UTC) + timedelta(hours=2)
    record_id = str(uuid.uuid4())
    body = await initialise(
        session, fake, definition_id, expiresAt=expires_at.isoformat(), recordId=record_id
    )
    check_schema(body, SCHEMAS["InitialiseWorkflowBackgroundResponse"])
    assert all_fields("InitialiseWorkflowBackgroundResponse") <= set(body)
    assert body["link"] is None
    assert body["token"] is None
    assert body["executionType"] == "BACKGROUND"
    assert body["recordId"] == record_id
    assert body["expiresAt"] == expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    assert body["origin"]["type"] == "API"
    assert body["workflowDefinitionId"] == definition_id


async def test_interactive_initialise_fits_the_interactive_schema(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """An interactive initialise answers every field of its schema, with a link and a token."""
    definition_id = add_uuid_definition(fake, interactive=True)
    body = await initialise(session, fake, definition_id)
    check_schema(body, SCHEMAS["InitialiseWorkflowInteractiveResponse"])
    assert all_fields("InitialiseWorkflowInteractiveResponse") <= set(body)
    assert isinstance(body["link"], str)
    assert body["link"].startswith(fake.url + "/")
    assert isinstance(body["token"], str)
    assert body["token"]
    assert body["executionType"] == "INTERACTIVE"


async def test_find_fits_the_find_schema_with_every_field(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, clock: ManualClock
) -> None:
    """Find answers every property of FindWorkflowResponse, the nullable ones set and unset."""
    definition_id = add_uuid_definition(fake, interactive=True)
    expires_at = datetime.fromtimestamp(clock.now, UTC) + timedelta(days=2, microseconds=1500)
    set_body = await initialise(
        session,
        fake,
        definition_id,
        expiresAt=expires_at.isoformat(),
        recordId=str(uuid.uuid4()),
        parameters={"person": {"name": "Ada"}},
        locale="fr",
    )
    found = await find(session, fake, set_body["id"])
    check_schema(found, SCHEMAS["FindWorkflowResponse"])
    assert all_fields("FindWorkflowResponse") <= set(found)
    assert found["expiresAt"].endswith(".001500Z")
    assert found["parameters"] == {"person": {"name": "Ada"}}
    assert found["locale"] == "fr"
    assert found["workspaceId"] == fake.workspace_id

    plain = await initialise(session, fake, add_uuid_definition(fake))
    found = await find(session, fake, plain["id"])
    check_schema(found, SCHEMAS["FindWorkflowResponse"])
    assert all_fields("FindWorkflowResponse") <= set(found)
    assert (found["expiresAt"], found["recordId"], found["token"], found["link"]) == (
        None,
        None,
        None,
        None,
    )


async def test_success_bodies_have_the_spec_content_type(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Initialise, find and result answer application/json;charset=UTF-8; cancel answers empty."""
    definition_id = add_uuid_definition(fake, statuses=["RUNNING", "COMPLETED"])
    async with session.post(
        f"{fake.url}/workflows",
        json={"workflowDefinitionId": definition_id, "locale": "en", "parameters": {}},
        headers=auth(fake.token),
    ) as response:
        assert response.headers["Content-Type"] == "application/json;charset=UTF-8"
        execution_id = (await response.json())["id"]
    async with session.get(
        f"{fake.url}/workflows/{execution_id}", headers=auth(fake.token)
    ) as response:
        assert response.headers["Content-Type"] == "application/json;charset=UTF-8"
    async with session.get(
        f"{fake.url}/workflows/{execution_id}/result", headers=auth(fake.token)
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/json;charset=UTF-8"
    other = await initialise(session, fake, definition_id)
    async with session.post(
        f"{fake.url}/workflows/{other['id']}/cancel", headers=auth(fake.token)
    ) as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "0"
        assert "Content-Type" not in response.headers
        assert await response.read() == b""


async def test_every_status_of_the_enum_is_shown(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Each of the eleven statuses of the reference's enum appears in some find answer."""
    walks = [
        ["INITIALISED", "CREATED", "RUNNING", "AWAITING", "PAUSED", "COMPLETED"],
        ["RUNNING", "FAILED"],
        ["RUNNING", "TIMEOUT"],
        ["RUNNING", "TERMINATED"],
    ]
    seen: set[str] = set()
    for walk in walks:
        execution = await initialise(session, fake, add_uuid_definition(fake, statuses=walk))
        seen.add(execution["status"])
        for _ in walk:
            seen.add((await find(session, fake, execution["id"]))["status"])
    endless = add_uuid_definition(fake, statuses=["RUNNING"])
    expiring = await initialise(session, fake, endless)
    fake.expire(expiring["id"])
    seen.add((await find(session, fake, expiring["id"]))["status"])
    cancelled = await initialise(session, fake, endless)
    async with session.post(
        f"{fake.url}/workflows/{cancelled['id']}/cancel", headers=auth(fake.token)
    ):
        pass
    seen.add((await find(session, fake, cancelled["id"]))["status"])
    assert seen == set(SCHEMAS["FindWorkflowResponse"]["properties"]["status"]["enum"])


async def test_redirect_fits_the_redirect_schema(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """A result over the threshold answers exactly one $redirect key holding a URI."""
    from aiotlink.testing import GeneratedResult

    definition_id = add_uuid_definition(
        fake, statuses=["COMPLETED"], result=GeneratedResult(10_001)
    )
    execution = await initialise(session, fake, definition_id)
    async with session.get(
        f"{fake.url}/workflows/{execution['id']}/result", headers=auth(fake.token)
    ) as response:
        body = await response.json()
    redirect_schema = SPEC["paths"]["/workflows/{workflowId}/result"]["get"]["responses"]["200"]
    schema = redirect_schema["content"]["application/json;charset=UTF-8"]["schema"]["oneOf"][1]
    check_schema(body, schema)
    assert set(body) == {"$redirect"}


async def _provoke(
    fake: FakeTransactionLink,
    session: aiohttp.ClientSession,
    operation: str,
    status: int,
) -> aiohttp.ClientResponse:
    """Make the fake answer ``status`` on ``operation``, naturally where it has a reason."""
    running = fake.add_definition(statuses=["RUNNING"])
    execution_id = (await initialise(session, fake, running))["id"]
    viewer_only = fake.add_token(can_run=False)
    runner_only = fake.add_token(can_view_workspace=False)
    finished = fake.add_definition(statuses=["FAILED"])
    failed_id = (await initialise(session, fake, finished))["id"]
    good = {"workflowDefinitionId": running, "locale": "en", "parameters": {}}
    calls: dict[str, Callable[[str, str, dict[str, Any]], Awaitable[aiohttp.ClientResponse]]] = {
        "initialise": lambda _id, token, body: session.post(
            f"{fake.url}/workflows", json=body, headers=auth(token)
        ),
        "find": lambda target, token, _body: session.get(
            f"{fake.url}/workflows/{target}", headers=auth(token)
        ),
        "cancel": lambda target, token, _body: session.post(
            f"{fake.url}/workflows/{target}/cancel", headers=auth(token)
        ),
        "result": lambda target, token, _body: session.get(
            f"{fake.url}/workflows/{target}/result", headers=auth(token)
        ),
    }
    call = calls[operation]
    unknown = str(uuid.uuid4())
    natural: dict[tuple[str, int], tuple[str, str, dict[str, Any]]] = {
        ("initialise", 400): (execution_id, fake.token, {**good, "locale": None}),
        ("initialise", 401): (execution_id, "tot_unknown", good),
        ("initialise", 403): (execution_id, viewer_only, good),
        ("initialise", 404): (execution_id, fake.token, {**good, "workflowDefinitionId": "nope"}),
        ("find", 401): (execution_id, "", good),
        ("find", 403): (execution_id, runner_only, good),
        ("find", 404): (unknown, fake.token, good),
        ("cancel", 400): (failed_id, fake.token, good),
        ("cancel", 401): (execution_id, f"Bearer {fake.token}", good),
        ("cancel", 403): (execution_id, runner_only, good),
        ("cancel", 404): (unknown, fake.token, good),
        ("result", 400): ("not-a-uuid", fake.token, good),
        ("result", 401): (execution_id, fake.jwt, good),
        ("result", 403): (execution_id, runner_only, good),
        ("result", 404): (execution_id, fake.token, good),
    }
    arguments = natural.get((operation, status))
    if arguments is None:
        fake.fail_next(operation, status)
        arguments = (execution_id, fake.token, good)
    return await call(*arguments)


_OPERATIONS = {
    ("/workflows", "post"): "initialise",
    ("/workflows/{workflowId}", "get"): "find",
    ("/workflows/{workflowId}/cancel", "post"): "cancel",
    ("/workflows/{workflowId}/result", "get"): "result",
}
_ERROR_CASES = [
    (_OPERATIONS[path, method], int(code))
    for path, methods in SPEC["paths"].items()
    for method, operation in methods.items()
    for code in operation["responses"]
    if int(code) >= 400
]


def test_the_spec_lists_twenty_error_answers() -> None:
    """The reference lists 400, 401, 403, 404 and 500 on each of the four operations."""
    assert len(_ERROR_CASES) == 20
    assert {code for _, code in _ERROR_CASES} == {400, 401, 403, 404, 500}


@pytest.mark.parametrize(("operation", "status"), _ERROR_CASES)
async def test_every_error_of_the_spec_has_an_error_response(
    fake: FakeTransactionLink, session: aiohttp.ClientSession, operation: str, status: int
) -> None:
    """Every error status the reference lists is produced with an ErrorResponse body."""
    async with await _provoke(fake, session, operation, status) as response:
        assert response.status == status
        check_schema(await error_of(response), SCHEMAS["ErrorResponse"])


async def test_fingerprints_are_fresh_per_error(
    fake: FakeTransactionLink, session: aiohttp.ClientSession
) -> None:
    """Two identical errors carry different fingerprints."""
    fingerprints = set()
    for _ in range(2):
        async with session.get(f"{fake.url}/workflows/nope", headers=auth(fake.token)) as response:
            fingerprints.add((await error_of(response))["fingerprint"])
    assert len(fingerprints) == 2
