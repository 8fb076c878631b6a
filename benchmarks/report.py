"""Run every benchmark, each in a fresh process, and write benchmarks/RESULTS.md.

    python benchmarks/report.py            # what `nox -s bench` runs (about 10 minutes)
    python benchmarks/report.py --smoke    # tiny counts: checks they all still run

The smoke run writes its report to a temporary file, never over RESULTS.md.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import run_script

HERE = Path(__file__).parent
FULL = {
    "calls": ["--calls", "5000", "--httpx-calls", "600", "--rounds", "3"],
    "decode": ["--count", "5000", "--rounds", "20"],
    "waiters": ["--waiters", "10000"],
    # as_completed's measure: setting up 100,000 executions takes about half a minute,
    # so each step of theirs is longer than that.
    "waiters_100k": ["--waiters", "100000", "--rounds", "1", "--step-seconds", "40"],
    "download": ["--mib", "1024", "--rounds", "6"],
    "webhooks": ["--executions", "1000", "--spread", "30", "--rounds", "1"],
    "otel": ["--calls", "1000", "--rounds", "60"],
    # Started 200 a second, a load two cores serve on both sides (NOTES.md, "Durable
    # following"); all at once, both sides run short of CPU.
    "durable": ["--executions", "100000", "--workers", "4", "--rate", "200"],
}
SMOKE = {
    "calls": ["--calls", "64", "--httpx-calls", "64", "--rounds", "1"],
    "decode": ["--count", "100", "--rounds", "1"],
    "waiters": ["--waiters", "50", "--rounds", "1"],
    "download": [
        *("--mib", "8", "--rounds", "1", "--settle", "0"),
        *("--concurrency", "2,4", "--concurrent-mib", "1"),
    ],
    "webhooks": ["--executions", "20", "--spread", "2", "--setup-seconds", "0.5"],
    "otel": ["--calls", "200", "--rounds", "1"],
    "durable": ["--smoke"],
}
LIBRARIES = ("aiotlink", "aiohttp", "yarl", "attrs", "cattrs", "msgspec", "tenacity", "httpx")
LIBRARIES += ("pydantic", "pydantic-core", "joserfc", "cryptography")
LIBRARIES += ("opentelemetry-api", "opentelemetry-sdk")


# Measures that run a script of another name.
SCRIPTS = {"waiters_100k": "waiters"}


def run_benchmark(name: str, arguments: list[str]) -> dict[str, Any]:
    """Run the benchmark's script in its own process; its JSON report."""
    script = SCRIPTS.get(name, name)
    print(f"running {script} {' '.join(arguments)}", flush=True)
    started = time.monotonic()
    report = run_script([sys.executable, str(HERE / f"{script}.py"), *arguments], timeout=3600)
    report["seconds"] = round(time.monotonic() - started)
    return report


def machine() -> list[str]:
    model = "unknown CPU"
    if Path("/proc/cpuinfo").exists():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = ""
    if Path("/proc/meminfo").exists():
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB memory"
    return [
        f"- Machine: {platform.machine()}, {os.cpu_count()} cores ({model}){memory}, "
        f"{platform.system()} {platform.release()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()})",
        "- Libraries: "
        + ", ".join(f"{name} {importlib.metadata.version(name)}" for name in LIBRARIES),
    ]


def cell(spread: dict[str, float], digits: int = 1) -> str:
    """A measurement as ``median (min to max)``."""
    return (
        f"{spread['median']:.{digits}f} ({spread['min']:.{digits}f} to {spread['max']:.{digits}f})"
    )


def verdict(met: bool) -> str:
    return "met" if met else "**missed**"


def calls_section(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Call overhead: `client.workflows.find()` vs raw aiohttp and httpx",
        "",
        f"{report['calls']} calls per side and level ({report['httpx_calls']} for httpx), "
        f"{report['rounds']} rounds, round-robin; server in its own process on its own core.",
        "The targets apply at 64 in flight.",
        "",
        "| in flight | side | calls/s | client CPU µs/call |",
        "|---:|---|---:|---:|",
    ]
    for level in (1, 8, 64):
        data = report[f"in_flight_{level}"]
        lines += [
            f"| {level} | {side} | {cell(data[f'{side}_per_second'], 0)} "
            f"| {cell(data[f'{side}_cpu_us_per_call'])} |"
            for side in ("aiohttp", "aiotlink", "httpx")
        ]
    lines += ["", "| in flight | rate vs aiohttp | CPU vs aiohttp | rate vs httpx |"]
    lines.append("|---:|---:|---:|---:|")
    for level in (1, 8, 64):
        data = report[f"in_flight_{level}"]
        lines.append(
            f"| {level} | {cell(data['rate_vs_aiohttp'], 3)} | {cell(data['cpu_vs_aiohttp'], 3)} "
            f"| {cell(data['rate_vs_httpx'], 1)} |"
        )
    return [*lines, ""]


