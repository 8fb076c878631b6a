"""An arq worker module for the tests that run workers as processes.

``python -m arq tests.arq_worker.WorkerSettings``, with ``AIOTLINK_TEST_REDIS_PORT``,
``AIOTLINK_TEST_OUTCOMES`` (a file the handler appends a line to as it starts and
ends), ``TRANSACTIONLINK_TOKEN`` and ``TRANSACTIONLINK_BASE_URL`` in the environment.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from arq.connections import RedisSettings
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError, TimeoutError

from aiotlink.arq import Outcome, configure

OUTCOMES = os.environ.get("AIOTLINK_TEST_OUTCOMES", os.devnull)
HANDLER_SECONDS = float(os.environ.get("AIOTLINK_TEST_HANDLER_SECONDS", "0"))


def _append(line: str) -> None:
    # One write of a whole line to a file opened for appending: lines of several
    # processes never interleave, and a SIGKILL loses no line already written.
    descriptor = os.open(OUTCOMES, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)


async def handle(ctx: dict[str, Any], outcome: Outcome) -> None:
    status = "-" if outcome.execution is None else outcome.execution.status.value
    pid = os.getpid()
    _append(f"start {outcome.execution_id} {pid} {outcome.kind.value} {status} {outcome.key}\n")
    if HANDLER_SECONDS:
        await asyncio.sleep(HANDLER_SECONDS)
    _append(f"end {outcome.execution_id} {pid}\n")


WorkerSettings = {
    **configure([handle], timeout=2.0, max_retries=2, poll_timeout=5, handler_timeout=2),
    # A Redis restart is ridden out: commands are retried while it comes back.
    "redis_settings": RedisSettings(
        host="127.0.0.1",
        port=int(os.environ.get("AIOTLINK_TEST_REDIS_PORT", "6379")),
        conn_retries=50,
        conn_retry_delay=1,
        retry_on_error=[ConnectionError, TimeoutError],
        # OSError too: a refused connection while Redis restarts is no redis error.
        retry=Retry(
            ExponentialBackoff(cap=0.5, base=0.05),
            40,
            supported_errors=(ConnectionError, TimeoutError, OSError),
        ),
    ),
    "poll_delay": 0.05,
    "job_timeout": 5,
    "max_jobs": 500,
}
