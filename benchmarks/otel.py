"""Observability's cost: find() with tracing off and on, against the code before its hooks.

Three sides, each a process of its own pinned to one core, against the server of
``calls.py`` in its own process on the other core. They take turns: a round is a burst
of calls from each side, each round starting with another side, so that what else the
machine does weighs on the sides alike; each ratio is taken within a round:

- before: the package as it was before the observability hooks (git revision
  ``--baseline``, unpacked with ``git archive`` and put first on ``PYTHONPATH``);
- off: this package, not instrumented (the default);
- on: instrumented, with the OpenTelemetry SDK: spans into a ``BatchSpanProcessor``
  whose exporter drops them, metrics into an in-memory reader.

Each burst: ``client.workflows.find()`` at 64 in flight; calls per second and the
client's CPU time per call.

    python benchmarks/otel.py                          # 60 rounds of 1,000 calls
    python benchmarks/otel.py --calls 200 --rounds 1   # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import TOKEN, rounded, spread
from calls import EXECUTION_ID, measure, pin, start_server

HERE = Path(__file__).parent
# The last commit before the hooks (aiotlink/_instrument.py) came in.
BASELINE_REVISION = "02a717a"
SIDES = ("before", "off", "on")
IN_FLIGHT = 64


def prepare(side: str) -> None:
    """Set this process's aiotlink up as ``side`` says, and check it is the right one."""
    import aiotlink

    if side == "on":
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import InMemoryMetricReader
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            SpanExporter,
            SpanExportResult,
        )

        import aiotlink.otel

        class Dropping(SpanExporter):
            def export(self, spans: Sequence[Any]) -> SpanExportResult:
                return SpanExportResult.SUCCESS

        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(BatchSpanProcessor(Dropping()))
        meter_provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
        aiotlink.otel.instrument(tracer_provider, meter_provider)
    hooked = (Path(aiotlink.__file__).parent / "_instrument.py").exists()
    if hooked != (side != "before"):
        raise SystemExit(f"side {side!r} imported the wrong aiotlink: {aiotlink.__file__}")


async def serve_side(side: str, url: str) -> None:
    """A worker: for each count read from stdin, that many calls; one JSON line each."""
    from aiotlink import TransactionLinkClient

    prepare(side)
    pin(0, 1)
    loop = asyncio.get_running_loop()
    async with TransactionLinkClient(TOKEN, base_url=url) as client:

        async def find() -> Any:
            return await client.workflows.find(EXECUTION_ID)

        while line := await loop.run_in_executor(None, sys.stdin.readline):
            measured = await measure(find, int(line), IN_FLIGHT)
            print(json.dumps(measured), flush=True)


class Worker:
    """One side's worker process, measuring on demand."""

    def __init__(self, side: str, url: str, env: dict[str, str]) -> None:
        command = [sys.executable, str(Path(__file__)), "--side", side, "--url", url]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )

    def measure(self, calls: int) -> dict[str, float]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(f"{calls}\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit("a worker stopped (its errors are above)")
        measured: dict[str, float] = json.loads(line)
        return measured

    def stop(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)


def off_path_ns(count: int = 200_000, repeats: int = 7) -> dict[str, float]:
    """Nanoseconds the hook layer adds to each find() while off, timed in this process.

    A find reaches HTTP through ``Requester._retrying``: off, its hook costs a global read
    and two tests around the ``call_with_retries`` the code before it called directly.
    Each side makes that coroutine and closes it unstarted, ``count`` times; the best of
    ``repeats`` runs each, so that what else the machine does weighs least. Unlike calls
    per second, this holds still on a busy machine.
    """
    from aiotlink import TransactionLinkClient
    from aiotlink._retry import call_with_retries
    from aiotlink._transport import send

    client = TransactionLinkClient(TOKEN, base_url="http://127.0.0.1:9")
    requester = client._requester
    policy = requester.retry_policy

    def before() -> None:
        call_with_retries(send, None, None, policy=policy, idempotent=True, description="").close()

    def off() -> None:
        requester._retrying(None, None, idempotent=True, description="").close()

    best = {"before": float("inf"), "off": float("inf")}
    for _ in range(repeats):
        for name, made in (("before", before), ("off", off)):
            started = time.perf_counter_ns()
            for _ in range(count):
                made()
            best[name] = min(best[name], (time.perf_counter_ns() - started) / count)
    return {**best, "added": best["off"] - best["before"]}


def unpack_baseline(revision: str, into: Path) -> bool:
    """The package at ``revision`` in ``into``; False where git or the revision is missing."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(HERE.parent), "archive", revision, "aiotlink"],
            capture_output=True,
            check=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    except (OSError, subprocess.CalledProcessError):
        return False
    return True


async def run(calls: int, rounds: int, baseline: str) -> dict[str, Any]:
    server, url = await start_server()
    results: dict[str, list[dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="aiotlink-before-") as folder:
            sides = SIDES if unpack_baseline(baseline, Path(folder)) else SIDES[1:]
            workers = {}
            for side in sides:
                env = dict(os.environ)
                if side == "before":
                    env["PYTHONPATH"] = os.pathsep.join(
                        [folder, *filter(None, [env.get("PYTHONPATH")])]
                    )
                workers[side] = Worker(side, url, env)
            try:
                for worker in workers.values():  # connections open, caches warm
                    worker.measure(max(calls, IN_FLIGHT))
                results = {side: [] for side in sides}
                for number in range(rounds):
                    order = sides[number % len(sides) :] + sides[: number % len(sides)]
                    for side in order:
                        results[side].append(workers[side].measure(calls))
            finally:
                for worker in workers.values():
                    worker.stop()
    finally:
        server.terminate()
        await server.wait()
    report = summarise(results, calls, rounds, baseline)
    report["off_path_ns"] = off_path_ns()
    # What the layer adds, in percent of a find's CPU time before it (a percentage, so
    # that the report's rounding to 3 decimals keeps it).
    if "before" in results:
        added_us = report["off_path_ns"]["added"] / 1000
        percent = 100 * added_us / report["before_cpu_us_per_call"]["median"]
        report["off_path_percent"] = percent
        report["targets"]["off_path_under_2_percent"] = percent < 2
    return report


def summarise(
    results: dict[str, list[dict[str, float]]], calls: int, rounds: int, baseline: str
) -> dict[str, Any]:
    def ratio(side: str, base: str, key: str) -> dict[str, float]:
        pairs = zip(results[side], results[base], strict=True)
        return spread([mine[key] / theirs[key] for mine, theirs in pairs])

    report: dict[str, Any] = {
        "calls": calls,
        "rounds": rounds,
        "in_flight": IN_FLIGHT,
        "baseline": baseline if "before" in results else None,
    }
    for side, measured in results.items():
        for key in ("per_second", "cpu_us_per_call"):
            report[f"{side}_{key}"] = spread([one[key] for one in measured])
    report["on_rate_vs_off"] = ratio("on", "off", "per_second")
    report["on_cpu_vs_off"] = ratio("on", "off", "cpu_us_per_call")
    if "before" in results:
        report["off_rate_vs_before"] = ratio("off", "before", "per_second")
        report["off_cpu_vs_before"] = ratio("off", "before", "cpu_us_per_call")
        report["targets"] = {
            "off_rate_at_least_0.98_of_before": report["off_rate_vs_before"]["median"] >= 0.98
        }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="per side and round")
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--baseline", default=BASELINE_REVISION, help="git revision of before")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side is not None:
        asyncio.run(serve_side(args.side, args.url))
        return
    report = asyncio.run(run(args.calls, args.rounds, args.baseline))
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