def decode_section(report: dict[str, Any]) -> list[str]:
    lines = [
        "## Decode: one execution body to a typed, frozen object",
        "",
        f"{report['count']} decodes per side, {report['rounds']} rounds; µs per object.",
        "",
        "| way | µs per object |",
        "|---|---:|",
    ]
    for name, spread in report["microseconds"].items():
        lines.append(f"| {name} | {cell(spread, 2)} |")
    lines += [
        "",
        f"aiotlink / pydantic v2: dict {cell(report['ratio_to_pydantic_dict'], 2)}, "
        f"bytes {cell(report['ratio_to_pydantic_bytes'], 2)}.",
        "",
    ]
    return lines


def waiters_section(report: dict[str, Any]) -> list[str]:
    baseline, batch = report["aiohttp"], report["as_completed"]

    def sides(key: str, digits: int = 0) -> str:
        return " | ".join(cell(side[key], digits) for side in (report, batch, baseline))

    def ratio(key: str) -> str:
        value = report[f"{key}_vs_aiohttp"]
        return "" if value is None else cell(value, 2)

    allows = report["schedule_allows_per_execution"]
    completed = " | ".join(str(side["all_completed"]) for side in (report, batch, baseline))
    rows = [
        ("all returned COMPLETED", completed, ""),
        ("wait, seconds", sides("wait_seconds", 1), ""),
        ("peak RSS, MiB", sides("peak_rss_mib"), ratio("peak_rss_mib")),
        ("connections opened", sides("connections_opened"), ""),
        (
            f"polls per execution (the schedule allows {allows})",
            sides("polls_per_execution", 2),
            "",
        ),
        ("worst loop lag, ms", sides("worst_loop_lag_ms"), ratio("worst_loop_lag_ms")),
        ("p99 loop lag, ms", sides("p99_loop_lag_ms"), ""),
        ("full GC collections", sides("full_gc_collections"), ""),
        ("worst full GC pause, ms", sides("worst_full_gc_ms"), ratio("worst_full_gc_ms")),
    ]
    lines = [
        f"## {report['waiters']:,} concurrent waits: `wait_for_completion` and `as_completed`",
        "",
        f"{report['rounds']} round{'s' if report['rounds'] != 1 else ''}, each side in a fresh"
        " process, each round starting with",
        "another side. `wait_for_completion`: one call per execution under `asyncio.gather`;",
        "`as_completed`: one iterator over every id. The baseline is where the team's",
        "design/PERFORMANCE.md started: raw aiohttp, a task per execution that GETs, decodes",
        "and sleeps on the same schedule, on one session with the same connection limit.",
        "",
        "| measure | wait_for_completion | as_completed | raw aiohttp | wait_for_completion"
        " / aiohttp |",
        "|---|---:|---:|---:|---:|",
    ]
    lines += [f"| {name} | {values} | {ratio_} |" for name, values, ratio_ in rows]
    floor = cell(report["asyncio_floor_worst_loop_lag_ms"], 0)
    lines += [
        "",
        f"asyncio alone, {report['waiters']:,} tasks started together that only await a future"
        f" (no HTTP, no client): worst loop lag {floor} ms.",
    ]
    return [*lines, ""]


def download_section(report: dict[str, Any]) -> list[str]:
    lines = [
        f"## A {report['size_mib']} MiB redirected result to disk",
        "",
        f"{report['rounds']} rounds, each starting with the next side in turn.",
        "",
        "| side | MB/s |",
        "|---|---:|",
        f"| raw aiohttp to a file | {cell(report['aiohttp_mb_per_s'], 0)} |",
        f"| raw aiohttp to a file, then fsync | {cell(report['aiohttp_fsync_mb_per_s'], 0)} |",
        f"| `download_result` | {cell(report['aiotlink_mb_per_s'], 0)} |",
    ]
    if "curl_mb_per_s" in report:
        lines.append(f"| `curl -o` | {cell(report['curl_mb_per_s'], 0)} |")
    lines += [
        "",
        f"Ratio to raw aiohttp {cell(report['ratio_to_aiohttp'], 3)}; to raw aiohttp with "
        f"the fsync {cell(report['ratio_to_aiohttp_with_fsync'], 3)}. Peak RSS growth "
        f"{cell(report['aiotlink_peak_rss_growth_mib'])} MiB; worst loop lag "
        f"{cell(report['aiotlink_worst_loop_lag_ms'])} ms.",
        "",
    ]
    return lines + concurrent_download_lines(report.get("concurrent", []))


