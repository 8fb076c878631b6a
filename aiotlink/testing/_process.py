"""Process mode: ``python -m aiotlink.testing`` serves the fake until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import uuid
from collections.abc import Sequence
from typing import TextIO

import attrs

from aiotlink.testing._fake import (
    DEFAULT_REDIRECT_THRESHOLD,
    DEFAULT_URL_TTL,
    HOST,
    FakeTransactionLink,
)
from aiotlink.testing._results import GeneratedResult

DEFAULT_PORT = 8080


@attrs.frozen
class DemoDefinition:
    """A definition the process mode adds, with its fixed id."""

    name: str
    statuses: tuple[str, ...]
    interactive: bool = False
    large: bool = False

    @property
    def definition_id(self) -> str:
        """A UUID derived from the name: the same on every run."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"https://aiotlink.invalid/fake/{self.name}"))


DEMO_DEFINITIONS = (
    DemoDefinition("kyc-background", ("INITIALISED", "RUNNING", "COMPLETED")),
    DemoDefinition("kyc-failing", ("INITIALISED", "RUNNING", "FAILED")),
    DemoDefinition(
        "kyc-interactive",
        ("INITIALISED", "CREATED", "AWAITING", "RUNNING", "COMPLETED"),
        interactive=True,
    ),
    DemoDefinition("large-report", ("INITIALISED", "RUNNING", "COMPLETED"), large=True),
)


def build_parser() -> argparse.ArgumentParser:
    """Describe the command line of the process mode."""
    parser = argparse.ArgumentParser(
        prog="python -m aiotlink.testing",
        description="Serve a fake TransactionLink Workflows API on 127.0.0.1 until Ctrl-C.",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="API port; 0 picks one")
    parser.add_argument("--storage-port", type=int, default=0, help="storage port; 0 picks one")
    parser.add_argument("--token", help="use this tot_ token instead of a random one")
    parser.add_argument(
        "--step-seconds",
        type=float,
        default=1.0,
        help="seconds per status step of the demo definitions; 0 steps once per find",
    )
    parser.add_argument(
        "--large-result-mib", type=int, default=64, help="size of large-report's result, MiB"
    )
    parser.add_argument(
        "--redirect-threshold",
        type=int,
        default=DEFAULT_REDIRECT_THRESHOLD,
        help="results above this many bytes are redirected to storage",
    )
    parser.add_argument(
        "--url-ttl", type=int, default=DEFAULT_URL_TTL, help="pre-signed URL validity, seconds"
    )
    parser.add_argument(
        "--webhook-url",
        help="POST a signed webhook for every status change here (needs aiotlink[webhooks])",
    )
    parser.add_argument(
        "--fault-rate",
        type=float,
        default=0.0,
        help="answer this fraction of lookups (GET /workflows/{id}) with a random 429/5xx"
        " or a dropped connection",
    )
    parser.add_argument("--fault-seed", type=int, help="seed of --fault-rate's choices")
    parser.add_argument(
        "--request-log",
        help="append a line per request here: time, route, path, ok or the fault answered",
    )
    return parser


def add_demo_definitions(
    fake: FakeTransactionLink, *, step_seconds: float, large_result_bytes: int
) -> None:
    """Add the ready definitions of the process mode to ``fake``."""
    for demo in DEMO_DEFINITIONS:
        result: object = {"definition": demo.name, "decision": "APPROVED", "score": 0.97}
        if demo.large:
            result = GeneratedResult(large_result_bytes)
        fake.add_definition(
            demo.definition_id,
            demo.statuses,
            result=result,
            step_seconds=step_seconds,
            interactive=demo.interactive,
            name=demo.name,
        )


def _banner(fake: FakeTransactionLink, options: argparse.Namespace) -> str:
    lines = [
        f"FakeTransactionLink listening on {fake.url}",
        f"  storage  {fake.storage_url}",
        f"  token    {fake.token}",
        f"  jwt      {fake.jwt}",
        f"  definitions by id (use the id, not the name; a status step every"
        f" {options.step_seconds} s, 0 means one per find):",
    ]
    if fake.webhook_url is not None:
        lines.insert(
            4,
            f"  webhooks {fake.webhook_url}  (key: {fake.url}/auth/webhooks/key/"
            f"{fake.webhook_key_id})",
        )
    for demo in DEMO_DEFINITIONS:
        notes = " > ".join(demo.statuses)
        if demo.interactive:
            notes += "  (interactive: link and token)"
        if demo.large:
            notes += f"  ({options.large_result_mib} MiB result, redirected to storage)"
        lines.append(f"    {demo.definition_id}  {demo.name:<16} {notes}")
    first = DEMO_DEFINITIONS[0].definition_id
    lines.append(
        f"  try: TRANSACTIONLINK_TOKEN={fake.token} python -m aiotlink demo"
        f" --base-url {fake.url} --definition {first}"
    )
    lines.append("Press Ctrl-C to stop.")
    return "\n".join(lines)


def _open_log(path: str) -> TextIO:
    # Line-buffered: a test reads it while the fake runs, or after the fake was killed.
    return open(path, "a", buffering=1, encoding="utf-8")


async def serve(
    options: argparse.Namespace, *, stop: asyncio.Event, out: TextIO, err: TextIO
) -> int:
    """Run the fake with the demo definitions until ``stop`` is set; return the exit code.

    Prints the URL, the credentials and the definition ids to ``out``; a port that
    cannot be bound, or a webhook URL without the ``webhooks`` extra or not http(s),
    is reported on ``err`` with exit code 1.
    """
    with contextlib.ExitStack() as files:
        try:
            log = None
            if options.request_log is not None:
                log = files.enter_context(_open_log(options.request_log))
            fake = FakeTransactionLink(
                port=options.port,
                storage_port=options.storage_port,
                redirect_threshold=options.redirect_threshold,
                url_ttl=options.url_ttl,
                token=options.token,
                webhook_url=options.webhook_url,
                request_log=log,
            )
            if options.fault_rate:
                fake.fail_randomly("find", options.fault_rate, seed=options.fault_seed)
        except (ImportError, ValueError, OSError) as exc:
            print(f"error: {exc}", file=err, flush=True)
            return 1
        return await _serve(fake, options, stop=stop, out=out, err=err)


async def _serve(
    fake: FakeTransactionLink,
    options: argparse.Namespace,
    *,
    stop: asyncio.Event,
    out: TextIO,
    err: TextIO,
) -> int:
    add_demo_definitions(
        fake,
        step_seconds=options.step_seconds,
        large_result_bytes=options.large_result_mib * 2**20,
    )
    try:
        await fake.start()
    except OSError as exc:
        print(f"error: cannot listen on {HOST}: {exc.strerror or exc}", file=err, flush=True)
        return 1
    try:
        print(_banner(fake, options), file=out, flush=True)
        await stop.wait()
    finally:
        await fake.close()
    print("stopped", file=out, flush=True)
    return 0


async def _serve_until_signal(options: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGINT, signal.SIGTERM)
    for signum in signals:
        # Windows has no loop signal handlers; Ctrl-C then ends in KeyboardInterrupt.
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    try:
        return await serve(options, stop=stop, out=sys.stdout, err=sys.stderr)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the process mode with ``argv`` (default: the command line); return the exit code."""
    options = build_parser().parse_args(argv)
    try:
        return asyncio.run(_serve_until_signal(options))
    except KeyboardInterrupt:  # where the loop has no signal handlers (Windows)
        return 0
