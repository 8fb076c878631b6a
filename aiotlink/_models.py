"""Typed models of the Workflows API, free of any wire knowledge.

Wire names (camelCase) and value formats live in ``_converter.py``.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeAlias
from uuid import UUID

import attrs

if TYPE_CHECKING:
    # A default for the type parameter (PEP 696), for type checkers only: a bare
    # ``RunResult`` stays ``RunResult[Any]``, as it was before it had a parameter.
    # typing.TypeVar takes a default from Python 3.13 on.
    from typing_extensions import TypeVar

    Result = TypeVar("Result", default=Any)
else:
    from typing import TypeVar

    Result = TypeVar("Result")

# A decoded JSON value: what get_result returns (results are any JSON the workflow
# produced, most often an object).
JSONValue: TypeAlias = dict[str, "JSONValue"] | list["JSONValue"] | str | int | float | bool | None

# Our reading of the reference, which does not say (spec/README.md): these never change again.
_TERMINAL_VALUES = frozenset(
    {"COMPLETED", "FAILED", "TIMEOUT", "TERMINATED", "EXPIRED", "CANCELLED"}
)


class _OpenStrEnum(enum.StrEnum):
    """A ``str`` enum that takes values it does not know, rather than fail to decode.

    An unknown value becomes a member-like value whose ``.value`` is the raw text and
    whose ``is_known`` is False. Not cached: arbitrary server text cannot grow the class.
    """

    @classmethod
    def _missing_(cls, value: object) -> Any:
        if not isinstance(value, str) or not value:
            return None
        # A pseudo-member (as enum.Flag makes for combined values).
        unknown = str.__new__(cls, value)
        unknown._name_ = value
        unknown._value_ = value
        return unknown

    @property
    def is_known(self) -> bool:
        """Whether this is one of the documented values."""
        return self._name_ in type(self).__members__


class WorkflowStatus(_OpenStrEnum):
    """Status of a workflow execution.

    A value the client does not know yet still decodes: it becomes a member-like value
    whose ``.value`` is the raw text, ``is_known`` is False and ``is_terminal`` is False
    (so waiting goes on rather than ending on a status nobody can interpret).
    """

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

    @property
    def is_terminal(self) -> bool:
        """Whether the execution has ended and its status will not change again."""
        return self._value_ in _TERMINAL_VALUES


class ExecutionType(_OpenStrEnum):
    """How an execution runs: in the background, or on a hosted page (interactive).

    A ``str`` enum: it equals its text (``ExecutionType.BACKGROUND == "BACKGROUND"``).
    A value the client does not know still decodes, as for :class:`WorkflowStatus`
    (``is_known`` False).
    """

    BACKGROUND = "BACKGROUND"
    INTERACTIVE = "INTERACTIVE"


@attrs.frozen
class Origin:
    """Who started an execution.

    ``type`` is ``"API"``, ``"USER"`` or ``"WORKFLOW"`` (or a newer value, kept as sent);
    ``details`` holds every other field of the origin object as sent, since the
    reference does not define them.
    """

    type: str
    details: Mapping[str, Any] = attrs.field(factory=dict)


@attrs.frozen
class WorkflowExecution:
    """One run of a workflow definition, as the API last described it."""

    id: str
    workspace_id: str
    workflow_definition_id: str
    parameters: dict[str, Any]
    name: str
    revision: str
    status: WorkflowStatus
    locale: str
    ui_options: dict[str, Any]
    execution_type: ExecutionType
    execution_version: int | float
    origin: Origin
    expires_at: datetime | None = None
    # The execution token opens the hosted page for the end user: keep it out of logs.
    token: str | None = attrs.field(default=None, repr=False)
    link: str | None = None
    record_id: UUID | None = None

    @property
    def is_terminal(self) -> bool:
        """Whether the execution has ended (see :attr:`WorkflowStatus.is_terminal`)."""
        return self.status.is_terminal

    @property
    def is_interactive(self) -> bool:
        """Whether the execution runs on a hosted page (it has a ``link`` or a ``token``)."""
        return self.link is not None or self.token is not None


@attrs.frozen
class DownloadedResult:
    """A result written to disk.

    ``path`` is where it is, ``size`` its length in bytes, ``redirected`` whether it came
    from a ``$redirect`` to storage.
    """

    path: Path
    size: int
    redirected: bool


@attrs.frozen
class RunResult(Generic[Result]):
    """What ``client.workflows.run()`` returns.

    ``execution`` is the terminal execution, ``result`` its decoded JSON result
    (:data:`JSONValue`), or with ``download_to=`` the :class:`DownloadedResult`; ``None``
    when the execution did not complete and ``raise_on_failure=False``. Type checkers
    see which from ``run``'s arguments.
    """

    execution: WorkflowExecution
    result: Result


@attrs.frozen
class InitialiseRequest:
    """The body of ``POST /workflows``, already checked."""

    workflow_definition_id: str
    locale: str
    parameters: Mapping[str, Any]
    expires_at: datetime | None = None
    record_id: UUID | None = None


@attrs.frozen(eq=False)
class WebhookEvent:
    """A verified webhook delivery (``client.webhooks.verify``).

    ``payload`` is the signed JSON object as sent, every field kept. The provider does
    not publish its field names, so the rest is read leniently (README.md, "Webhooks"):
    ``execution_id`` is the first UUID among the payload's ``workflowExecutionId``,
    ``executionId``, ``workflowId`` and ``id``; ``status`` its ``status``; ``event_type``
    its ``eventType`` (else ``event``, else ``type``); each ``None`` when absent.
    ``key_id`` names the key that signed it. ``delivery_key`` is a digest of the signed
    body, the same on every redelivery of it: the receiver's key for de-duplication.
    """

    payload: dict[str, Any] = attrs.field(repr=False)  # it may hold personal data
    key_id: str
    execution_id: UUID | None
    status: WorkflowStatus | None
    event_type: str | None
    delivery_key: str