def concurrent_download_lines(shapes: list[dict[str, Any]]) -> list[str]:
    """The table of downloads at concurrency, when the report has one."""
    if not shapes:
        return []
    lines = [
        "### Downloads at concurrency",
        "",
        f"{shapes[0]['rounds']} round{'s' if shapes[0]['rounds'] != 1 else ''} per count, each"
        " side in a fresh process, each round starting with",
        "the other side. Every download has its own execution and file, all started together",
        "with `asyncio.gather`. Raw aiohttp asks the API for the URL, streams it in 1 MiB",
        "chunks and fsyncs, on one session. Peak RSS growth is the whole process's, from just",
        "before the downloads (ru_maxrss); MB/s over the whole batch; threads are the most",
        "alive at once (sampled every 10 ms). The RSS target compares both sides' worst rounds.",
        "",
        "| downloads | side | peak RSS growth, MiB | MB/s | worst loop lag, ms | threads |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for shape in shapes:
        for side, name in (("aiohttp_fsync", "raw aiohttp, fsync"), ("aiotlink", "aiotlink")):
            data = shape[side]
            lines.append(
                f"| {shape['downloads']} x {shape['size_mib']} MiB | {name} "
                f"| {cell(data['peak_rss_growth_mib'])} | {cell(data['mb_per_s'], 0)} "
                f"| {cell(data['worst_loop_lag_ms'])} | {cell(data['peak_threads'], 0)} |"
            )
    lines += [
        "",
        "| downloads | RSS growth over raw aiohttp's, MiB | MB/s vs raw aiohttp |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {shape['downloads']} x {shape['size_mib']} MiB "
        f"| {cell(shape['rss_growth_over_aiohttp_fsync_mib'])} "
        f"| {cell(shape['ratio_to_aiohttp_fsync'], 3)} |"
        for shape in shapes
    ]
    return [*lines, ""]


def webhooks_section(report: dict[str, Any]) -> list[str]:
    hooked, polled = report["webhooks"], report["polling"]
    interval = report["webhook_poll_interval"]
    start = "the start of the waits"
    if report["lead_seconds"]:
        start = f"{report['lead_seconds']:g} s after {start}"

    def both(key: str, digits: int = 2) -> str:
        return f"{cell(hooked[key], digits)} | {cell(polled[key], digits)}"

    def latency(key: str) -> str:
        return f"{cell(hooked['latency_ms'][key], 1)} | {cell(polled['latency_ms'][key], 0)}"

    rows = [
        ("all returned COMPLETED", f"{hooked['all_completed']} | {polled['all_completed']}"),
        ("status change to wait returned, p50, ms", latency("p50")),
        ("status change to wait returned, p99, ms", latency("p99")),
        ("status change to wait returned, max, ms", latency("max")),
        ("GETs per execution (finds)", both("gets_per_execution")),
        ("most GETs of one execution", both("most_gets_one_execution", 0)),
        ("webhook key fetches", both("key_fetches", 0)),
        ("worst loop lag, ms", both("worst_loop_lag_ms", 1)),
    ]
    lines = [
        f"## Waits fed by webhooks: {report['executions']:,} executions ending over "
        f"{report['spread_seconds']:g} s",
        "",
        f"{report['rounds']} round{'s' if report['rounds'] != 1 else ''}, each side in a fresh"
        " process, the fake in the same process and event loop as the",
        "client (its signing and serving count against the latency). The same seeded plan on",
        f"both sides: end times uniform over the spread from {start}, a quarter through",
        "AWAITING half-way. Webhooks: the client's aiohttp receiver, and waits with",
        f"`poll_interval={interval:g}, max_poll_interval={interval:g}`. Polling: the default",
        "schedule (1 s, x1.5, up to 15 s), the fake's webhooks going to a sink. Latency: from",
        "the change on the fake (its webhook's `occurredAt`) to the wait returning.",
        "",
        "| measure | webhooks | polling |",
        "|---|---:|---:|",
    ]
    lines += [f"| {name} | {values} |" for name, values in rows]
    lines += [
        "",
        "Where the webhook side's latency goes, ms:",
        "",
        "| part | p50 | p99 | max |",
        "|---|---:|---:|---:|",
    ]
    parts = (
        ("the fake: change to the POST sent (timer, signing, its queue)", "fake_to_post_ms"),
        ("delivery: POST sent to the event handed over (HTTP, verification)", "post_to_event_ms"),
        ("the nudged lookup: event to the wait returning", "event_to_return_ms"),
    )
    lines += [
        f"| {name} | "
        + " | ".join(cell(hooked[key][part], 1) for part in ("p50", "p99", "max"))
        + " |"
        for name, key in parts
    ]
    lines += [
        "",
        f"Polling makes {cell(report['polling_gets_over_webhooks'], 2)} times the GETs.",
        f"Waits ended by a poll before their webhook: {cell(hooked['ended_by_poll'], 0)}.",
        "",
    ]
    return lines


def otel_section(report: dict[str, Any]) -> list[str]:
    sides = [("before", "before the hooks"), ("off", "tracing off"), ("on", "tracing on")]
    sides = [(side, name) for side, name in sides if f"{side}_per_second" in report]
    lines = [
        "## Observability when off: `find()` before the hooks, with tracing off, and on",
        "",
        f"{report['rounds']} rounds of {report['calls']} calls per side at"
        f" {report['in_flight']} in flight; each side is a process of its own,",
        "the sides take turns (each round starting with another), and each ratio is taken",
        "within a round. The server is the call benchmark's, in its own process on its own",
        f"core. Before: the package at git revision {report['baseline'] or '(no git: not run)'};",
        "on: instrumented with the OpenTelemetry SDK (spans to a `BatchSpanProcessor` whose",
        "exporter drops them, metrics to an in-memory reader).",
        "",
        "| side | calls/s | client CPU µs/call |",
        "|---|---:|---:|",
    ]
    lines += [
        f"| {name} | {cell(report[f'{side}_per_second'], 0)} "
        f"| {cell(report[f'{side}_cpu_us_per_call'])} |"
        for side, name in sides
    ]
    lines.append("")
    if report["baseline"] is not None:
        lines.append(
            "Tracing off against before the hooks: calls/s"
            f" {cell(report['off_rate_vs_before'], 3)}, CPU per call"
            f" {cell(report['off_cpu_vs_before'], 3)}."
        )
    cost = report["off_path_ns"]
    lines += [
        f"Tracing on against off: calls/s {cell(report['on_rate_vs_off'], 3)}, CPU per call"
        f" {cell(report['on_cpu_vs_off'], 3)}.",
        "",
        "Calls per second move by more than 2% from burst to burst on a shared machine; what",
        "the hooks add while off is also timed alone, in one process (best of 7 runs of",
        "200,000): the path of every API call, `Requester._retrying`, makes its coroutine in"
        f" {cost['off']:.0f} ns",
        f"against {cost['before']:.0f} ns for the direct call it wraps: {cost['added']:.0f} ns"
        " more per call"
        + (
            f", {report['off_path_percent']:.2f}% of a find's CPU time before the hooks."
            if "off_path_percent" in report
            else "."
        ),
        "",
    ]
    return lines


def durable_section(report: dict[str, Any]) -> list[str]:
    local, remote = report["in_process"], report["durable"]
    rate = report.get("rate", "all at once")
    started = (
        f"{rate:g} a second, and follows each batch as soon as it exists: in-process with a"
        " `wait_for_completion` each"
        if isinstance(rate, (int, float))
        else "all at once, then follows them all: in-process with one `as_completed`"
    )
    return [
        f"## Durable following: {report['executions']:,} executions, {report['workers']}"
        " arq worker processes",
        "",
        "One fake (its own process) and a real Redis (AOF on). Each side starts its own",
        f"executions (each ends {2 * report['step_seconds']:g} s after it started) {started};",
        "durably with `follow` and the workers.",
        "The floor is when the schedule, without jitter, would see the last one end.",
        "",
        "| measure | in-process | durable |",
        "|---|---:|---:|",
        f"| GETs per execution | {local['gets_per_execution']:.2f}"
        f" | {remote['gets_per_execution']:.2f} |",
        f"| drain, s (floor) | {local['seconds']:.1f} ({local['floor_seconds']:.1f})"
        f" | {remote['seconds']:.1f} ({remote['floor_seconds']:.1f}) |",
        f"| Redis commands per poll | | {remote['redis_commands_per_poll']:.1f} |",
        f"| peak RSS per worker, MiB | | {max(remote['peak_rss_mib']):.0f} |",
        f"| handlers run, once each | | {remote['handled']:,}, {remote['handled_once']:,} |",
        "",
    ]


def concurrent_target_rows(shapes: list[dict[str, Any]]) -> list[tuple[str, float, bool]]:
    """The targets of downloads at concurrency, per count."""
    rows = []
    for shape in shapes:
        name = f"{shape['downloads']} x {shape['size_mib']} MiB downloads"
        targets = shape["targets"]
        rows += [
            (f"{name}: peak RSS growth <= raw aiohttp's + 16 MiB (max over max)",
             shape["rss_growth_worst_over_aiohttp_fsync_worst_mib"],
             targets["rss_growth_within_16_mib_of_aiohttp"]),
            (f"{name}: MB/s >= 0.9 x raw aiohttp with fsync",
             shape["ratio_to_aiohttp_fsync"]["median"], targets["ratio_at_least_0.9"]),
            (f"{name}: worst loop lag < 50 ms (max)",
             shape["aiotlink"]["worst_loop_lag_ms"]["max"], targets["loop_lag_under_50_ms"]),
        ]  # fmt: skip
    return rows


def targets_section(reports: dict[str, dict[str, Any]]) -> list[str]:
    calls, decode = reports["calls"]["in_flight_64"], reports["decode"]
    waiters, download = reports["waiters"], reports["download"]
    rows = [
        ("calls/s at 64 in flight >= 0.85 x raw aiohttp", calls["rate_vs_aiohttp"]["median"],
         reports["calls"]["targets"]["rate_at_least_0.85_of_aiohttp"]),
        ("client CPU per call at 64 <= 1.2 x raw aiohttp", calls["cpu_vs_aiohttp"]["median"],
         reports["calls"]["targets"]["cpu_at_most_1.2x_aiohttp"]),
        ("calls/s at 64 >= 10 x httpx", calls["rate_vs_httpx"]["median"],
         reports["calls"]["targets"]["rate_at_least_10x_httpx"]),
        ("decode dict <= 1.5 x pydantic v2", decode["ratio_to_pydantic_dict"]["median"],
         decode["targets"]["at_most_1.5x_pydantic_dict"]),
        ("decode bytes <= 1.5 x pydantic v2", decode["ratio_to_pydantic_bytes"]["median"],
         decode["targets"]["at_most_1.5x_pydantic_bytes"]),
        ("10,000 waiters: peak RSS < 300 MiB (max)", waiters["peak_rss_mib"]["max"],
         waiters["targets"]["peak_rss_under_300_mib"]),
        ("10,000 waiters: worst loop lag < 100 ms", waiters["worst_loop_lag_ms"]["median"],
         waiters["targets"]["worst_loop_lag_under_100_ms"]),
        ("10,000 waiters: polls within the schedule (max)",
         waiters["polls_per_execution"]["max"],
         waiters["targets"]["polls_within_schedule"]),
        ("download >= 0.9 x raw aiohttp", download["ratio_to_aiohttp"]["median"],
         download["targets"]["ratio_at_least_0.9"]),
        ("download peak RSS growth < 32 MiB (max)",
         download["aiotlink_peak_rss_growth_mib"]["max"],
         download["targets"]["rss_growth_under_32_mib"]),
        ("download worst loop lag < 50 ms (max)", download["aiotlink_worst_loop_lag_ms"]["max"],
         download["targets"]["loop_lag_under_50_ms"]),
    ]  # fmt: skip
    if "waiters_100k" in reports:
        batch = reports["waiters_100k"]["as_completed"]
        met_100k = batch["targets"]
        rows += [
            ("100,000 as_completed: peak RSS < 250 MiB (max)", batch["peak_rss_mib"]["max"],
             met_100k["peak_rss_under_250_mib"]),
            ("100,000 as_completed: p99 loop lag < 50 ms (max)",
             batch["p99_loop_lag_ms"]["max"], met_100k["p99_loop_lag_under_50_ms"]),
            ("100,000 as_completed: worst loop lag < 300 ms (max)",
             batch["worst_loop_lag_ms"]["max"], met_100k["worst_loop_lag_under_300_ms"]),
            ("100,000 as_completed: polls within the schedule (max)",
             batch["polls_per_execution"]["max"], met_100k["polls_within_schedule"]),
        ]  # fmt: skip
    rows += concurrent_target_rows(download.get("concurrent", []))
    hooks = reports["webhooks"]
    hooked, met = hooks["webhooks"], hooks["targets"]
    rows += [
        ("webhook waits: p50 latency < 20 ms (max)", hooked["latency_ms"]["p50"]["max"],
         met["p50_under_20_ms"]),
        ("webhook waits: p99 latency < 200 ms (max)", hooked["latency_ms"]["p99"]["max"],
         met["p99_under_200_ms"]),
        ("webhook waits: GETs per execution <= 2.5 (max)", hooked["gets_per_execution"]["max"],
         met["at_most_2.5_gets_per_execution"]),
        ("webhook waits: >= 3x fewer GETs than polling (min)",
         hooks["polling_gets_over_webhooks"]["min"], met["at_least_3x_fewer_gets"]),
    ]  # fmt: skip
    if "targets" in reports.get("otel", {}):
        otel = reports["otel"]
        rows += [
            ("find() calls/s with tracing off >= 0.98 x before the hooks",
             otel["off_rate_vs_before"]["median"],
             otel["targets"]["off_rate_at_least_0.98_of_before"]),
            ("hooks off: time added per call < 2% of a find's CPU, in %", otel["off_path_percent"],
             otel["targets"]["off_path_under_2_percent"]),
        ]  # fmt: skip
    if "durable" in reports:
        durable, met = reports["durable"], reports["durable"]["targets"]
        remote = durable["durable"]
        rows += [
            ("durable: GETs per execution within 10% of in-process (ratio)",
             remote["gets_per_execution"] / durable["in_process"]["gets_per_execution"],
             met["gets_within_10_percent_of_in_process"]),
            ("durable: drain <= 1.25 x the schedule's floor", remote["drain_over_floor"],
             met["drain_within_1.25x_floor"]),
            ("durable: peak RSS per worker < 200 MiB", max(remote["peak_rss_mib"]),
             met["worker_rss_under_200_mib"]),
        ]  # fmt: skip
    lines = [
        "## Targets",
        "",
        "Measured: the median over the rounds, or the worst round where marked (max).",
        "",
        "| target | measured | |",
        "|---|---:|---|",
    ]
    lines += [f"| {name} | {value:.3g} | {verdict(met)} |" for name, value, met in rows]
    return [*lines, ""]


def write(reports: dict[str, dict[str, Any]], target: Path, smoke: bool) -> None:
    command = "python benchmarks/report.py --smoke" if smoke else "nox -s bench"
    lines = [
        "# Benchmark results",
        "",
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')}. Every ratio "
        "compares sides measured in the same run; medians with (min to max) over the rounds.",
        "Each ratio is the median of the per-round ratios, so it need not equal the ratio of",
        "the medians shown.",
        "Rerun with `nox -s bench`; the scripts are in this folder, one per measure.",
        "",
        *machine(),
        "",
        *targets_section(reports),
        *calls_section(reports["calls"]),
        *decode_section(reports["decode"]),
        *waiters_section(reports["waiters"]),
        *(waiters_section(reports["waiters_100k"]) if "waiters_100k" in reports else []),
        *download_section(reports["download"]),
        *webhooks_section(reports["webhooks"]),
        *(otel_section(reports["otel"]) if "otel" in reports else []),
        *(durable_section(reports["durable"]) if "durable" in reports else []),
    ]
    notes = HERE / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text().rstrip(), ""]
    target.write_text("\n".join(lines))
    print(f"wrote {target}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny counts; not RESULTS.md")
    args = parser.parse_args()
    if importlib.util.find_spec("joserfc") is None:
        # Said now, not after the other benchmarks' minutes.
        raise SystemExit('webhooks.py needs the "webhooks" extra: pip install -e ".[webhooks]"')
    plan = SMOKE if args.smoke else FULL
    reports = {name: run_benchmark(name, arguments) for name, arguments in plan.items()}
    if args.smoke:
        target = Path(tempfile.mkdtemp(prefix="aiotlink-bench-")) / "RESULTS.md"
    else:
        target = HERE / "RESULTS.md"
    write(reports, target, args.smoke)


if __name__ == "__main__":
    main()
