"""10,000 concurrent wait_for_completion calls in one process, against the fake server.

The fake runs in its own process (``python -m aiotlink.testing``) so that its work does
not count against the client. Reports: whether every wait returned COMPLETED, peak RSS,
connections opened, requests per execution against what the poll schedule implies,
and the event loop's worst lag (a 10 ms ticker's largest delay).

    python benchmarks/waiters.py                 # 10,000 waiters
    python benchmarks/waiters.py --waiters 200   # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from aiotlink import TransactionLinkClient, WorkflowStatus
from aiotlink._polling import JITTER, PollSchedule

TOKEN = "tot_benchmark_waiters_0000000000"
# kyc-background walks INITIALISED, RUNNING, COMPLETED: one step per STEP_SECONDS, long
# enough that every wait sees a status change after initialising 10,000 executions.
STEP_SECONDS = 8.0
TICK = 0.01


def rss_mib() -> float:
    """Peak resident set size of this process so far, MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def implied_polls(change_times: list[float], schedule: PollSchedule, ends_at: float) -> int:
    """The most polls the schedule allows for one execution (every gap jittered shortest).

    ``change_times`` are the seconds after the wait starts at which the status changes;
    the execution is terminal from ``ends_at`` on.
    """
    polls, now, interval, seen_changes = 1, 0.0, schedule.poll_interval, 0
    while now < ends_at:
        now += interval * (1 - JITTER)
        polls += 1
        changed = sum(1 for t in change_times if t <= now) > seen_changes
        if changed:
            seen_changes = sum(1 for t in change_times if t <= now)
            interval = schedule.poll_interval
        else:
            interval = schedule.next_interval(interval)
    return polls


@asynccontextmanager
async def fake_server_process() -> AsyncIterator[tuple[str, str]]:
    """Start the fake in its own process; yield its URL and the definition id to run."""
    command = [sys.executable, "-m", "aiotlink.testing", "--port", "0", "--token", TOKEN]
    command += ["--step-seconds", str(STEP_SECONDS)]
    # Started once, before anything is measured: blocking here costs the benchmark nothing.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)  # noqa: ASYNC220
    assert process.stdout is not None
    banner = ""
    for line in process.stdout:
        banner += line
        if "Ctrl-C" in line:
            break
    try:
        url = re.search(r"listening on (\S+)", banner)
        definition = re.search(r"(\S+)\s+kyc-background", banner)
        assert url is not None, banner
        assert definition is not None, banner
        yield url[1], definition[1]
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
        process.stdout.close()


async def watch_loop_lag(stop: asyncio.Event, lags: list[float]) -> None:
    """Sleep TICK seconds at a time and record how late each wake-up is."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        expected = loop.time() + TICK
        await asyncio.sleep(TICK)
        lags.append(loop.time() - expected)


class GarbageCollectorWatch:
    """Times CPython's full (generation 2) collections while installed."""

    def __init__(self) -> None:
        self.pauses: list[float] = []
        self._started = 0.0

    def __call__(self, phase: str, info: dict[str, Any]) -> None:
        if info["generation"] != 2:
            return
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.pauses.append(time.perf_counter() - self._started)


async def run(waiters: int, poll_interval: float, max_poll_interval: float) -> dict[str, Any]:
    connections = 0
    requests = 0

    async def on_connection(*_: Any) -> None:
        nonlocal connections
        connections += 1

    async def on_request(*_: Any) -> None:
        nonlocal requests
        requests += 1

    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_end.append(on_connection)
    tracing.on_request_start.append(on_request)
    async with fake_server_process() as (url, definition):
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100), trace_configs=[tracing]
        )
        async with session, TransactionLinkClient(TOKEN, base_url=url, session=session) as client:
            ids: list[str] = []

            async def initialise(count: int) -> None:
                for _ in range(count):
                    execution = await client.workflows.initialise(definition)
                    ids.append(execution.id)

            # Set up with 100 workers rather than 10,000 tasks: the setup's leftovers
            # would otherwise sit in the heap that every full GC of the wait walks.
            setup_started = time.monotonic()
            await asyncio.gather(*(initialise(waiters // 100) for _ in range(100)))
            await asyncio.gather(*(initialise(1) for _ in range(waiters % 100)))
            setup_seconds = time.monotonic() - setup_started
            gc.collect()
            rss_before = rss_mib()
            requests_before = requests

            stop = asyncio.Event()
            lags: list[float] = []
            collections = GarbageCollectorWatch()
            gc.callbacks.append(collections)
            ticker = asyncio.create_task(watch_loop_lag(stop, lags))
            started = time.monotonic()
            executions = await asyncio.gather(
                *(
                    client.workflows.wait_for_completion(
                        execution_id,
                        poll_interval=poll_interval,
                        max_poll_interval=max_poll_interval,
                        timeout=120,
                    )
                    for execution_id in ids
                )
            )
            wall = time.monotonic() - started
            stop.set()
            await ticker
            gc.callbacks.remove(collections)
    polls = requests - requests_before
    schedule = PollSchedule(poll_interval, max_poll_interval)
    # The earliest-started execution may already be RUNNING; the latest changes at 2 s
    # and ends at 4 s after it was initialised, at most that long after waiting began.
    bound = implied_polls([STEP_SECONDS], schedule, ends_at=2 * STEP_SECONDS)
    return {
        "waiters": waiters,
        "all_completed": all(e.status is WorkflowStatus.COMPLETED for e in executions),
        "distinct_ids": len({e.id for e in executions}) == waiters,
        "setup_seconds": round(setup_seconds, 2),
        "wait_seconds": round(wall, 2),
        "rss_before_wait_mib": round(rss_before, 1),
        "peak_rss_mib": round(rss_mib(), 1),
        "connections_opened": connections,
        "polls": polls,
        "polls_per_execution": round(polls / waiters, 2),
        "schedule_implied_max_polls_per_execution": bound,
        "worst_loop_lag_ms": round(max(lags) * 1000, 1),
        "p99_loop_lag_ms": round(sorted(lags)[int(len(lags) * 0.99)] * 1000, 1),
        "full_gc_collections": len(collections.pauses),
        "worst_full_gc_ms": round(max(collections.pauses, default=0.0) * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--max-poll-interval", type=float, default=15.0)
    args = parser.parse_args()
    report = asyncio.run(run(args.waiters, args.poll_interval, args.max_poll_interval))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
