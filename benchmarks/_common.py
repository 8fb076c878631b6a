"""What the benchmarks share: the fake server in its own process, and the meters."""

from __future__ import annotations

import asyncio
import json
import re
import resource
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs

TOKEN = "tot_benchmark_000000000000000000"
TICK = 0.01  # seconds between two wake-ups of the loop-lag meter


@attrs.frozen
class FakeProcess:
    """The fake server as another process: its URL and its definitions' ids by name."""

    url: str
    definitions: dict[str, str]


@asynccontextmanager
async def fake_server_process(*options: str) -> AsyncIterator[FakeProcess]:
    """Run ``python -m aiotlink.testing`` on a free port until the block ends."""
    command = [sys.executable, "-m", "aiotlink.testing", "--port", "0", "--token", TOKEN]
    process = await asyncio.create_subprocess_exec(
        *command, *options, stdout=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    banner = ""
    while "Ctrl-C" not in banner:
        line = await process.stdout.readline()
        assert line, f"the fake server stopped: {banner}"
        banner += line.decode()
    try:
        url = re.search(r"listening on (\S+)", banner)
        assert url is not None, banner
        listed = re.findall(r"^\s+(\S+)\s+(\S+)\s{2,}INITIALISED", banner, re.MULTILINE)
        yield FakeProcess(url[1], {name: definition for definition, name in listed})
    finally:
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), timeout=30)


def run_script(command: list[str], *, timeout: float) -> dict[str, Any]:
    """Run a benchmark script in a fresh interpreter; the JSON report it prints.

    Its warnings and errors go to our stderr as they come.
    """
    finished = subprocess.run(
        command, stdout=subprocess.PIPE, text=True, check=False, timeout=timeout
    )
    if finished.returncode != 0:
        raise SystemExit(f"{' '.join(command[1:])} failed (its errors are above)")
    report: dict[str, Any] = json.loads(finished.stdout)
    return report


def rss_bytes() -> int:
    """This process's resident set size now, in bytes (Linux)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class Meters:
    """While running: the event loop's worst lag and the peak RSS above the start."""

    def __init__(self) -> None:
        self.worst_lag = 0.0
        self.peak_rss_growth = 0
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Meters:
        self._task = asyncio.create_task(self._watch(rss_bytes()))
        await asyncio.sleep(0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._stop.set()
        assert self._task is not None
        await self._task

    async def _watch(self, baseline: int) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            expected = loop.time() + TICK
            await asyncio.sleep(TICK)
            self.worst_lag = max(self.worst_lag, loop.time() - expected)
            self.peak_rss_growth = max(self.peak_rss_growth, rss_bytes() - baseline)


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a measurement's rounds."""
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def rounded(report: Any, digits: int = 3) -> Any:
    """``report`` with every float rounded, for printing."""
    if isinstance(report, float):
        return round(report, digits)
    if isinstance(report, dict):
        return {key: rounded(value, digits) for key, value in report.items()}
    if isinstance(report, list):
        return [rounded(value, digits) for value in report]
    return report


class FullCollections:
    """Counts and times CPython's full (generation 2) collections while in gc.callbacks."""

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
