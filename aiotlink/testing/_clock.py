"""Time as the fake sees it: a wall clock that tests may replace."""

from __future__ import annotations

import time
from collections.abc import Callable

Clock = Callable[[], float]
"""A function returning the current time in seconds since the Unix epoch (UTC)."""


class ManualClock:
    """A clock that moves only when a test tells it to.

    Pass it as ``FakeTransactionLink(clock=ManualClock())`` to drive time-based
    status steps, ``expiresAt`` and pre-signed URL expiry without sleeping.
    """

    def __init__(self, start: float | None = None) -> None:
        """Start at ``start`` (seconds since the epoch), or at the current wall time."""
        self.now = time.time() if start is None else start
        self._listeners: list[Callable[[], None]] = []

    def __call__(self) -> float:
        """Return the current time of this clock, in seconds since the epoch."""
        return self.now

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds``; a negative value raises ``ValueError``."""
        if seconds < 0:
            raise ValueError("a ManualClock only moves forward")
        self.now += seconds
        for listener in tuple(self._listeners):
            listener()

    def subscribe(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` after every ``advance``.

        A started fake listens, so the webhooks of the time steps and expiries that
        an advance passes are sent at once: no wall-clock timer can see this clock
        move. (Setting ``now`` directly is not announced; the fake then notices at
        its next request or ``webhooks_settled``.)
        """
        self._listeners.append(listener)

    def unsubscribe(self, listener: Callable[[], None]) -> None:
        """Stop calling ``listener``; one that was not subscribed is ignored."""
        if listener in self._listeners:
            self._listeners.remove(listener)

    def __repr__(self) -> str:
        return f"ManualClock(now={self.now!r})"
