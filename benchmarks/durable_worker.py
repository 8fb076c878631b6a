"""The arq worker of benchmarks/durable.py: its handler appends one line per outcome.

``python -m arq durable_worker.WorkerSettings`` (from benchmarks/), with
``BENCH_REDIS_PORT``, ``BENCH_OUTCOMES``, ``TRANSACTIONLINK_TOKEN`` and
``TRANSACTIONLINK_BASE_URL`` in the environment.
"""

from __future__ import annotations

import os
import time
from typing import Any

from arq.connections import RedisSettings

from aiotlink.arq import Outcome, configure

OUTCOMES = os.environ.get("BENCH_OUTCOMES", os.devnull)


async def finished(ctx: dict[str, Any], outcome: Outcome) -> None:
    status = "-" if outcome.execution is None else outcome.execution.status.value
    line = f"{time.time():.6f} {outcome.execution_id} {status}\n".encode()
    # One write of a whole line in append mode: the workers' lines never interleave.
    descriptor = os.open(OUTCOMES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line)
    finally:
        os.close(descriptor)


WorkerSettings = {
    **configure([finished], connection_limit=100),
    "redis_settings": RedisSettings(
        host="127.0.0.1", port=int(os.environ.get("BENCH_REDIS_PORT", "6379"))
    ),
    # A few sweeps at a time: each runs up to aiotlink.arq._state.BATCH lookups at once,
    # more than the client's connections (connection_limit) can serve (benchmarks/NOTES.md).
    "max_jobs": int(os.environ.get("BENCH_MAX_JOBS", "8")),
    "poll_delay": float(os.environ.get("BENCH_POLL_DELAY", "0.05")),
    "job_timeout": 60,
}
