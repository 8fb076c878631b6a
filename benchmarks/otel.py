"""Observability's cost: find() with tracing off and on, against the code before its hooks.

Three sides, measured in turn in fresh processes pinned to one core, against the server
of ``calls.py`` in its own process on the other core, each round starting with another
side:

- before: the package as it was before the observability hooks (git revision
  ``--baseline``, unpacked with ``git archive`` and put first on ``PYTHONPATH``);
- off: this package, not instrumented (the default);
- on: instrumented, with the OpenTelemetry SDK: spans into a ``BatchSpanProcessor``
  whose exporter drops them, metrics into an in-memory reader.

Each side: ``client.workflows.find()`` at 64 in flight, the median of a few runs in the
process; calls per second and the client's CPU time per call.

    python benchmarks/otel.py                          # 7 rounds
    python benchmarks/otel.py --calls 200 --rounds 1   # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _common import TOKEN, rounded, run_script, spread
from calls import EXECUTION_ID, measure, pin, start_server

HERE = Path(__file__).parent
# The last commit before the hooks (aiotlink/_instrument.py) came in.
BASELINE_REVISION = "02a717a"
SIDES = ("before", "off", "on")
IN_FLIGHT = 64


async def one_side(side: str, url: str, calls: int, repeats: int) -> dict[str, Any]:
    """Measure this process's aiotlink (the side says how) ``repeats`` times; the medians."""
    import aiotlink
    from aiotlink import TransactionLinkClient

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
    pin(0, 1)
    async with TransactionLinkClient(TOKEN, base_url=url) as client:

        async def find() -> Any:
            return await client.workflows.find(EXECUTION_ID)

        await measure(find, max(calls // 5, IN_FLIGHT), IN_FLIGHT)  # connections, caches
        runs = [await measure(find, calls, IN_FLIGHT) for _ in range(repeats)]
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


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


async def run(calls: int, rounds: int, repeats: int, baseline: str) -> dict[str, Any]:
    server, url = await start_server()
    results: dict[str, list[dict[str, float]]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="aiotlink-before-") as folder:
            sides = SIDES if unpack_baseline(baseline, Path(folder)) else SIDES[1:]
            results = {side: [] for side in sides}
            for number in range(rounds):
                order = sides[number % len(sides) :] + sides[: number % len(sides)]
                for side in order:
                    env = dict(os.environ)
                    if side == "before":
                        env["PYTHONPATH"] = os.pathsep.join(
                            [folder, *filter(None, [env.get("PYTHONPATH")])]
                        )
                    command = [sys.executable, str(Path(__file__)), "--side", side, "--url", url]
                    command += ["--calls", str(calls), "--repeats", str(repeats)]
                    results[side].append(run_script(command, timeout=600, env=env))
    finally:
        server.terminate()
        await server.wait()
    return summarise(results, calls, rounds, repeats, baseline)


def summarise(
    results: dict[str, list[dict[str, float]]],
    calls: int,
    rounds: int,
    repeats: int,
    baseline: str,
) -> dict[str, Any]:
    def ratio(side: str, base: str, key: str) -> dict[str, float]:
        pairs = zip(results[side], results[base], strict=True)
        return spread([mine[key] / theirs[key] for mine, theirs in pairs])

    report: dict[str, Any] = {
        "calls": calls,
        "rounds": rounds,
        "repeats": repeats,
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
    parser.add_argument("--calls", type=int, default=5000, help="per measured run")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3, help="measured runs per process")
    parser.add_argument("--baseline", default=BASELINE_REVISION, help="git revision of before")
    parser.add_argument("--side", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side is not None:
        report = asyncio.run(one_side(args.side, args.url, args.calls, args.repeats))
    else:
        report = asyncio.run(run(args.calls, args.rounds, args.repeats, args.baseline))
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
