"""Processes for the tests and the benchmark of durable following: the fake, arq workers."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "tot_durable_following_tests_0123456789"


class FakeProcess:
    """``python -m aiotlink.testing`` on a free port, logging every request to a file."""

    def __init__(self, directory: Path, *extra: str) -> None:
        self.log = directory / "requests.log"
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "aiotlink.testing",
                "--port",
                "0",
                "--token",
                TOKEN,
                "--request-log",
                str(self.log),
                *extra,
            ],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()
        found = re.search(r"listening on (http://\S+)", first)
        if found is None:
            self.process.kill()
            raise RuntimeError(f"the fake did not start: {first!r}")
        self.url = found.group(1)
        banner = ""
        while "Ctrl-C" not in banner:
            line = self.process.stdout.readline()
            if not line:
                break
            banner += line
        self.definitions = {
            name: definition
            for definition, name in re.findall(r"^\s+([0-9a-f-]{36})\s+(\S+)", banner, re.M)
        }

    def stop(self) -> None:
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a fake that ignores SIGTERM for 10 s
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def finds(self) -> dict[str, list[tuple[float, str]]]:
        """Each execution's lookups: (time, "ok" or the fault answered), in order."""
        by_execution: dict[str, list[tuple[float, str]]] = {}
        for line in self.log.read_text().splitlines():
            at, route, path, marker = line.split(" ")
            if route == "find":
                by_execution.setdefault(path.rsplit("/", 1)[1], []).append((float(at), marker))
        return by_execution


class Workers:
    """arq worker processes (``python -m arq tests.arq_worker.WorkerSettings``)."""

    def __init__(self, redis_port: int, fake_url: str, outcomes: Path, **environment: str) -> None:
        self.environment = {
            **os.environ,
            "AIOTLINK_TEST_REDIS_PORT": str(redis_port),
            "AIOTLINK_TEST_OUTCOMES": str(outcomes),
            "TRANSACTIONLINK_TOKEN": TOKEN,
            "TRANSACTIONLINK_BASE_URL": fake_url,
            **environment,
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs = outcomes.parent

    def start(self, module: str = "tests.arq_worker.WorkerSettings") -> subprocess.Popen[bytes]:
        # Closed here once the child has it: the child keeps its own descriptor.
        with (self.logs / f"worker-{len(self.processes)}.log").open("wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "arq", module],
                env=self.environment,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.processes.append(process)
        return process

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in self.processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            if process.poll() is None:
                process.kill()
                process.wait()


@contextlib.contextmanager
def fake_and_workers(
    directory: Path, redis_port: int, workers: int, *fake_options: str, **environment: str
) -> Iterator[tuple[FakeProcess, Workers]]:
    fake = FakeProcess(directory, *fake_options)
    pool = Workers(redis_port, fake.url, directory / "outcomes.log", **environment)
    try:
        for _ in range(workers):
            pool.start()
        yield fake, pool
    finally:
        pool.stop()
        fake.stop()


def outcome_lines(path: Path) -> list[list[str]]:
    if not path.exists():
        return []
    return [line.split(" ") for line in path.read_text().splitlines()]
