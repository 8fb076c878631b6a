"""10,000 (or 100,000) concurrent waits in one process, against the fake server.

Two ways to wait with aiotlink are measured: ``wait_for_completion`` per execution, all
under ``asyncio.gather`` (side ``aiotlink``), and one ``as_completed`` over every id
(side ``as_completed``).

The fake runs in its own process (``python -m aiotlink.testing``) so that its work does
not count against the client. Reports: whether every wait returned COMPLETED, peak RSS,
connections opened, polls per execution against what the poll schedule allows, the
event loop's worst lag (a 10 ms ticker's largest delay), and CPython's full garbage
collections during the wait (the cause of the longest stalls; see the team's
design/PERFORMANCE.md).

The baseline, measured in the same run, is what design/PERFORMANCE.md started from: raw
aiohttp, one task per execution that GETs it, decodes the JSON and sleeps on the same
schedule, on one session with the same connection limit; and asyncio alone, as many
tasks that only await a future. Each side runs in a process of its own, so that none
inherits another's heap, and each round starts with another side.

    python benchmarks/waiters.py                            # 10,000 waiters, 3 rounds
    python benchmarks/waiters.py --waiters 100000 --rounds 1 --step-seconds 40
    python benchmarks/waiters.py --waiters 200 --rounds 1   # a quick smoke run

At 100,000, setting up the executions takes about half a minute: ``--step-seconds``
must be longer than that, or the early executions end before their waits begin.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import random
import resource
import sys
import time
from typing import Any

import aiohttp
from _common import (
    TICK,
    TOKEN,
    FullCollections,
    fake_server_process,
    rounded,
    run_script,
    spread,
)

from aiotlink import TransactionLinkClient, WorkflowStatus
from aiotlink._polling import DEFAULT_POLL_FACTOR, JITTER, PollSchedule

# kyc-background walks INITIALISED, RUNNING, COMPLETED: one step per STEP_SECONDS, long
# enough that every wait sees a status change after initialising 10,000 executions.
STEP_SECONDS = 8.0
SIDES = ("aiotlink", "as_completed", "aiohttp", "floor")
CONNECTION_LIMIT = 100
TERMINAL_STATUSES = frozenset(status.value for status in WorkflowStatus if status.is_terminal)


def peak_rss_mib() -> float:
    """Peak resident set size of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def implied_polls(change_after: float, ends_after: float, schedule: PollSchedule) -> int:
    """The most polls the schedule allows one execution, every gap jittered shortest.

    The execution's status changes ``change_after`` seconds after the wait begins and
    it ends ``ends_after`` seconds after.
    """
    polls, now, interval, changed = 1, 0.0, schedule.poll_interval, False
    while now < ends_after:
        now += interval * (1 - JITTER)
        polls += 1
        if not changed and now >= change_after:
            changed, interval = True, schedule.poll_interval
        else:
            interval = schedule.next_interval(interval)
    return polls


async def loop_lags(stop: asyncio.Event, lags: list[float]) -> None:
    """Sleep TICK seconds at a time and record how late each wake-up is."""
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        expected = loop.time() + TICK
        await asyncio.sleep(TICK)
        lags.append(loop.time() - expected)


async def raw_aiohttp_wait(
    session: aiohttp.ClientSession,
    url: str,
    schedule: PollSchedule,
) -> str:
    """The baseline waiter: GET, decode, sleep on the same growing schedule; the status."""
    headers = {"Authorization": TOKEN}
    interval, last_status = schedule.poll_interval, None
    while True:
        async with session.get(url, headers=headers) as response:
            response.raise_for_status()
            status = (await response.json())["status"]
        if status in TERMINAL_STATUSES:
            return str(status)
        changed, last_status = status != last_status, status
        interval = schedule.poll_interval if changed else schedule.next_interval(interval)
        await asyncio.sleep(interval * (1 - JITTER * random.random()))


