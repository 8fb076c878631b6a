"""Run a list of executions through a bounded pool of asyncio workers; sum up outcomes.

    TRANSACTIONLINK_TOKEN=tot_... python examples/worker_pool.py <definition-id> ... \
        [--count 1000] [--concurrency 50]

Each job is ``client.workflows.run()``: initialise, wait, fetch the result, under one
deadline. Definitions given are used in turn.
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
    WorkflowFailedError,
)

BASE_URL = os.environ.get("TRANSACTIONLINK_BASE_URL", "https://api.transactionlink.io")


async def worker(
    client: TransactionLinkClient,
    jobs: asyncio.Queue[tuple[int, str]],
    outcomes: collections.Counter[str],
    poll_interval: float,
) -> None:
    while True:
        number, definition_id = await jobs.get()
        try:
            run = await client.workflows.run(
                definition_id,
                parameters={"job": number},
                timeout=300,
                poll_interval=poll_interval,
            )
            outcomes[run.execution.status.value] += 1
        except WorkflowFailedError as failed:
            outcomes[failed.status.value] += 1
        except WaitTimeoutError:
            outcomes["still running at the deadline"] += 1
        except TransactionLinkError as error:
            outcomes[f"error: {type(error).__name__}"] += 1
        except Exception as error:  # a bug must not kill the worker and stall the pool
            outcomes[f"unexpected: {type(error).__name__}"] += 1
        finally:
            jobs.task_done()


async def main(definitions: list[str], count: int, concurrency: int, poll_interval: float) -> None:
    jobs: asyncio.Queue[tuple[int, str]] = asyncio.Queue()
    for number, definition_id in zip(range(count), itertools.cycle(definitions), strict=False):
        jobs.put_nowait((number, definition_id))
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.monotonic()
    async with TransactionLinkClient(base_url=BASE_URL) as client:
        workers = [
            asyncio.create_task(worker(client, jobs, outcomes, poll_interval))
            for _ in range(concurrency)
        ]
        await jobs.join()
        for task in workers:
            task.cancel()
        await asyncio.gather(*workers, return_exceptions=True)
    elapsed = time.monotonic() - started
    print(f"{count} executions in {elapsed:.1f} s with {concurrency} workers:")
    for outcome, number in outcomes.most_common():
        print(f"  {outcome:<32} {number}")
    assert sum(outcomes.values()) == count


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("definitions", nargs="+")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args()
    asyncio.run(main(args.definitions, args.count, args.concurrency, args.poll_interval))
