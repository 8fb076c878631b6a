"""Redirected results to disk: download_result against raw aiohttp and curl.

The fake runs in its own process and serves the results from its S3-like storage.

**One download.** Each round runs, one after the other, raw aiohttp streaming a 1 GiB
result's pre-signed URL to a file (1 MiB chunks, as fast as aiohttp goes), the same
plus the one fsync durability needs, ``download_result`` (which also asks the API for
the URL, checks the length, fsyncs and renames), and ``curl -o`` where present. Reports
MB/s, the ratios to raw aiohttp (with and without the fsync), peak RSS growth and the
worst loop lag.

**Downloads at concurrency** (``--concurrency``): for each count N, N executions, each
with its own result and its own target file, downloaded together with
``asyncio.gather`` in one process. N = 1 downloads one ``--mib`` result, larger N
``--concurrent-mib`` each (by default 1 x 1 GiB, 20 x 12 MiB and 100 x 12 MiB). The
baseline is raw aiohttp on one session doing the same job per download: ask the API for
the result, stream the pre-signed URL in 1 MiB chunks, fsync. Each side runs in a fresh
process per round (peak RSS is per process and never goes down), each round starting
with the other side. Reports, per side: peak RSS growth of the whole process from just
before the downloads (ru_maxrss, exact), MB/s over the whole batch, the worst loop lag
and the most threads alive.

**Both sides start from the same memory** (``--settle``, 3 s by default): each side
starts writing that long after the files of the one before were deleted. On a virtual
machine whose host takes freed memory back (free page reporting), a page-cache write
into memory taken back cost 8 times one into memory just freed (0.7 against 5.5 GB/s
on the machine of benchmarks/NOTES.md, "A fifth look"), and the host takes it back
within about 2 s: without the wait, whichever side started sooner after a deletion
wrote faster, whatever the client.

    python benchmarks/download.py                       # 1 GiB, 6 rounds; 1, 20, 100 at once
    python benchmarks/download.py --mib 64 --rounds 1 --concurrency 2,4 --concurrent-mib 1
    python benchmarks/download.py --settle 0            # start each side at once
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import aiohttp
from _common import (
    TICK,
    TOKEN,
    Meters,
    fake_server_process,
    rounded,
    rss_bytes,
    run_script,
    spread,
)
from yarl import URL

from aiotlink import TransactionLinkClient

MIB = 1024 * 1024
CONCURRENT_SIDES = ("aiohttp_fsync", "aiotlink")
# The targets for downloads at concurrency, at every count.
RSS_ALLOWANCE_MIB = 16  # peak RSS growth at most raw aiohttp's plus this
RATIO_TARGET = 0.9  # batch MB/s at least this times raw aiohttp's (with its fsync)
LAG_TARGET_MS = 50  # worst loop lag under this


def fake_options(size_mib: int) -> list[str]:
    # Redirected whatever the size, so that a small smoke run takes the same path.
    options = ["--large-result-mib", str(size_mib), "--step-seconds", "0"]
    return [*options, "--redirect-threshold", "1000"]


async def stream_to_file(
    session: aiohttp.ClientSession, url: str, target: Path, *, durable: bool
) -> None:
    """One GET of a pre-signed URL, 1 MiB chunks written as they come, maybe one fsync."""
    async with session.get(URL(url, encoded=True), read_bufsize=MIB) as response:
        response.raise_for_status()
        with target.open("wb") as file:
            async for chunk in response.content.iter_chunked(MIB):
                file.write(chunk)
            if durable:
                file.flush()
                await asyncio.to_thread(os.fsync, file.fileno())


async def raw_aiohttp(url: str, target: Path, *, durable: bool = False) -> dict[str, float]:
    """The baseline: one GET, 1 MiB chunks written as they come (aiohttp at its best).

    ``durable`` adds the one fsync that download_result must do before its rename, to
    tell the cost of durability on this disk from the cost of the client.
    """
    async with aiohttp.ClientSession() as session, Meters() as meters:
        started = time.perf_counter()
        await stream_to_file(session, url, target, durable=durable)
        seconds = time.perf_counter() - started
    return measured(target, seconds, meters)


async def aiotlink_download(
    client: TransactionLinkClient, execution_id: str, target: Path
) -> dict[str, float]:
    """download_result, from asking the API for the result to the renamed, fsynced file."""
    async with Meters() as meters:
        started = time.perf_counter()
        downloaded = await client.workflows.download_result(execution_id, target)
        seconds = time.perf_counter() - started
    assert downloaded.redirected
    return measured(target, seconds, meters)


def curl(url: str, target: Path) -> dict[str, float] | None:
    """``curl -s -o``, when curl is installed: how fast the machine moves the bytes."""
    if shutil.which("curl") is None:
        return None
    started = time.perf_counter()
    subprocess.run(["curl", "-s", "-f", "-o", str(target), url], check=True, timeout=600)
    return {"mb_per_s": target.stat().st_size / (time.perf_counter() - started) / 1e6}


def measured(target: Path, seconds: float, meters: Meters) -> dict[str, float]:
    return {
        "mb_per_s": target.stat().st_size / seconds / 1e6,
        "peak_rss_growth_mib": meters.peak_rss_growth / MIB,
        "worst_loop_lag_ms": meters.worst_lag * 1000,
    }


async def run(size_mib: int, rounds: int, folder: Path, settle: float) -> dict[str, Any]:
    async with (
        fake_server_process(*fake_options(size_mib)) as fake,
        TransactionLinkClient(TOKEN, base_url=fake.url) as client,
    ):
        execution = await client.workflows.initialise(fake.definitions["large-report"])
        await client.workflows.wait_for_completion(execution.id, poll_interval=0.01, timeout=60)
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{fake.url}/workflows/{execution.id}/result",
                headers={"Authorization": TOKEN},
            ) as answer,
        ):
            url = (await answer.json())["$redirect"]
        sides = ["aiohttp", "aiohttp_fsync", "aiotlink", "curl"]
        results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
        for number in range(rounds):
            # Each round starts with another side: whoever runs right after a 1 GiB write
            # pays for the kernel reclaiming its page cache.
            for name in sides[number % 4 :] + sides[: number % 4]:
                await asyncio.sleep(settle)  # the same memory for every side (see above)
                target = folder / f"{name}.json"
                outcome: dict[str, float] | None
                if name == "aiohttp":
                    outcome = await raw_aiohttp(url, target)
                elif name == "aiohttp_fsync":
                    outcome = await raw_aiohttp(url, target, durable=True)
                elif name == "aiotlink":
                    outcome = await aiotlink_download(client, execution.id, target)
                else:
                    outcome = await asyncio.to_thread(curl, url, target)
                if outcome is not None:
                    assert target.stat().st_size == size_mib * MIB
                    results[name].append(outcome)
                target.unlink(missing_ok=True)
    return summarise(results, size_mib, rounds)


def summarise(results: dict[str, list[dict[str, float]]], size_mib: int, rounds: int) -> dict:
    def stat(name: str, key: str) -> dict[str, float]:
        return spread([outcome[key] for outcome in results[name]])

    def ratios(baseline: str) -> list[float]:
        pairs = zip(results["aiotlink"], results[baseline], strict=True)
        return [ours["mb_per_s"] / base["mb_per_s"] for ours, base in pairs]

    report: dict[str, Any] = {
        "size_mib": size_mib,
        "rounds": rounds,
        "aiohttp_mb_per_s": stat("aiohttp", "mb_per_s"),
        "aiotlink_mb_per_s": stat("aiotlink", "mb_per_s"),
        "aiohttp_fsync_mb_per_s": stat("aiohttp_fsync", "mb_per_s"),
        "ratio_to_aiohttp": spread(ratios("aiohttp")),
        "ratio_to_aiohttp_with_fsync": spread(ratios("aiohttp_fsync")),
        "aiotlink_peak_rss_growth_mib": stat("aiotlink", "peak_rss_growth_mib"),
        "aiohttp_peak_rss_growth_mib": stat("aiohttp", "peak_rss_growth_mib"),
        "aiotlink_worst_loop_lag_ms": stat("aiotlink", "worst_loop_lag_ms"),
        "aiohttp_worst_loop_lag_ms": stat("aiohttp", "worst_loop_lag_ms"),
    }
    if results["curl"]:
        report["curl_mb_per_s"] = stat("curl", "mb_per_s")
    report["rounds_mb_per_s"] = {
        name: [outcome["mb_per_s"] for outcome in outcomes] for name, outcomes in results.items()
    }
    report["targets"] = {
        "ratio_at_least_0.9": report["ratio_to_aiohttp"]["median"] >= 0.9,
        "rss_growth_under_32_mib": report["aiotlink_peak_rss_growth_mib"]["max"] < 32,
        "loop_lag_under_50_ms": report["aiotlink_worst_loop_lag_ms"]["max"] < 50,
    }
    return report


# Downloads at concurrency: each side in a process of its own.


def peak_rss_ever() -> int:
    """The most this process has ever been resident, in bytes (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def most_threads(stop: asyncio.Event, peak: list[int]) -> None:
    """Until ``stop``: the most threads alive at once (disk and executor threads), in peak[0]."""
    while not stop.is_set():
        peak[0] = max(peak[0], threading.active_count())
        await asyncio.sleep(TICK)


async def raw_concurrent_one(
    session: aiohttp.ClientSession, api_url: str, execution_id: str, target: Path
) -> None:
    """What a raw aiohttp user writes: ask the API for the URL, stream it, fsync."""
    async with session.get(
        f"{api_url}/workflows/{execution_id}/result", headers={"Authorization": TOKEN}
    ) as answer:
        answer.raise_for_status()
        url = (await answer.json())["$redirect"]
    await stream_to_file(session, url, target, durable=True)


async def aiotlink_concurrent_one(
    client: TransactionLinkClient, execution_id: str, target: Path, direct_io: bool
) -> None:
    downloaded = await client.workflows.download_result(
        execution_id, target, direct_io=direct_io or None
    )
    assert downloaded.redirected


async def concurrent_side(
    side: str,
    api_url: str,
    ids: list[str],
    folder: Path,
    size_mib: int,
    timeout: float,
    start_at: float = 0.0,
    direct_io: bool = False,
) -> dict[str, Any]:
    """One side's batch, in this process: every download started together, then checked.

    Both sides first make one small call to the API, so that their sessions exist and
    are warm before the baseline RSS is taken, then wait until ``start_at`` (time.time).
    """
    targets = [folder / f"{side}-{number}.json" for number in range(len(ids))]
    if side == "aiotlink":
        client = TransactionLinkClient(TOKEN, base_url=api_url)
        session = None
    else:
        session = aiohttp.ClientSession()
    try:
        if session is None:
            await client.workflows.find(ids[0])
            downloads = [
                aiotlink_concurrent_one(client, id_, target, direct_io)
                for id_, target in zip(ids, targets, strict=True)
            ]
        else:
            async with session.get(
                f"{api_url}/workflows/{ids[0]}", headers={"Authorization": TOKEN}
            ) as answer:
                answer.raise_for_status()
                await answer.json()
            downloads = [
                raw_concurrent_one(session, api_url, id_, target)
                for id_, target in zip(ids, targets, strict=True)
            ]
        await asyncio.sleep(max(0.0, start_at - time.time()))
        before, ever_before = rss_bytes(), peak_rss_ever()
        usage_before = resource.getrusage(resource.RUSAGE_SELF)
        stop, threads = asyncio.Event(), [threading.active_count()]
        counting = asyncio.create_task(most_threads(stop, threads))
        async with Meters() as meters:
            started = time.perf_counter()
            async with asyncio.timeout(timeout):
                await asyncio.gather(*downloads)
            seconds = time.perf_counter() - started
        usage = resource.getrusage(resource.RUSAGE_SELF)
        stop.set()
        await counting
        ever_after = peak_rss_ever()
    finally:
        if session is None:
            await client.close()
        else:
            await session.close()
    # ru_maxrss catches a peak between two samples; when it did not move, the peak
    # during the downloads stayed below an earlier one and the samples tell it.
    growth = max(meters.peak_rss_growth, ever_after - before if ever_after > ever_before else 0)
    for target in targets:
        assert target.stat().st_size == size_mib * MIB, target
        target.unlink()
    return {
        "side": side,
        "downloads": len(ids),
        "size_mib": size_mib,
        "seconds": seconds,
        "mb_per_s": len(ids) * size_mib * MIB / seconds / 1e6,
        "peak_rss_growth_mib": growth / MIB,
        "sampled_rss_growth_mib": meters.peak_rss_growth / MIB,
        "worst_loop_lag_ms": meters.worst_lag * 1000,
        "peak_threads": threads[0],
        # The whole process (the loop and any disk threads): on two cores shared with
        # the storage server, CPU spent per byte is what sets the pace.
        "user_cpu_seconds": usage.ru_utime - usage_before.ru_utime,
        "system_cpu_seconds": usage.ru_stime - usage_before.ru_stime,
        "minor_faults": usage.ru_minflt - usage_before.ru_minflt,
    }


def batch_timeout(count: int, size_mib: int) -> float:
    """Seconds a batch may take: a minute plus the bytes at a slow 10 MB/s."""
    return 60 + count * size_mib * MIB / 10e6


async def prepare(client: TransactionLinkClient, definition: str, count: int) -> list[str]:
    """``count`` completed executions of ``definition``, each with a result of its own."""
    async with asyncio.timeout(60 + count):
        executions = await asyncio.gather(
            *(client.workflows.initialise(definition) for _ in range(count))
        )
        ids = [str(execution.id) for execution in executions]
        await asyncio.gather(
            *(client.workflows.wait_for_completion(id_, poll_interval=0.01) for id_ in ids)
        )
    return ids


def run_side_in_process(
    side: str,
    api_url: str,
    ids: list[str],
    folder: Path,
    size_mib: int,
    settle: float,
    direct_io: bool,
) -> dict[str, Any]:
    """This script again, for one side's batch: a fresh interpreter and heap.

    Its downloads start ``settle`` seconds from now, whatever its start-up took.
    """
    start_at = time.time() + settle
    command = [sys.executable, __file__, "--side", side, "--api", api_url, "--ids", ",".join(ids)]
    command += ["--folder", str(folder), "--concurrent-mib", str(size_mib)]
    command += ["--start-at", repr(start_at), *(["--direct-io"] if direct_io else [])]
    return run_script(command, timeout=batch_timeout(len(ids), size_mib) + 60 + settle)


async def run_concurrent(
    counts: list[int],
    size_mib: int,
    concurrent_mib: int,
    rounds: int,
    folder: Path,
    settle: float,
    direct_io: bool = False,
) -> list[dict[str, Any]]:
    shapes = []
    for count in counts:
        mib = size_mib if count == 1 else concurrent_mib
        async with (
            fake_server_process(*fake_options(mib)) as fake,
            TransactionLinkClient(TOKEN, base_url=fake.url) as client,
        ):
            ids = await prepare(client, fake.definitions["large-report"], count)
            results: dict[str, list[dict[str, Any]]] = {side: [] for side in CONCURRENT_SIDES}
            for number in range(rounds):
                order = CONCURRENT_SIDES[number % 2 :] + CONCURRENT_SIDES[: number % 2]
                for side in order:
                    batch = folder / f"{side}-{count}"
                    batch.mkdir()
                    try:
                        outcome = await asyncio.to_thread(
                            run_side_in_process,
                            side,
                            fake.url,
                            ids,
                            batch,
                            mib,
                            settle,
                            direct_io,
                        )
                    finally:
                        shutil.rmtree(batch, ignore_errors=True)
                    results[side].append(outcome)
        shapes.append(summarise_shape(count, mib, rounds, results))
    return shapes


MEASURES = (
    "peak_rss_growth_mib",
    "mb_per_s",
    "worst_loop_lag_ms",
    "seconds",
    "peak_threads",
    "user_cpu_seconds",
    "system_cpu_seconds",
    "minor_faults",
)


def summarise_shape(
    count: int, size_mib: int, rounds: int, results: dict[str, list[dict[str, Any]]]
) -> dict[str, Any]:
    """One count's sides over the rounds, the per-round comparisons, and the targets.

    The RSS target compares worst rounds: aiotlink's largest growth against raw
    aiohttp's largest plus 16 MiB. The throughput target is the median of the per-round
    ratios; the loop lag target is aiotlink's worst round.
    """
    ours, raw = results["aiotlink"], results["aiohttp_fsync"]
    report: dict[str, Any] = {"downloads": count, "size_mib": size_mib, "rounds": rounds}
    for side, outcomes in results.items():
        report[side] = {
            measure: spread([outcome[measure] for outcome in outcomes]) for measure in MEASURES
        }
    pairs = list(zip(ours, raw, strict=True))
    report["ratio_to_aiohttp_fsync"] = spread([a["mb_per_s"] / b["mb_per_s"] for a, b in pairs])
    report["rss_growth_over_aiohttp_fsync_mib"] = spread(
        [a["peak_rss_growth_mib"] - b["peak_rss_growth_mib"] for a, b in pairs]
    )
    worst_ours = report["aiotlink"]["peak_rss_growth_mib"]["max"]
    worst_raw = report["aiohttp_fsync"]["peak_rss_growth_mib"]["max"]
    report["rss_growth_worst_over_aiohttp_fsync_worst_mib"] = worst_ours - worst_raw
    report["targets"] = {
        "rss_growth_within_16_mib_of_aiohttp": worst_ours <= worst_raw + RSS_ALLOWANCE_MIB,
        "ratio_at_least_0.9": report["ratio_to_aiohttp_fsync"]["median"] >= RATIO_TARGET,
        "loop_lag_under_50_ms": report["aiotlink"]["worst_loop_lag_ms"]["max"] < LAG_TARGET_MS,
    }
    return report


def counts_of(text: str) -> list[int]:
    counts = [int(part) for part in text.split(",") if part.strip()]
    if any(count < 1 for count in counts):
        raise argparse.ArgumentTypeError("counts are 1 or more")
    return counts


def check_disk(folder: Path, needed_mib: int) -> None:
    free = shutil.disk_usage(folder).free
    if free < needed_mib * MIB * 1.2 + 1024 * MIB:
        raise SystemExit(f"{folder}: {free / MIB:.0f} MiB free, {needed_mib} MiB needed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="result size, MiB")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument(
        "--concurrency",
        type=counts_of,
        default=[1, 20, 100],
        help="downloads at once, comma-separated ('' for none); 1 downloads one --mib result",
    )
    parser.add_argument(
        "--concurrent-mib", type=int, default=12, help="result size at concurrency above 1, MiB"
    )
    parser.add_argument(
        "--concurrent-rounds", type=int, help="rounds at concurrency (default: --rounds)"
    )
    parser.add_argument(
        "--settle",
        type=float,
        default=3.0,
        help="seconds between deleting one side's files and the next side's start",
    )
    parser.add_argument(
        "--direct-io",
        action="store_true",
        help="download_result(..., direct_io=True) in the batches at concurrency",
    )
    # One side's batch, run by this script in a fresh process.
    parser.add_argument("--side", choices=CONCURRENT_SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--api", help=argparse.SUPPRESS)
    parser.add_argument("--ids", help=argparse.SUPPRESS)
    parser.add_argument("--folder", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--start-at", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        ids = args.ids.split(",")
        timeout = batch_timeout(len(ids), args.concurrent_mib)
        outcome = asyncio.run(
            concurrent_side(
                args.side,
                args.api,
                ids,
                args.folder,
                args.concurrent_mib,
                timeout,
                start_at=args.start_at,
                direct_io=args.direct_io,
            )
        )
        print(json.dumps(outcome))
        return
    concurrent_rounds = args.concurrent_rounds or args.rounds
    folder = Path(tempfile.mkdtemp(prefix="aiotlink-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        sizes = [
            args.mib if count == 1 else count * args.concurrent_mib for count in args.concurrency
        ]
        check_disk(folder, max([args.mib, *sizes]))
        report = asyncio.run(run(args.mib, args.rounds, folder, args.settle))
        if args.concurrency:
            report["concurrent"] = asyncio.run(
                run_concurrent(
                    args.concurrency,
                    args.mib,
                    args.concurrent_mib,
                    concurrent_rounds,
                    folder,
                    args.settle,
                    args.direct_io,
                )
            )
            report["direct_io"] = args.direct_io
            report["concurrent_targets"] = {
                target: all(shape["targets"][target] for shape in report["concurrent"])
                for target in report["concurrent"][0]["targets"]
            }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
