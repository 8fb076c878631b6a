"""Durable following (aiotlink.arq) of many executions by arq worker processes.

    python benchmarks/durable.py --executions 100000 --workers 4
    python benchmarks/durable.py --executions 100000 --workers 4 --rate 200
    python benchmarks/durable.py --smoke          # tiny counts: checks it still runs

The fake server runs as its own process, Redis is the real ``redis-server``
(``aiotlink.testing.RedisServer``, append-only file on). Two phases on one fake, each
with its own executions of the same shape (all started, then all followed; each ends
``2 * --step-seconds`` after it was started):

- in-process: one ``as_completed`` over every id, the default schedule;
- durable: ``follow`` for every id, then ``--workers`` arq worker processes
  (benchmarks/durable_worker.py) poll them in short jobs until every handler has run.

With ``--rate N`` the executions are started over time instead, N a second (in
batches of about a quarter of a second's), and each batch is waited on or followed as
soon as it exists: in-process with a ``wait_for_completion`` per execution, durable
with a ``follow`` per execution.
All at once, both sides ask for more lookups a second than two cores serve, and each
makes as many as its CPU per lookup allows; at a rate the machine serves, the GETs per
execution tell whether each side keeps the schedule (benchmarks/NOTES.md, "Durable
following").

Measured: GETs per execution on both sides (from the fake's request log), the durable
side's drain time (the first follow to the last handler) against the schedule's floor
(when the schedule, without jitter, would see the last execution end: the same pure
functions of aiotlink._polling simulated over each execution's known status times),
Redis commands per poll (``INFO commandstats``), and each worker's peak RSS (VmHWM).
Prints a JSON report.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from _common import TOKEN, rounded
from arq.connections import ArqRedis, RedisSettings, create_pool

from aiotlink import TransactionLinkClient
from aiotlink._polling import DEFAULT_SCHEDULE, interval_after
from aiotlink.arq import follow
from aiotlink.testing import RedisServer

HERE = Path(__file__).parent


def start_fake(step_seconds: float, log: Path) -> tuple[subprocess.Popen[str], str, str]:
    command = [sys.executable, "-m", "aiotlink.testing", "--port", "0", "--token", TOKEN]
    command += ["--step-seconds", str(step_seconds), "--request-log", str(log)]
    fake = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert fake.stdout is not None
    banner = ""
    while "Ctrl-C" not in banner:
        line = fake.stdout.readline()
        assert line, banner
        banner += line
    url = re.search(r"listening on (\S+)", banner)
    definition = re.search(r"^\s+(\S+)\s+kyc-background", banner, re.MULTILINE)
    assert url is not None, banner
    assert definition is not None, banner
    return fake, url[1], definition[1]


def detected_at(followed: float, created: float, step: float) -> float:
    """When the schedule, without jitter, first sees the execution COMPLETED."""
    changes = [created + step, created + 2 * step]  # RUNNING, then COMPLETED
    at, interval, seen = followed, DEFAULT_SCHEDULE.poll_interval, 0
    while True:
        status = sum(change <= at for change in changes)
        if status == 2:
            return at
        interval = interval_after(DEFAULT_SCHEDULE, interval, changed=status != seen)
        seen = status
        at += interval


async def create(client: TransactionLinkClient, definition: str, count: int) -> dict[str, float]:
    """Start ``count`` executions: each id with when it was started (time.time())."""
    made: dict[str, float] = {}
    for first in range(0, count, 500):
        batch = await asyncio.gather(
            *(client.workflows.initialise(definition) for _ in range(min(500, count - first)))
        )
        now = time.time()
        for execution in batch:
            made[execution.id] = now
    return made


def gets(log: Path, ids: set[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    with log.open() as lines:
        for line in lines:
            _, route, path, _ = line.split(" ")
            if route == "find":
                key = path.rsplit("/", 1)[1]
                if key in ids:
                    counts[key] += 1
    return counts


BATCH_SECONDS = 0.25  # with --rate: a batch of executions started every this often


async def paced(
    client: TransactionLinkClient,
    definition: str,
    count: int,
    rate: float,
    then: Callable[[list[str]], Awaitable[None]],
) -> tuple[dict[str, float], dict[str, float]]:
    """Start ``count`` executions, ``rate`` a second; ``then(ids)`` each batch at once.

    Returns when each execution was started and when ``then`` was done with it.
    """
    made: dict[str, float] = {}
    handed: dict[str, float] = {}
    size = max(1, round(rate * BATCH_SECONDS))
    began = time.time()
    for first in range(0, count, size):
        # Batch by batch at ``rate`` exactly, whatever the rounding of ``size``.
        await asyncio.sleep(max(0.0, began + first / rate - time.time()))
        batch = await asyncio.gather(
            *(client.workflows.initialise(definition) for _ in range(min(size, count - first)))
        )
        ids = [str(execution.id) for execution in batch]
        started = time.time()
        await then(ids)
        done = time.time()
        for id_ in ids:
            made[id_], handed[id_] = started, done
    return made, handed


async def in_process(
    url: str, definition: str, count: int, step: float, rate: float
) -> dict[str, Any]:
    statuses: Counter[str] = Counter()
    async with TransactionLinkClient(TOKEN, base_url=url) as client:
        if rate:
            waits: list[asyncio.Task[Any]] = []

            async def wait_for(ids: list[str]) -> None:
                waits.extend(
                    asyncio.create_task(client.workflows.wait_for_completion(id_)) for id_ in ids
                )

            began = time.time()
            made, waited = await paced(client, definition, count, rate, wait_for)
            for outcome in await asyncio.gather(*waits, return_exceptions=True):
                statuses[
                    "error" if isinstance(outcome, BaseException) else outcome.status.value
                ] += 1
        else:
            made = await create(client, definition, count)
            began = time.time()
            waited = dict.fromkeys(made, began)
            async for outcome in client.workflows.as_completed(made):
                statuses["error" if isinstance(outcome, Exception) else outcome.status.value] += 1
        drained = time.time() - began
    floor = max(detected_at(waited[id_], created, step) for id_, created in made.items()) - began
    return {"ids": made, "seconds": drained, "floor_seconds": floor, "statuses": statuses}


def worker_peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def start_workers(count: int, environment: dict[str, str]) -> list[subprocess.Popen[bytes]]:
    return [
        subprocess.Popen(
            [sys.executable, "-m", "arq", "durable_worker.WorkerSettings"],
            cwd=HERE,
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]


async def commands(redis: ArqRedis) -> int:
    stats = await redis.info("commandstats")
    return sum(int(value["calls"]) for value in stats.values())


async def durable(
    url: str,
    definition: str,
    count: int,
    step: float,
    rate: float,
    workers: int,
    redis_port: int,
    folder: Path,
) -> dict[str, Any]:
    outcomes = folder / "outcomes.log"
    environment = {
        **os.environ,
        "BENCH_REDIS_PORT": str(redis_port),
        "BENCH_OUTCOMES": str(outcomes),
        "TRANSACTIONLINK_TOKEN": TOKEN,
        "TRANSACTIONLINK_BASE_URL": url,
    }
    redis = await create_pool(RedisSettings(host="127.0.0.1", port=redis_port))
    processes = start_workers(workers, environment)

    async def follow_all(ids: list[str]) -> None:
        await asyncio.gather(*(follow(redis, key, on_terminal="finished") for key in ids))

    try:
        async with TransactionLinkClient(TOKEN, base_url=url) as client:
            if rate:
                await redis.config_resetstat()
                before = await commands(redis)
                began = time.time()
                made, handed = await paced(client, definition, count, rate, follow_all)
            else:
                made = await create(client, definition, count)
                await redis.config_resetstat()
                before = await commands(redis)
                began = time.time()
                for first in range(0, count, 1000):
                    await follow_all(list(made)[first : first + 1000])
                # Each execution followed in the order the follows went, spread evenly
                # over the seconds they took (one follow's time is not recorded).
                spacing = (time.time() - began) / max(count - 1, 1)
                handed = {id_: began + index * spacing for index, id_ in enumerate(made)}
        followed = time.time()
        done: list[str] = []
        while len(done) < count:
            await asyncio.sleep(0.2)
            done = outcomes.read_text().splitlines() if outcomes.exists() else []
        after = await commands(redis)
        peaks = [worker_peak_rss_mib(process.pid) for process in processes]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=60)
        await redis.aclose()
    last = max(float(line.split(" ")[0]) for line in done)
    floor = max(detected_at(handed[id_], created, step) for id_, created in made.items()) - began
    return {
        "ids": made,
        "seconds": last - began,
        "follow_seconds": followed - began,
        "floor_seconds": floor,
        "statuses": Counter(line.split(" ")[2] for line in done),
        "handled": len(done),
        "handled_once": len({line.split(" ")[1] for line in done}),
        "redis_commands": after - before,
        "peak_rss_mib": peaks,
    }


async def main_async(options: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder, RedisServer() as redis:
        log = Path(folder) / "requests.log"
        fake, url, definition = start_fake(options.step_seconds, log)
        try:
            count, step = options.executions, options.step_seconds
            local = await in_process(url, definition, count, step, options.rate)
            remote = await durable(
                url,
                definition,
                count,
                step,
                options.rate,
                options.workers,
                redis.port,
                Path(folder),
            )
        finally:
            fake.terminate()
            fake.wait(timeout=60)
        local_gets = gets(log, set(local.pop("ids")))
        remote_gets = gets(log, set(remote.pop("ids")))
    local_per = sum(local_gets.values()) / count
    remote_per = sum(remote_gets.values()) / count
    peak = max(remote["peak_rss_mib"])
    return {
        "executions": count,
        "rate": options.rate or "all at once",
        "workers": options.workers,
        "step_seconds": step,
        "in_process": {**local, "gets_per_execution": local_per},
        "durable": {
            **remote,
            "gets_per_execution": remote_per,
            "drain_over_floor": remote["seconds"] / remote["floor_seconds"],
            "redis_commands_per_poll": remote["redis_commands"] / sum(remote_gets.values()),
        },
        "targets": {
            # Both ways: fewer GETs than in-process means polls fell behind the schedule.
            "gets_within_10_percent_of_in_process": abs(remote_per / local_per - 1) <= 0.1,
            "drain_within_1.25x_floor": remote["seconds"] <= 1.25 * remote["floor_seconds"],
            "worker_rss_under_200_mib": peak < 200,
            "every_handler_ran_once": remote["handled"] == remote["handled_once"] == count,
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--step-seconds", type=float, default=10.0, help="per status step")
    parser.add_argument(
        "--rate", type=float, default=0.0, help="executions started a second (0: all at once)"
    )
    parser.add_argument("--smoke", action="store_true", help="20 executions, 2 workers")
    options = parser.parse_args()
    if options.smoke:
        options.executions, options.workers, options.step_seconds = 20, 2, 0.5
    report = asyncio.run(main_async(options))
    print(json.dumps(rounded(report, 3), indent=2))


if __name__ == "__main__":
    main()
