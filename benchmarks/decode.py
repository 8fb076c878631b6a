"""Decoding one execution body into a typed object: aiotlink against pydantic and msgspec.

Per object, from a dict (already parsed JSON) and from the raw bytes, for aiotlink's
converter, pydantic v2 and msgspec models of the same schema, and a hand-written
function. All in one process, on one core, round-robin: many short rounds, each
starting with another way, so that a moment of noise on this shared machine spoils one
round's ratio rather than one side's figure. Medians over the rounds.

    python benchmarks/decode.py                  # 20 rounds of 5,000 decodes
    python benchmarks/decode.py --count 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import enum
import json
import os
import timeit
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import msgspec
import pydantic
from _common import rounded, spread
from pydantic.alias_generators import to_camel

from aiotlink import Origin, WorkflowExecution, WorkflowStatus
from aiotlink._converter import decode_execution
from aiotlink._transport import parse_json

BODY: dict[str, Any] = {
    "id": "7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10",
    "workspaceId": "0b7e4c52-1d3a-4f6b-8e9c-2a5d7f1b3c40",
    "workflowDefinitionId": "5e8a2b1c-7f3d-4a9e-b6c0-1d2e3f4a5b60",
    "parameters": {"customerId": "c-42"},
    "name": "KYC onboarding",
    "revision": "7",
    "status": "RUNNING",
    "locale": "en",
    "expiresAt": "2026-12-01T10:00:00.000Z",
    "uiOptions": {"theme": "dark"},
    "executionType": "BACKGROUND",
    "executionVersion": 3,
    "token": None,
    "link": None,
    "recordId": "9f1e2d3c-4b5a-4678-9abc-def012345678",
    "origin": {"type": "API", "apiKeyId": "k-1"},
}
RAW = json.dumps(BODY).encode()


class Status(enum.StrEnum):
    INITIALISED = "INITIALISED"
    CREATED = "CREATED"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    AWAITING = "AWAITING"
    FAILED = "FAILED"
    TIMEOUT = "TIMEOUT"
    TERMINATED = "TERMINATED"
    EXPIRED = "EXPIRED"
    CANCELLED = "CANCELLED"
    PAUSED = "PAUSED"


class PydanticOrigin(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(extra="allow", frozen=True)
    type: str


class PydanticExecution(pydantic.BaseModel):
    """The same schema as WorkflowExecution, frozen as ours is."""

    model_config = pydantic.ConfigDict(alias_generator=to_camel, frozen=True)
    id: str
    workspace_id: str
    workflow_definition_id: str
    parameters: dict[str, Any]
    name: str
    revision: str
    status: Status
    locale: str
    ui_options: dict[str, Any]
    execution_type: str
    execution_version: int | float
    origin: PydanticOrigin
    expires_at: datetime | None = None
    token: str | None = None
    link: str | None = None
    record_id: UUID | None = None


class MsgspecOrigin(msgspec.Struct, frozen=True):
    type: str


class MsgspecExecution(msgspec.Struct, frozen=True, rename="camel"):
    id: str
    workspace_id: str
    workflow_definition_id: str
    parameters: dict[str, Any]
    name: str
    revision: str
    status: Status
    locale: str
    ui_options: dict[str, Any]
    execution_type: str
    execution_version: int | float
    origin: MsgspecOrigin
    expires_at: datetime | None = None
    token: str | None = None
    link: str | None = None
    record_id: UUID | None = None


MSGSPEC_DECODER = msgspec.json.Decoder(MsgspecExecution)


def by_hand(body: dict[str, Any]) -> WorkflowExecution:
    """The same conversion written out, with the checks a careful person would write."""
    origin = dict(body["origin"])
    expires_at = body.get("expiresAt")
    record_id = body.get("recordId")
    return WorkflowExecution(
        id=body["id"],
        workspace_id=body["workspaceId"],
        workflow_definition_id=body["workflowDefinitionId"],
        parameters=body["parameters"],
        name=body["name"],
        revision=body["revision"],
        status=WorkflowStatus(body["status"]),
        locale=body["locale"],
        ui_options=body["uiOptions"],
        execution_type=body["executionType"],
        execution_version=body["executionVersion"],
        origin=Origin(type=origin.pop("type"), details=origin),
        expires_at=None
        if expires_at is None
        else datetime.fromisoformat(expires_at).astimezone(UTC),
        token=body.get("token"),
        link=body.get("link"),
        record_id=None if record_id is None else UUID(record_id),
    )


CASES: dict[str, Callable[[], object]] = {
    "aiotlink dict": lambda: decode_execution(BODY),
    "aiotlink bytes": lambda: decode_execution(parse_json(RAW)),
    "pydantic dict": lambda: PydanticExecution.model_validate(BODY),
    "pydantic bytes": lambda: PydanticExecution.model_validate_json(RAW),
    "msgspec dict": lambda: msgspec.convert(BODY, MsgspecExecution),
    "msgspec bytes": lambda: MSGSPEC_DECODER.decode(RAW),
    "by hand dict": lambda: by_hand(BODY),
    "by hand bytes": lambda: by_hand(json.loads(RAW)),
}


def run(count: int, rounds: int) -> dict[str, Any]:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(0, {1})  # one core: no migrations in the middle of a round
    for case in CASES.values():  # the same answer from every side, and warm caches
        case()
    timings: dict[str, list[float]] = {name: [] for name in CASES}
    names = list(CASES)
    for number in range(rounds):
        for name in names[number % len(names) :] + names[: number % len(names)]:
            timings[name].append(timeit.timeit(CASES[name], number=count) / count * 1e6)
    report: dict[str, Any] = {
        "count": count,
        "rounds": rounds,
        "microseconds": {name: spread(values) for name, values in timings.items()},
    }
    for kind in ("dict", "bytes"):
        ours, theirs = timings[f"aiotlink {kind}"], timings[f"pydantic {kind}"]
        ratios = [mine / pydantic for mine, pydantic in zip(ours, theirs, strict=True)]
        report[f"ratio_to_pydantic_{kind}"] = spread(ratios)
    report["targets"] = {
        f"at_most_1.5x_pydantic_{kind}": report[f"ratio_to_pydantic_{kind}"]["median"] <= 1.5
        for kind in ("dict", "bytes")
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=5_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    print(json.dumps(rounded(run(args.count, args.rounds)), indent=2))


if __name__ == "__main__":
    main()
