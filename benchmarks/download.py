"""A 1 GiB redirected result to disk: download_result against raw aiohttp and curl.

The fake runs in its own process and serves the result from its S3-like storage. Each
round runs, one after the other, raw aiohttp streaming the same pre-signed URL to a
file (1 MiB chunks, as fast as aiohttp goes), the same plus the one fsync durability
needs, ``download_result`` (which also asks the API for the URL, checks the length,
fsyncs and renames), and ``curl -o`` where present. Reports MB/s, the ratios to raw
aiohttp (with and without the fsync), peak RSS growth and the worst loop lag.

    python benchmarks/download.py                       # 1 GiB, 6 rounds
    python benchmarks/download.py --mib 64 --rounds 1   # a quick smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from _common import TOKEN, Meters, fake_server_process, rounded, spread
from yarl import URL

from aiotlink import TransactionLinkClient

MIB = 1024 * 1024


async def raw_aiohttp(url: str, target: Path, *, durable: bool = False) -> dict[str, float]:
    """The baseline: one GET, 1 MiB chunks written as they come (aiohttp at its best).

    ``durable`` adds the one fsync that download_result must do before its rename, to
    tell the cost of durability on this disk from the cost of the client.
    """
    async with aiohttp.ClientSession() as session, Meters() as meters:
        started = time.perf_counter()
        async with session.get(URL(url, encoded=True), read_bufsize=MIB) as response:
            response.raise_for_status()
            with target.open("wb") as file:
                async for chunk in response.content.iter_chunked(MIB):
                    file.write(chunk)
                if durable:
                    file.flush()
                    await asyncio.to_thread(os.fsync, file.fileno())
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
    subprocess.run(["curl", "-s", "-f", "-o", str(target), url], check=True)
    return {"mb_per_s": target.stat().st_size / (time.perf_counter() - started) / 1e6}


def measured(target: Path, seconds: float, meters: Meters) -> dict[str, float]:
    return {
        "mb_per_s": target.stat().st_size / seconds / 1e6,
        "peak_rss_growth_mib": meters.peak_rss_growth / MIB,
        "worst_loop_lag_ms": meters.worst_lag * 1000,
    }


async def run(size_mib: int, rounds: int, folder: Path) -> dict[str, Any]:
    # Redirected whatever the size, so that a small smoke run takes the same path.
    options = ["--large-result-mib", str(size_mib), "--step-seconds", "0"]
    options += ["--redirect-threshold", "1000"]
    async with (
        fake_server_process(*options) as fake,
        TransactionLinkClient(TOKEN, base_url=fake.url) as client,
    ):
        execution = await client.workflows.initialise(fake.definitions["large-report"])
        await client.workflows.wait_for_completion(execution.id, poll_interval=0.01)
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
                target = folder / f"{name}.json"
                outcome: dict[str, float] | None
                if name == "aiohttp":
                    outcome = await raw_aiohttp(url, target)
                elif name == "aiohttp_fsync":
                    outcome = await raw_aiohttp(url, target, durable=True)
                elif name == "aiotlink":
                    outcome = await aiotlink_download(client, execution.id, target)
                else:
                    outcome = curl(url, target)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="result size, MiB")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="aiotlink-bench-", dir=os.environ.get("BENCH_DIR")))
    try:
        report = asyncio.run(run(args.mib, args.rounds, folder))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    print(json.dumps(rounded(report), indent=2))


if __name__ == "__main__":
    main()
