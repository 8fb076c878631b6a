"""Start many executions from a bounded pool of workers, then follow them all; sum up.

    TRANSACTIONLINK_TOKEN=tot_... python examples/worker_pool.py <definition-id> ... \
        [--count 1000] [--concurrency 50]

The workers only start executions (at most ``--concurrency`` requests at once); one
``as_completed`` then follows every execution, without a task per execution, and each
outcome is counted as it comes. Definitions given are used in turn.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import os
import time

from aiotlink import (
    TransactionLinkClient,
    TransactionLinkError,
    WaitTimeoutError,
    WorkflowExecution,
)

BASE_URL = os.environ.get("TRANSACTIONLINK_BASE_URL", "https://api.transactionlink.io")


async def starter(
    client: TransactionLinkClient,
    jobs: asyncio.Queue[tuple[int, str]],
    started: list[str],
    outcomes: collections.Counter[str],
) -> None:
    while True:
        number, definition_id = await jobs.get()
        try:
            execution = await client.workflows.initialise(definition_id, parameters={"job": number})
            started.append(execution.id)
        except TransactionLinkError as error:
            outcomes[f"not started: {type(error).__name__}"] += 1
        except Exception as error:  # a bug must not kill the worker and stall the pool
            outcomes[f"unexpected: {type(error).__name__}"] += 1
        finally:
            jobs.task_done()


async def main(definitions: list[str], count: int, concurrency: int, poll_interval: float) -> None:
    jobs: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for number, definition_id in zip(range(count), itertools.cycle(definitions), strict=False):
        jobs.put_nowait((number, definition_id))
    outcomes: collections.Counter[str] = collections.Counter()
    began = time.monotonic()
    async with TransactionLinkClient(base_url=BASE_URL) as client:
        started: list[str] = []
        workers = [
            asyncio.create_task(starter(client, jobs, started, outcomes))
            for _ in range(concurrency)
        ]
        await jobs.join()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
        async for outcome in client.workflows.as_completed(
            started, timeout=300, poll_interval=poll_interval
        ):
            if isinstance(outcome, WorkflowExecution):
                outcomes[outcome.status.value] += 1  # COMPLETED, FAILED, CANCELLED, ...
            elif isinstance(outcome, WaitTimeoutError):
                outcomes["still running at the deadline"] += 1
            else:
                outcomes[f"error: {type(outcome).__name__}"] += 1
    elapsed = time.monotonic() - began
    print(f"{count} executions in {elapsed:.1f} s with {concurrency} workers:")
    for outcome_name, number in outcomes.most_common():
        print(f"  {outcome_name:<32} {number}")
    assert sum(outcomes.values()) == count


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("definitions", nargs="+")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()
    if not os.environ.get("TRANSACTIONLINK_TOKEN"):
        parser.error("set TRANSACTIONLINK_TOKEN to your API token (tot_...)")
    asyncio.run(main(args.definitions, args.count, args.concurrency, args.poll_interval))
