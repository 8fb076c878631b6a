"""Callbacks users hand in: a plain function or a coroutine function, both welcome."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

from ._models import WorkflowExecution

OnStatus = Callable[[WorkflowExecution], Awaitable[None] | None]
OnProgress = Callable[[int, int | None], Awaitable[None] | None]


async def notify(callback: Callable[..., Awaitable[None] | None] | None, *arguments: Any) -> None:
    """Call ``callback(*arguments)`` if there is one, awaiting what it returns if needed."""
    if callback is not None:
        outcome = callback(*arguments)
        if inspect.isawaitable(outcome):
            await outcome