async def asyncio_floor(waiters: int) -> dict[str, Any]:
    """The lag of asyncio alone: as many tasks, started together, that only await a future.

    No HTTP and no client: what starting this many waiters costs any asyncio program on
    this machine, the part of the worst lag that no client can remove.
    """
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(waiters)]
    stop, lags = asyncio.Event(), []
    ticker = asyncio.create_task(loop_lags(stop, lags))
    await asyncio.sleep(5 * TICK)
    waiting = asyncio.gather(*(future_waiter(future) for future in futures))
    await asyncio.sleep(50 * TICK)
    for future in futures:
        future.set_result(None)
    await waiting
    stop.set()
    await ticker
    return {"waiters": waiters, "worst_loop_lag_ms": max(lags) * 1000}


async def future_waiter(future: asyncio.Future[None]) -> None:
    await future


async def run(
    side: str, waiters: int, poll_interval: float, max_poll_interval: float, step_seconds: float
) -> dict[str, Any]:
    counts = {"connections": 0, "requests": 0}

    async def on_connection(*_: Any) -> None:
        counts["connections"] += 1

    async def on_request(*_: Any) -> None:
        counts["requests"] += 1

    tracing = aiohttp.TraceConfig()
    tracing.on_connection_create_end.append(on_connection)
    tracing.on_request_start.append(on_request)
    async with fake_server_process("--step-seconds", str(step_seconds)) as fake:
        # A session of ours only to count connections and requests; the client's
        # connection_limit still bounds its polls in flight.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=CONNECTION_LIMIT), trace_configs=[tracing]
        )
        client = TransactionLinkClient(
            TOKEN, base_url=fake.url, session=session, connection_limit=CONNECTION_LIMIT
        )
        async with session, client:
            ids: list[str] = []

            async def initialise(count: int) -> None:
                for _ in range(count):
                    execution = await client.workflows.initialise(
                        fake.definitions["kyc-background"]
                    )
                    ids.append(execution.id)

            # Set up with 100 workers rather than 10,000 tasks: the setup's leftovers
            # would otherwise sit in the heap that every full collection walks.
            setup_started = time.monotonic()
            await asyncio.gather(*(initialise(waiters // 100) for _ in range(100)))
            await asyncio.gather(*(initialise(1) for _ in range(waiters % 100)))
            setup_seconds = time.monotonic() - setup_started
            gc.collect()
            requests_before = counts["requests"]
            stop, lags = asyncio.Event(), []
            collections = FullCollections()
            gc.callbacks.append(collections)
            ticker = asyncio.create_task(loop_lags(stop, lags))
            started = time.monotonic()
            deadline = 120 + 3 * step_seconds
            if side == "aiotlink":
                executions = await asyncio.gather(
                    *(
                        client.workflows.wait_for_completion(
                            execution_id,
                            poll_interval=poll_interval,
                            max_poll_interval=max_poll_interval,
                            timeout=deadline,
                        )
                        for execution_id in ids
                    )
                )
                statuses = [execution.status.value for execution in executions]
            elif side == "as_completed":
                statuses = []
                async for outcome in client.workflows.as_completed(
                    ids,
                    poll_interval=poll_interval,
                    max_poll_interval=max_poll_interval,
                    timeout=deadline,
                ):
                    statuses.append(getattr(outcome, "status", outcome))
            else:
                schedule = PollSchedule(poll_interval, max_poll_interval, DEFAULT_POLL_FACTOR)
                async with asyncio.timeout(deadline):
                    statuses = await asyncio.gather(
                        *(
                            raw_aiohttp_wait(session, f"{fake.url}/workflows/{id_}", schedule)
                            for id_ in ids
                        )
                    )
            wait_seconds = time.monotonic() - started
            stop.set()
            await ticker
            gc.callbacks.remove(collections)
    polls = counts["requests"] - requests_before
    bound = implied_polls(
        step_seconds, 2 * step_seconds, PollSchedule(poll_interval, max_poll_interval)
    )
    report = {
        "waiters": waiters,
        "all_completed": all(status == "COMPLETED" for status in statuses),
        "setup_seconds": setup_seconds,
        "wait_seconds": wait_seconds,
        "peak_rss_mib": peak_rss_mib(),
        "connections_opened": counts["connections"],
        "polls_per_execution": polls / waiters,
        "schedule_allows_per_execution": bound,
        "worst_loop_lag_ms": max(lags) * 1000,
        "p99_loop_lag_ms": sorted(lags)[int(len(lags) * 0.99)] * 1000,
        "full_gc_collections": len(collections.pauses),
        "worst_full_gc_ms": max(collections.pauses, default=0.0) * 1000,
    }
    return report


# Measures given per side as the median, min and max over the rounds.
SPREAD_MEASURES = (
    "wait_seconds",
    "peak_rss_mib",
    "connections_opened",
    "polls_per_execution",
    "worst_loop_lag_ms",
    "p99_loop_lag_ms",
    "full_gc_collections",
    "worst_full_gc_ms",
)
RATIO_MEASURES = ("worst_loop_lag_ms", "peak_rss_mib", "worst_full_gc_ms")


def summarise(rounds: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Every side's measures over the rounds, the per-round ratios, and the targets."""
    ours, batch, theirs = rounds["aiotlink"], rounds["as_completed"], rounds["aiohttp"]

    def side(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "waiters": outcomes[0]["waiters"],
            "all_completed": all(outcome["all_completed"] for outcome in outcomes),
        }
        for measure in SPREAD_MEASURES:
            summary[measure] = spread([outcome[measure] for outcome in outcomes])
        return summary

    report = side(ours)
    report["rounds"] = len(ours)
    report["schedule_allows_per_execution"] = ours[0]["schedule_allows_per_execution"]
    report["aiohttp"] = side(theirs)
    report["as_completed"] = side(batch)
    report["as_completed"]["targets"] = {
        "peak_rss_under_250_mib": report["as_completed"]["peak_rss_mib"]["max"] < 250,
        "p99_loop_lag_under_50_ms": report["as_completed"]["p99_loop_lag_ms"]["max"] < 50,
        "worst_loop_lag_under_300_ms": report["as_completed"]["worst_loop_lag_ms"]["max"] < 300,
        "polls_within_schedule": report["as_completed"]["polls_per_execution"]["max"]
        <= ours[0]["schedule_allows_per_execution"],
    }
    for measure in RATIO_MEASURES:
        # A smoke run may see no full collection at all on either side.
        pairs = [(mine[measure], base[measure]) for mine, base in zip(ours, theirs, strict=True)]
        ratios = [mine / base for mine, base in pairs if base]
        report[f"{measure}_vs_aiohttp"] = spread(ratios) if ratios else None
    report["asyncio_floor_worst_loop_lag_ms"] = spread(
        [outcome["worst_loop_lag_ms"] for outcome in rounds["floor"]]
    )
    report["targets"] = {
        "peak_rss_under_300_mib": report["peak_rss_mib"]["max"] < 300,
        "worst_loop_lag_under_100_ms": report["worst_loop_lag_ms"]["median"] < 100,
        "polls_within_schedule": report["polls_per_execution"]["max"]
        <= report["schedule_allows_per_execution"],
        "connections_within_limit": report["connections_opened"]["max"] <= CONNECTION_LIMIT,
    }
    return report


def run_side_in_process(side: str, arguments: list[str]) -> dict[str, Any]:
    """This script again, for one side: a fresh interpreter and heap per side."""
    return run_script([sys.executable, __file__, "--side", side, *arguments], timeout=1800)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--waiters", type=int, default=10_000)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--max-poll-interval", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--step-seconds", type=float, default=STEP_SECONDS)
    parser.add_argument("--side", choices=SIDES, help="run one side only, once")
    args = parser.parse_args()
    if args.side == "floor":
        print(json.dumps(rounded(asyncio.run(asyncio_floor(args.waiters)), 2)))
        return
    if args.side:
        report = asyncio.run(
            run(
                args.side,
                args.waiters,
                args.poll_interval,
                args.max_poll_interval,
                args.step_seconds,
            )
        )
        print(json.dumps(rounded(report, 2)))
        return
    arguments = ["--waiters", str(args.waiters), "--poll-interval", str(args.poll_interval)]
    arguments += ["--max-poll-interval", str(args.max_poll_interval)]
    arguments += ["--step-seconds", str(args.step_seconds)]
    sides = list(SIDES)
    rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in sides}
    for number in range(args.rounds):
        # Each round starts with another side, each side in a fresh process.
        start = number % len(sides)
        for side in sides[start:] + sides[:start]:
            rounds[side].append(run_side_in_process(side, arguments))
    print(json.dumps(rounded(summarise(rounds), 2), indent=2))


if __name__ == "__main__":
    main()
