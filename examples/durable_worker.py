"""The arq worker that handles finished KYC executions, for examples/durable_app.py.

Run it with arq (needs the `arq` extra), as many processes as you like, on any machines
that share the Redis:

    TRANSACTIONLINK_TOKEN=tot_... REDIS_URL=redis://... arq examples.durable_worker.WorkerSettings

Each process builds one TransactionLinkClient at startup (token and base URL from the
environment). Polls are short jobs; a follow survives a restart of any worker, or all.
`kyc_finished` runs once per execution in normal operation, and again if its worker dies
while it runs (at least once): `outcome.key` is the same on every run, to de-duplicate.
"""

from __future__ import annotations

import asyncio
import json
import os
from typing import Any

from arq.connections import RedisSettings

from aiotlink.arq import Outcome, OutcomeKind, configure

REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
# Where the handler records what it did: a real one would write to its database.
OUTCOMES_FILE = os.environ.get("KYC_OUTCOMES_FILE", "kyc-outcomes.jsonl")


async def kyc_finished(ctx: dict[str, Any], outcome: Outcome) -> None:
    """Called with the outcome of every followed execution (``on_terminal="kyc_finished"``)."""
    record: dict[str, Any] = {"id": outcome.execution_id, "key": outcome.key}
    if outcome.kind is OutcomeKind.TERMINAL:
        assert outcome.execution is not None
        record["status"] = outcome.execution.status.value
        if outcome.result_path is not None:  # downloaded before this ran (download_to=)
            record["result_bytes"] = outcome.result_path.stat().st_size
    elif outcome.kind is OutcomeKind.TIMEOUT:
        record["status"] = "still running when the follow's timeout passed"
    else:
        record["status"] = f"could not be looked up: {outcome.error}"
    await asyncio.to_thread(_record, record)


def _record(record: dict[str, Any]) -> None:
    with open(OUTCOMES_FILE, "a", encoding="utf-8") as outcomes:
        outcomes.write(json.dumps(record) + "\n")


WorkerSettings = {
    **configure([kyc_finished]),
    "redis_settings": RedisSettings.from_dsn(REDIS_URL),
}
