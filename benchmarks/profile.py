"""Where the client spends its time: pyinstrument profiles of the measured hot paths.

The profiles behind benchmarks/NOTES.md, reproducible. Each prints pyinstrument's view,
library frames included: the call tree for decoding, and for the others the functions
by their own time (aiohttp's and asyncio's next to ours):

- ``decode``: ``decode_execution`` of the decode benchmark's body, from a dict and
  from bytes;
- ``calls``: ``client.workflows.find()`` at 64 in flight against the call benchmark's
  server (in its own process, as in ``calls.py``);
- ``waiters``: 10,000 ``wait_for_completion`` calls started together, from their first
  steps until every one has subscribed (their polls never answer): the start of the
  waiting benchmark;
- ``download``: ``download_result`` of a redirected result (``--count`` MiB, 256 by
  default) from the fake server in its own process, as in ``download.py``.

    python benchmarks/profile.py decode
    python benchmarks/profile.py calls --count 20000
    python benchmarks/profile.py waiters
    python benchmarks/profile.py download
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import uuid
from pathlib import Path
from typing import Any

from _common import TOKEN, fake_server_process
from calls import EXECUTION_ID, measure, pin, start_server
from decode import BODY, RAW
from pyinstrument import Profiler

from aiotlink import TransactionLinkClient
from aiotlink._converter import decode_execution
from aiotlink._polling import Lookup
from aiotlink._transport import parse_json

INTERVAL = 0.0001  # seconds between samples


def report(profiler: Profiler, *, flat: bool = False) -> None:
    """The call tree, or (``flat``) the functions by their own time, largest first."""
    print(
        profiler.output_text(
            unicode=True,
            show_all=True,
            time="percent_of_total",
            flat=flat,
            processor_options={"filter_threshold": 0.005},
        )
    )


def profile_decode(count: int) -> None:
    profiler = Profiler(interval=INTERVAL)
    with profiler:
        for _ in range(count):
            decode_execution(BODY)
            decode_execution(parse_json(RAW))
    report(profiler)


async def profile_calls(count: int) -> None:
    pin(0, 1)
    server, url = await start_server()
    try:
        async with TransactionLinkClient("tot_profile", base_url=url) as client:
            await measure(lambda: client.workflows.find(EXECUTION_ID), 500, 64)  # warm up
            profiler = Profiler(interval=INTERVAL, async_mode="disabled")
            with profiler:
                await measure(lambda: client.workflows.find(EXECUTION_ID), count, 64)
    finally:
        server.terminate()
        await server.wait()
    report(profiler, flat=True)


async def profile_waiters(count: int) -> None:
    async def never_answers(execution_id: str) -> Lookup:
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")

    async with TransactionLinkClient("tot_profile", base_url="http://127.0.0.1:9") as client:
        client.workflows._poller._fetch = never_answers
        waits = [
            client.workflows.wait_for_completion(str(uuid.uuid4()), timeout=60)
            for _ in range(count)
        ]
        tasks = [asyncio.ensure_future(wait) for wait in waits]
        poller = client.workflows._poller
        profiler = Profiler(interval=INTERVAL, async_mode="disabled")
        with profiler:
            # Every task's first step takes a turn in one iteration; the turns come in
            # batches over the next ones (Poller.admission).
            for _ in range(count):  # bounded: a few iterations in fact
                if poller._waiting == count:
                    break
                await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    report(profiler, flat=True)


async def profile_download(size_mib: int) -> None:
    options = ["--large-result-mib", str(size_mib), "--step-seconds", "0"]
    async with (
        fake_server_process(*options, "--redirect-threshold", "1000") as fake,
        TransactionLinkClient(TOKEN, base_url=fake.url) as client,
    ):
        execution = await client.workflows.initialise(fake.definitions["large-report"])
        await client.workflows.wait_for_completion(execution.id, poll_interval=0.01)
        with tempfile.TemporaryDirectory(prefix="aiotlink-profile-") as folder:
            profiler = Profiler(interval=INTERVAL, async_mode="disabled")
            with profiler:
                await client.workflows.download_result(execution.id, Path(folder) / "r.json")
    report(profiler, flat=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", choices=["decode", "calls", "waiters", "download"])
    parser.add_argument("--count", type=int, help="decodes, calls, waiters or MiB")
    args = parser.parse_args()
    defaults: dict[str, Any] = {
        "decode": 100_000,
        "calls": 20_000,
        "waiters": 10_000,
        "download": 256,
    }
    count = args.count or defaults[args.path]
    if args.path == "decode":
        profile_decode(count)
    elif args.path == "calls":
        asyncio.run(profile_calls(count))
    elif args.path == "waiters":
        asyncio.run(profile_waiters(count))
    else:
        asyncio.run(profile_download(count))


if __name__ == "__main__":
    main()
