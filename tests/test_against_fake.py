"""The client against the fake TransactionLink server: the four endpoints end to end."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from uuid import UUID

import pytest

from aiotlink import (
    AuthenticationError,
    NotFoundError,
    PermissionDeniedError,
    ServerError,
    TransactionLinkClient,
    WorkflowStatus,
)
from aiotlink.testing import FakeTransactionLink, GeneratedResult


@pytest.fixture
def client(transactionlink_client: TransactionLinkClient) -> TransactionLinkClient:
    """The plugin's client of the fake."""
    return transactionlink_client


async def test_background_execution_end_to_end(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """initialise, find until done, get_result: the body the fake answers fits the models."""
    fake = fake_transactionlink
    definition = fake.add_definition(
        statuses=["INITIALISED", "RUNNING", "COMPLETED"], result={"decision": "APPROVED"}
    )
    record_id = UUID("9f1e2d3c-4b5a-4678-9abc-def012345678")
    started = await client.workflows.initialise(
        definition, locale="fr", parameters={"n": 1}, record_id=record_id,
        expires_at=timedelta(hours=1),
    )  # fmt: skip
    assert started.status is WorkflowStatus.INITIALISED
    assert (started.locale, started.parameters, started.record_id) == ("fr", {"n": 1}, record_id)
    assert started.expires_at is not None
    assert not started.is_interactive
    assert started.origin.type == "API"
    assert (await client.workflows.find(started.id)).status is WorkflowStatus.RUNNING
    assert (await client.workflows.find(started.id)).status is WorkflowStatus.COMPLETED
    assert await client.workflows.get_result(started.id) == {"decision": "APPROVED"}
    (sent,) = fake.requests_for("initialise")
    assert sent.headers["Content-Type"] == "application/json;charset=UTF-8"


async def test_interactive_execution_has_link_and_token(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """An interactive definition's execution comes with its hosted link and token."""
    definition = fake_transactionlink.add_definition(statuses=["CREATED"], interactive=True)
    execution = await client.workflows.initialise(definition)
    assert execution.is_interactive
    assert execution.link is not None
    assert execution.token is not None


async def test_redirected_result_through_the_fakes_storage() -> None:
    """A result over the threshold is fetched from the fake's pre-signed storage."""
    async with FakeTransactionLink(redirect_threshold=1000) as fake:
        definition = fake.add_definition(statuses=["COMPLETED"], result=GeneratedResult(50_000))
        async with TransactionLinkClient(fake.token, base_url=fake.url) as own:
            execution = await own.workflows.initialise(definition)
            result = await own.workflows.get_result(execution.id)
        (stored,) = fake.requests_for("storage")
    assert isinstance(result, dict | list)
    assert "Authorization" not in stored.headers


async def test_cancel_then_cancel_again(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """cancel ends a running execution; cancelling it again is harmless."""
    definition = fake_transactionlink.add_definition(statuses=["RUNNING", "AWAITING"])
    execution = await client.workflows.initialise(definition)
    await client.workflows.cancel(execution.id)
    await client.workflows.cancel(execution.id)
    assert (await client.workflows.find(execution.id)).status is WorkflowStatus.CANCELLED


async def test_legacy_jwt_is_accepted(fake_transactionlink: FakeTransactionLink) -> None:
    """A legacy JWT works: the client sends it as Bearer."""
    fake = fake_transactionlink
    definition = fake.add_definition(statuses=["RUNNING"])
    async with TransactionLinkClient(fake.jwt, base_url=fake.url) as client:
        await client.workflows.initialise(definition)
    assert fake.requests_for("initialise")[0].headers["Authorization"] == f"Bearer {fake.jwt}"


async def test_auth_and_permission_errors(fake_transactionlink: FakeTransactionLink) -> None:
    """An unknown token is 401; a token without can_run is 403 on initialise."""
    fake = fake_transactionlink
    definition = fake.add_definition(statuses=["RUNNING"])
    async with TransactionLinkClient("tot_unknown", base_url=fake.url) as stranger:
        with pytest.raises(AuthenticationError) as refused:
            await stranger.workflows.initialise(definition)
    reader = fake.add_token(can_run=False)
    async with TransactionLinkClient(reader, base_url=fake.url) as limited:
        with pytest.raises(PermissionDeniedError) as forbidden:
            await limited.workflows.initialise(definition)
    for error in (refused.value, forbidden.value):
        assert error.fingerprint  # a fresh fingerprint on every error
        assert error.errors
    assert refused.value.fingerprint != forbidden.value.fingerprint


async def test_unknown_ids_and_results_not_ready(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """404 for an unknown execution, and for a result before COMPLETED."""
    with pytest.raises(NotFoundError):
        await client.workflows.find("00000000-0000-4000-8000-000000000000")
    definition = fake_transactionlink.add_definition(statuses=["RUNNING"])
    execution = await client.workflows.initialise(definition)
    with pytest.raises(NotFoundError):
        await client.workflows.get_result(execution.id)


async def test_retries_counted_at_the_fake(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """Two 503s then success: three finds reach the fake; initialise gets no retry."""
    fake = fake_transactionlink
    definition = fake.add_definition(statuses=["RUNNING"])
    execution = await client.workflows.initialise(definition)
    fake.fail_next("find", 503, times=2, body="html")
    await client.workflows.find(execution.id)
    assert len(fake.requests_for("find")) == 3
    fake.fail_next("initialise", 502)
    with pytest.raises(ServerError) as caught:
        await client.workflows.initialise(definition)
    assert caught.value.may_have_been_created
    assert len(fake.requests_for("initialise")) == 2  # the first call and this one


async def test_many_concurrent_calls_share_the_session(
    fake_transactionlink: FakeTransactionLink, client: TransactionLinkClient
) -> None:
    """A hundred concurrent finds through one client all succeed."""
    definition = fake_transactionlink.add_definition(statuses=["RUNNING"])
    execution = await client.workflows.initialise(definition)
    found = await asyncio.gather(*(client.workflows.find(execution.id) for _ in range(100)))
    assert {f.id for f in found} == {execution.id}
