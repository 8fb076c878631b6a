"""The ``aiotlink`` command's entry point, and ``aiotlink demo``: a complete, visible flow.

The other commands live in ``_commands.py`` (the ``cli`` extra).

Without ``TRANSACTIONLINK_TOKEN`` the demo starts the fake server in this process and
runs against it; with the token and ``--definition`` it runs against the API at
``--base-url``, else ``TRANSACTIONLINK_BASE_URL``, else the production API. Its first
line names the base URL it uses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

import attrs

from . import TransactionLinkClient, _instrument
from ._arguments import BASE_URL_ENV_VAR, DEFAULT_BASE_URL, TOKEN_ENV_VAR
from ._errors import NotFoundError, TransactionLinkError
from ._models import DownloadedResult, WorkflowExecution

Say = Callable[[str], None]
INSTALL_CLI = 'pip install "aiotlink[cli]"'
# An id no execution has: the demo's way to show an error as a user sees it.
MISSING_EXECUTION_ID = "00000000-0000-4000-8000-000000000000"


@attrs.frozen
class DemoPlan:
    """Which definitions the demo starts, and how closely it polls them."""

    definition: str
    large_result_definition: str | None = None
    cancel_definition: str | None = None
    poll_interval: float = 1.0
    max_poll_interval: float = 15.0
    timeout: float = 600.0


def _describe(execution: WorkflowExecution) -> str:
    hosted = f", hosted page {execution.link}" if execution.link else ""
    return f"{execution.id} [{execution.status.value}]{hosted}"


async def run_demo(client: TransactionLinkClient, plan: DemoPlan, say: Say) -> None:
    """Initialise, follow, fetch, cancel, and show an error, saying each step."""
    workflows = client.workflows
    started = time.monotonic()

    def elapsed() -> str:
        return f"{time.monotonic() - started:6.2f}s"

    say(f"1. initialise {plan.definition!r}")
    execution = await workflows.initialise(plan.definition, parameters={"customerId": "demo-1"})
    say(f"   started {_describe(execution)}")

    say("2. find it")
    execution = await workflows.find(execution.id)
    say(f"   {_describe(execution)}")

    say("3. wait for it to finish, showing each status change as it happens")
    execution = await workflows.wait_for_completion(
        execution.id,
        timeout=plan.timeout,
        poll_interval=plan.poll_interval,
        max_poll_interval=plan.max_poll_interval,
        raise_on_failure=False,
        on_status=lambda seen: say(f"   {elapsed()}  {seen.status.value}"),
    )
    if execution.status == "COMPLETED":
        say("4. fetch the result")
        result = await workflows.get_result(execution.id)
        say(f"   {str(result)[:200]}")
    else:
        say(f"4. no result: the execution ended {execution.status.value}")

    if plan.large_result_definition is not None:
        say(f"5. a large result: run {plan.large_result_definition!r}, stream its result to disk")
        with tempfile.TemporaryDirectory() as folder:
            large = await workflows.run(
                plan.large_result_definition,
                timeout=plan.timeout,
                poll_interval=plan.poll_interval,
                max_poll_interval=plan.max_poll_interval,
                download_to=Path(folder) / "result.json",
            )
            downloaded: DownloadedResult = large.result
            where = "pre-signed storage, no credentials sent" if downloaded.redirected else "API"
            say(f"   {downloaded.size:,} bytes from {where}, written whole to a file")
            say("   (in a temporary folder that the demo removes again)")

    if plan.cancel_definition is not None:
        say(f"6. cancel: start {plan.cancel_definition!r} and cancel it")
        running = await workflows.initialise(plan.cancel_definition)
        await workflows.cancel(running.id)
        cancelled = await workflows.find(running.id)
        say(f"   {_describe(cancelled)}")

    say("7. an error, as your code sees it: find an execution that does not exist")
    try:
        await workflows.find(MISSING_EXECUTION_ID)
    except NotFoundError as error:
        say(f"   {type(error).__name__}: {error}")
    say("done")


async def _demo_on_fake(say: Say) -> None:
    from .testing import FakeTransactionLink, GeneratedResult

    async with FakeTransactionLink() as fake:
        say(f"no {TOKEN_ENV_VAR} set: running against the built-in fake server at {fake.url}")
        fake.add_definition(
            "kyc-onboarding",
            statuses=["INITIALISED", "RUNNING", "AWAITING", "PAUSED", "RUNNING", "COMPLETED"],
            result={"decision": "APPROVED", "checks": {"document": "PASS", "liveness": "PASS"}},
            step_seconds=0.3,
        )
        fake.add_definition(
            "kyc-archive",
            statuses=["INITIALISED", "RUNNING", "COMPLETED"],
            result=GeneratedResult(12_000_000),
            step_seconds=0.2,
        )
        fake.add_definition("kyc-review", statuses=["INITIALISED", "AWAITING"], interactive=True)
        plan = DemoPlan(
            definition="kyc-onboarding",
            large_result_definition="kyc-archive",
            cancel_definition="kyc-review",
            poll_interval=0.1,
            max_poll_interval=0.5,
            timeout=60.0,
        )
        async with TransactionLinkClient(fake.token, base_url=fake.url) as client:
            await run_demo(client, plan, say)


@attrs.frozen
class DemoOptions:
    """The options of ``aiotlink demo``."""

    definition: str | None = None
    large_result_definition: str | None = None
    cancel_definition: str | None = None
    base_url: str | None = None
    poll_interval: float = 1.0
    timeout: float = 600.0
    json_mode: bool = False


async def _demo_on_api(options: DemoOptions, say: Say) -> None:
    assert options.definition is not None
    plan = DemoPlan(
        definition=options.definition,
        large_result_definition=options.large_result_definition,
        cancel_definition=options.cancel_definition,
        poll_interval=options.poll_interval,
        timeout=options.timeout,
    )
    async with TransactionLinkClient(base_url=options.base_url) as client:
        say(f"running against {client.base_url} with the token from {TOKEN_ENV_VAR}")
        await run_demo(client, plan, say)


def run_demo_command(options: DemoOptions) -> int:
    """Run the demo; return the exit status (1: it failed, 2: --definition missing).

    With ``json_mode`` each step is a JSON line ``{"step": ...}`` on stdout, and a
    failure a last line ``{"error": {"type": ..., "message": ...}}``.
    """

    def say(line: str) -> None:
        print(json.dumps({"step": line}) if options.json_mode else line, flush=True)

    try:
        if os.environ.get(TOKEN_ENV_VAR):
            if not options.definition:
                print(
                    f"{TOKEN_ENV_VAR} is set: pass --definition <id> to run",
                    file=sys.stderr,
                    flush=True,
                )
                return 2
            asyncio.run(_demo_on_api(options, say))
        else:
            asyncio.run(_demo_on_fake(say))
    except (TransactionLinkError, ValueError) as error:
        # ValueError: a malformed setting, e.g. a token with a stray newline
        print(f"failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        if options.json_mode:
            failure = {"type": type(error).__name__, "message": str(error)}
            print(json.dumps({"error": failure}), flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _demo_parser() -> argparse.ArgumentParser:
    """The demo's own command line, for an install without the cli extra."""
    parser = argparse.ArgumentParser(prog="aiotlink demo", description=__doc__.splitlines()[0])
    parser.add_argument("--definition", help="workflow definition id to run (real API)")
    parser.add_argument("--large-result-definition", help="a definition whose result is large")
    parser.add_argument("--cancel-definition", help="a definition to start and cancel")
    parser.add_argument(
        "--base-url",
        help=f"API base URL (default: ${BASE_URL_ENV_VAR}, else {DEFAULT_BASE_URL})",
    )
    parser.add_argument("--poll-interval", type=float, default=1.0, help="seconds between polls")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds to wait at most")
    parser.add_argument(
        "--json", dest="json_mode", action="store_true", help="each step as a JSON line"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit status.

    The commands need the ``cli`` extra (click and rich). Without it, ``demo`` still
    runs (it needs nothing more than the client), and anything else prints the one
    line that installs the extra. With the ``otel`` extra, the commands' calls make
    the client's spans and metrics (:func:`_start_tracing`).
    """
    tracing = _start_tracing()
    try:
        return _run(argv)
    finally:
        if tracing is not None:
            tracing.uninstrument()


def _start_tracing() -> ModuleType | None:
    """``aiotlink.otel.instrument()`` with OpenTelemetry's global providers, if it can.

    Spans go nowhere until an SDK is set up, as ``opentelemetry-instrument aiotlink
    ...`` does (README.md, "Traces and metrics"). Without the ``otel`` extra nothing of
    OpenTelemetry is imported; a process that instrumented aiotlink already keeps its
    own providers. Returns the module to turn it off with, if it was turned on here.
    """
    if _instrument.current is not None:
        return None
    try:
        from . import otel
    except ImportError:  # no otel extra: the commands run untraced
        return None
    otel.instrument()
    return otel


def _run(argv: Sequence[str] | None) -> int:
    try:
        from ._commands import cli_main
    except ImportError as error:
        if (error.name or "").partition(".")[0] not in ("click", "rich"):
            raise
        arguments = list(sys.argv[1:] if argv is None else argv)
        if arguments[:1] == ["demo"]:
            parsed = _demo_parser().parse_args(arguments[1:])
            return run_demo_command(DemoOptions(**vars(parsed)))
        if arguments == ["--version"]:
            print(f"aiotlink, version {version('aiotlink')}")
            return 0
        print(f"aiotlink: the command line needs the cli extra: {INSTALL_CLI}", file=sys.stderr)
        return 2
    return cli_main(argv)
