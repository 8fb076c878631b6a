"""Durable following of executions on arq and Redis: across worker processes and restarts.

In-process waits (``wait_for_completion``, ``as_completed``) live in one process's
memory; a deploy or a crash forgets them. Here every follow is state in Redis, due in a
sorted set, and short arq jobs (sweeps) claim what is due in batches, poll it and
schedule the next poll, so any worker of a fleet carries on where another stopped
(aiotlink/arq/_state.py). In the web process::

    from aiotlink.arq import follow
    await follow(arq_redis, execution.id, on_terminal="handle_kyc", timeout=86400)

In the worker module::

    async def handle_kyc(ctx, outcome: aiotlink.arq.Outcome) -> None: ...

    WorkerSettings = {**aiotlink.arq.configure([handle_kyc]), "redis_settings": ...}

Needs the ``arq`` extra: ``pip install "aiotlink[arq]"``. See README.md, "Durable
following".
"""

from __future__ import annotations

# Imported here to fail here, naming the extra, rather than deep in a submodule.
try:
    import arq as _arq
    import redis as _redis
except ImportError as _missing:  # pragma: no cover - tested in a subprocess without arq
    raise ImportError(
        'aiotlink.arq needs the "arq" extra: pip install "aiotlink[arq]"'
    ) from _missing

from ._follow import follow, nudge
from ._state import DEAD_LETTERS_KEY
from ._worker import Outcome, OutcomeKind, configure

del _arq, _redis  # checked above; the names stay out of the module

__all__ = ["DEAD_LETTERS_KEY", "Outcome", "OutcomeKind", "configure", "follow", "nudge"]
