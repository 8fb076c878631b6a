"""Process mode: ``python -m aiotlink.testing`` serves the fake until Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import uuid
from collections.abc import Callable, Sequence
from typing import TextIO, TypeVar

import attrs

from aiotlink._arguments import parse_strict_json, read_small_file
from aiotlink.testing._executions import check_statuses, check_step_seconds
from aiotlink.testing._fake import (
    DEFAULT_REDIRECT_THRESHOLD,
    DEFAULT_URL_TTL,
    HOST,
    FakeTransactionLink,
)
from aiotlink.testing._results import GeneratedResult

T = TypeVar("T")
DEFAULT_PORT = 8080
# A definition file is a few lines a person wrote: a bound keeps a wrong path (a log, a
# device) from being read whole.
MAX_DEFINITION_FILE_BYTES = 2**20
DEFINITION_KEYS = frozenset(
    {"id", "name", "statuses", "result", "result_bytes", "step_seconds", "interactive"}
)


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


@attrs.frozen
class FileDefinition:
    """A definition read from a ``--definition`` file, checked."""

    definition_id: str
    name: str
    statuses: tuple[str, ...]
    result: object
    step_seconds: float | None
    interactive: bool


def port_number(text: str) -> int:
    """A TCP port, 0 (pick one) to 65535; ``ValueError`` otherwise."""
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise ValueError(f"a port is a whole number from 0 to 65535, got {text[:20]!r}")
    return port


def step_seconds(text: str) -> float:
    """Seconds per status step: a finite number, 0 or more; ``ValueError`` otherwise."""
    try:
        return check_step_seconds(float(text))
    except ValueError:
        pass
    raise ValueError(f"step seconds must be a finite number, 0 or more, got {text[:20]!r}")


def _file_definition(entry: object, where: str) -> FileDefinition:
    if not isinstance(entry, dict):
        raise ValueError(f"{where} must be a JSON object")
    unknown = sorted(set(entry) - DEFINITION_KEYS)
    if unknown:
        raise ValueError(f"{where} has unknown keys {unknown}; known: {sorted(DEFINITION_KEYS)}")
    name = entry.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f'{where} needs a "name" (a non-empty string)')
    statuses = entry.get("statuses")
    if not isinstance(statuses, list) or not all(isinstance(s, str) for s in statuses):
        raise ValueError(f'{where} needs "statuses": a list of status names')
    try:
        walk = check_statuses(statuses)
    except ValueError as error:
        raise ValueError(f"{where}: {error}") from None
    definition_id = entry.get("id", DemoDefinition(name, walk).definition_id)
    if not isinstance(definition_id, str) or not definition_id.strip():
        raise ValueError(f'{where}: "id" must be a non-empty string')
    step = entry.get("step_seconds")
    if step is not None and (
        isinstance(step, bool) or not isinstance(step, int | float) or not 0 <= step < 1e9
    ):
        raise ValueError(f'{where}: "step_seconds" must be a number of seconds, 0 or more')
    interactive = entry.get("interactive", False)
    if not isinstance(interactive, bool):
        raise ValueError(f'{where}: "interactive" must be true or false')
    result: object = entry.get("result", {"definition": name, "decision": "APPROVED"})
    if "result_bytes" in entry:
        size = entry["result_bytes"]
        if "result" in entry or isinstance(size, bool) or not isinstance(size, int):
            raise ValueError(f'{where}: "result_bytes" is a whole number, without "result"')
        try:
            result = GeneratedResult(size)
        except ValueError as error:
            raise ValueError(f"{where}: {error}") from None
    return FileDefinition(
        definition_id, name, walk, result, None if step is None else float(step), interactive
    )


def load_definitions(path: str) -> list[FileDefinition]:
    """The definitions in a JSON file: one object, or a list of them; ``ValueError`` if bad.

    Each object has ``name`` and ``statuses``, and may have ``id`` (else one derived
    from the name), ``result`` (any JSON) or ``result_bytes`` (a generated result of
    that size), ``step_seconds`` and ``interactive``. The error names the file and the
    problem, never the file's text.
    """
    data = read_small_file(path, MAX_DEFINITION_FILE_BYTES, path)
    document = parse_strict_json(data, path)
    entries = document if isinstance(document, list) else [document]
    if not entries:
        raise ValueError(f"{path} holds no definition")
    return [_file_definition(entry, f"{path}, definition {n}") for n, entry in enumerate(entries)]


def _argparse_type(check: Callable[[str], T]) -> Callable[[str], T]:
    """``check`` for argparse: its ``ValueError`` becomes argparse's usage error (exit 2)."""

    def checked(text: str) -> T:
        try:
            return check(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    return checked


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
    port = _argparse_type(port_number)
    parser.add_argument("--port", type=port, default=DEFAULT_PORT, help="API port; 0 picks one")
    parser.add_argument("--storage-port", type=port, default=0, help="storage port; 0 picks one")
    parser.add_argument("--token", help="use this tot_ token instead of a random one")
    parser.add_argument(
        "--step-seconds",
        type=_argparse_type(step_seconds),
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
        "--json",
        action="store_true",
        help="print one JSON line (url, storage_url, token, jwt, webhook_url, definitions)"
        " instead of the banner, and nothing else on stdout",
    )
    parser.add_argument(
        "--definition",
        dest="definitions",
        type=_argparse_type(load_definitions),
        action="append",
        default=[],
        metavar="FILE",
        help="also add the definitions in this JSON file (repeatable)",
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


def add_file_definitions(
    fake: FakeTransactionLink, definitions: Sequence[FileDefinition], *, step_seconds: float
) -> None:
    """Add the definitions read from ``--definition`` files to ``fake``."""
    for definition in definitions:
        fake.add_definition(
            definition.definition_id,
            definition.statuses,
            result=definition.result,
            step_seconds=step_seconds
            if definition.step_seconds is None
            else definition.step_seconds,
            interactive=definition.interactive,
            name=definition.name,
        )


def _shown(name: str) -> str:
    # A definition file's name, printed to a terminal: no escape sequence gets through.
    return name if name.isprintable() else ascii(name)[1:-1]


def _record(fake: FakeTransactionLink, options: argparse.Namespace) -> str:
    """The ``--json`` line: what the banner says, for a script."""
    definitions = [
        {"id": demo.definition_id, "name": demo.name, "statuses": list(demo.statuses)}
        for demo in DEMO_DEFINITIONS
    ]
    definitions += [
        {"id": item.definition_id, "name": item.name, "statuses": list(item.statuses)}
        for group in options.definitions
        for item in group
    ]
    record = {
        "url": fake.url,
        "storage_url": fake.storage_url,
        "token": fake.token,
        "jwt": fake.jwt,
        "webhook_url": fake.webhook_url,
        "definitions": definitions,
    }
    return json.dumps(record)


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
    for definitions in options.definitions:
        for definition in definitions:
            notes = " > ".join(definition.statuses)
            name = _shown(definition.name)  # statuses are known ones, checked on loading
            lines.append(f"    {definition.definition_id}  {name:<16} {notes}")
    first = DEMO_DEFINITIONS[0].definition_id
    # Commands that exist: the demo in every install, `run` with the cli extra.
    lines.append(
        f"  try: TRANSACTIONLINK_TOKEN={fake.token} python -m aiotlink demo"
        f" --base-url {fake.url} --definition {first}"
    )
    lines.append(
        f"  or:  TRANSACTIONLINK_TOKEN={fake.token} python -m aiotlink run {first}"
        f" --base-url {fake.url}   (needs aiotlink[cli])"
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
    for definitions in options.definitions:
        add_file_definitions(fake, definitions, step_seconds=options.step_seconds)
    try:
        await fake.start()
    except OSError as exc:
        print(f"error: cannot listen on {HOST}: {exc.strerror or exc}", file=err, flush=True)
        return 1
    json_mode = getattr(options, "json", False)
    try:
        print(_record(fake, options) if json_mode else _banner(fake, options), file=out, flush=True)
        await stop.wait()
    finally:
        await fake.close()
    print("stopped", file=err if json_mode else out, flush=True)
    return 0


async def serve_until_signal(options: argparse.Namespace) -> int:
    """Serve as :func:`serve` does until SIGINT or SIGTERM; return the exit code."""
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
        return asyncio.run(serve_until_signal(options))
    except KeyboardInterrupt:  # where the loop has no signal handlers (Windows)
        return 0
