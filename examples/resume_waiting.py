"""A batch script that starts executions, saves their ids, and resumes waiting later.

    python examples/resume_waiting.py start <definition-id> --count 20 --state ids.json
    python examples/resume_waiting.py resume --state ids.json

``start`` writes the ids as soon as each execution exists, so a crash or a restart
loses none; ``resume`` (run again as often as needed) waits for those not finished yet
and records their outcome in the same file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

from aiotlink import TransactionLinkClient, WaitTimeoutError, WorkflowExecution

BASE_URL = os.environ.get("TRANSACTIONLINK_BASE_URL", "https://api.transactionlink.io")


def load(state: Path) -> dict[str, Any]:
    return json.loads(state.read_text()) if state.exists() else {"executions": {}}


def save(state: Path, data: dict[str, Any]) -> None:
    # Write beside, then rename: the file is never seen half-written.
    partial = state.with_suffix(state.suffix + ".partial")
    partial.write_text(json.dumps(data, indent=2))
    partial.replace(state)


async def start(definition_id: str, count: int, state: Path) -> None:
    data = load(state)
    async with TransactionLinkClient(base_url=BASE_URL) as client:
        for number in range(count):
            execution = await client.workflows.initialise(definition_id, parameters={"n": number})
            data["executions"][execution.id] = {"status": execution.status.value, "done": False}
            save(state, data)
    print(f"started {count}; ids saved in {state}")


async def resume(state: Path, timeout: float, poll_interval: float) -> None:
    data = load(state)
    pending = [id_ for id_, entry in data["executions"].items() if not entry["done"]]
    print(f"resuming {len(pending)} of {len(data['executions'])}")
    async with TransactionLinkClient(base_url=BASE_URL) as client:
        # One iterator for the whole batch: no task per execution. Outcomes are recorded
        # as they come and saved at least once a second, so an interrupted resume loses
        # at most a second of them (and those are simply looked up again next time).
        last_saved = time.monotonic()
        async for outcome in client.workflows.as_completed(
            pending, timeout=timeout, poll_interval=poll_interval
        ):
            if isinstance(outcome, WorkflowExecution):
                entry = data["executions"][outcome.id]
                entry.update(status=outcome.status.value, done=True)
            elif isinstance(outcome, WaitTimeoutError):
                entry = data["executions"][outcome.execution_id]
                if outcome.execution is not None:  # still running: resume again later
                    entry["status"] = outcome.execution.status.value
            else:  # could not be looked up (deleted, no permission): say so, keep it
                data["executions"][outcome.execution_id]["error"] = str(outcome)
            if time.monotonic() - last_saved > 1:
                save(state, data)
                last_saved = time.monotonic()
    save(state, data)
    done = sum(entry["done"] for entry in data["executions"].values())
    print(f"{done} of {len(data['executions'])} finished")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    starting = commands.add_parser("start")
    starting.add_argument("definition")
    starting.add_argument("--count", type=int, default=20)
    starting.add_argument("--state", type=Path, default=Path("executions.json"))
    resuming = commands.add_parser("resume")
    resuming.add_argument("--state", type=Path, default=Path("executions.json"))
    resuming.add_argument("--timeout", type=float, default=600.0)
    resuming.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()
    if not os.environ.get("TRANSACTIONLINK_TOKEN"):
        parser.error("set TRANSACTIONLINK_TOKEN to your API token (tot_...)")
    if args.command == "start":
        asyncio.run(start(args.definition, args.count, args.state))
    else:
        asyncio.run(resume(args.state, args.timeout, args.poll_interval))
