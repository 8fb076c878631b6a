"""Call overhead: client.workflows.find() against raw aiohttp and httpx, one local server.

The server (``_server.py``) runs in its own process, pinned to one core, and answers
the spec's execution body; the clients run in this process, pinned to the other core,
round-robin, at 1, 8 and 64 calls in flight. Each side: requests per second, and the
client's CPU time per call (this process's CPU time over the calls made).

- raw aiohttp: one ClientSession, ``GET`` then ``await response.json()``.
- aiotlink: ``await client.workflows.find(id)``: auth header, retry wrapper, typed
  ``WorkflowExecution`` out.
- httpx: one ``AsyncClient``, ``GET`` then ``response.json()``.

    python benchmarks/calls.py                           # 3 rounds
    python benchmarks/calls.py --calls 200 --rounds 1    # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import httpx
from _common import TOKEN, rounded, spread

from aiotlink import TransactionLinkClient

EXECUTION_ID = "7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10"
CONCURRENCY = (1, 8, 64)
HERE = Path(__file__).parent


def pin(process_id: int, core: int) -> None:
    """Keep a process on one core (where the machine has two or more)."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > 1:
        os.sched_setaffinity(process_id, {core})


async def start_server() -> tuple[asyncio.subprocess.Process, str]:
    server = await asyncio.create_subprocess_exec(
        sys.executable, str(HERE / "_server.py"), stdout=asyncio.subprocess.PIPE
    )
    assert server.stdout is not None
    port = int(await server.stdout.readline())
    pin(server.pid, 0)
    return server, f"http://127.0.0.1:{port}"


async def measure(
    call: Callable[[], Awaitable[Any]], calls: int, in_flight: int
) -> dict[str, float]:
    """Make ``calls`` calls with ``in_flight`` workers; rate and client CPU per call."""
    per_worker, extra = divmod(calls, in_flight)

    async def worker(count: int) -> None:
        for _ in range(count):
            await call()

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(per_worker + (i < extra)) for i in range(in_flight)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return {"per_second": calls / wall, "cpu_us_per_call": cpu / calls * 1e6}


async def run(calls: int, httpx_calls: int, rounds: int) -> dict[str, Any]:
    pin(0, 1)
    server, url = await start_server()
    find_url = f"{url}/workflows/{EXECUTION_ID}"
    headers = {"Authorization": TOKEN}
    try:
        async with (
            aiohttp.ClientSession() as session,
            httpx.AsyncClient(limits=httpx.Limits(max_connections=100)) as httpx_client,
            TransactionLinkClient(TOKEN, base_url=url) as client,
        ):

            async def raw_aiohttp() -> Any:
                async with session.get(find_url, headers=headers) as response:
                    return await response.json()

            async def with_httpx() -> Any:
                return (await httpx_client.get(find_url, headers=headers)).json()

            async def with_aiotlink() -> Any:
                return await client.workflows.find(EXECUTION_ID)

            sides = {
                "aiohttp": (raw_aiohttp, calls),
                "aiotlink": (with_aiotlink, calls),
                "httpx": (with_httpx, httpx_calls),
            }
            for call, _ in sides.values():  # connections open, caches warm
                await call()
            results: dict[str, dict[int, list[dict[str, float]]]] = {
                name: {n: [] for n in CONCURRENCY} for name in sides
            }
            for number in range(rounds):
                order = list(sides)[number % 3 :] + list(sides)[: number % 3]
                for in_flight in CONCURRENCY:
                    for name in order:
                        call, count = sides[name]
                        results[name][in_flight].append(await measure(call, count, in_flight))
    finally:
        server.terminate()
        await server.wait()
    return summarise(results, calls, httpx_calls, rounds)


def summarise(results: dict[str, Any], calls: int, httpx_calls: int, rounds: int) -> dict:
    def ratio(name: str, baseline: str, key: str, in_flight: int) -> dict[str, float]:
        pairs = zip(results[name][in_flight], results[baseline][in_flight], strict=True)
        return spread([mine[key] / theirs[key] for mine, theirs in pairs])

    report: dict[str, Any] = {"calls": calls, "httpx_calls": httpx_calls, "rounds": rounds}
    for in_flight in CONCURRENCY:
        level: dict[str, Any] = {}
        for name, by_level in results.items():
            for key in ("per_second", "cpu_us_per_call"):
                level[f"{name}_{key}"] = spread([r[key] for r in by_level[in_flight]])
        level["rate_vs_aiohttp"] = ratio("aiotlink", "aiohttp", "per_second", in_flight)
        level["cpu_vs_aiohttp"] = ratio("aiotlink", "aiohttp", "cpu_us_per_call", in_flight)
        level["rate_vs_httpx"] = ratio("aiotlink", "httpx", "per_second", in_flight)
        report[f"in_flight_{in_flight}"] = level
    at_64 = report["in_flight_64"]
    report["targets"] = {
        "rate_at_least_0.85_of_aiohttp": at_64["rate_vs_aiohttp"]["median"] >= 0.85,
        "cpu_at_most_1.2x_aiohttp": at_64["cpu_vs_aiohttp"]["median"] <= 1.2,
        "rate_at_least_10x_httpx": at_64["rate_vs_httpx"]["median"] >= 10,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000, help="per side and level")
    parser.add_argument("--httpx-calls", type=int, default=600, help="httpx is slow")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    report = asyncio.run(run(args.calls, args.httpx_calls, args.rounds))
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
