"""How fast this machine's page cache takes a file, by how long ago its memory was freed.

Writes a file (``--write-kib`` a write, 1 MiB by default, ``--mib`` in all) from the
main thread and from a thread of its own, in turn, waiting ``--pause`` seconds after the
deletion of the one before. On a virtual machine whose host takes freed memory back
(free page reporting), the writes after a pause are several times slower than those
right after a deletion: the same pages are then fresh to the host. ``download.py
--settle`` exists for this (benchmarks/NOTES.md, "Downloads at concurrency", "A fifth
look"). Smaller writes pay less of it ("A sixth look"):

    python benchmarks/page_cache.py --pause 0 --pause 3
    python benchmarks/page_cache.py --pause 3 --write-kib 1024 --write-kib 128
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def write_file(path: Path, mib: int, data: bytes) -> dict[str, float]:
    """``mib`` MiB in writes of ``data`` into a new file: GB/s, and the kernel's CPU time."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_stime
        started = time.perf_counter()
        for offset in range(0, mib * MIB, len(data)):
            os.pwrite(descriptor, data, offset)
        seconds = time.perf_counter() - started
        system = resource.getrusage(resource.RUSAGE_THREAD).ru_stime - before
    finally:
        os.close(descriptor)
    return {"gb_per_s": mib * MIB / seconds / 1e9, "system_seconds": system}


def from_a_thread(path: Path, mib: int, data: bytes) -> dict[str, float]:
    outcome: list[dict[str, float]] = []
    thread = threading.Thread(target=lambda: outcome.append(write_file(path, mib, data)))
    thread.start()
    thread.join()
    return outcome[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=1024, help="file size, MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--write-kib",
        type=int,
        action="append",
        help="bytes a write, KiB, dividing 1 MiB (repeatable; default 1024)",
    )
    parser.add_argument(
        "--pause", type=float, action="append", help="seconds after each deletion (repeatable)"
    )
    args = parser.parse_args()
    sizes = args.write_kib or [1024]
    if any(size <= 0 or MIB % (size * 1024) for size in sizes):
        parser.error("--write-kib must divide 1024")
    report: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as folder:
        path = Path(folder) / "file"
        for pause in args.pause or [0.0, 3.0]:
            for size in sizes:
                data = os.urandom(size * 1024)
                rounds: list[dict[str, Any]] = []
                for _ in range(args.rounds):
                    for where, write in (("main thread", write_file), ("a thread", from_a_thread)):
                        time.sleep(pause)  # since the last file was deleted
                        rounds.append({"from": where, **write(path, args.mib, data)})
                        path.unlink()
                report[f"pause {pause:g} s, writes of {size} KiB"] = rounds
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
