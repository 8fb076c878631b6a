"""The operator's commands of ``aiotlink`` (the ``cli`` extra: click and rich).

Every command is a thin layer over the client: ``run`` on ``initialise`` and
``wait_for_completion``, ``wait`` on ``wait_for_completion`` (the shared polling),
``result --out`` on ``download_result``. What the server sends is shown to a person only
through :func:`clean` (no terminal escape sequence gets through) and to a script only as
strict JSON (:func:`dump_json`). The exit codes are in :data:`EXIT_CODES_HELP`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import math
import os
import re
import sys
import time
import traceback
import unicodedata
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from typing import IO, Any, TextIO

import attrs
import click
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from . import TransactionLinkClient
from ._arguments import (
    BASE_URL_ENV_VAR,
    MAX_EXPIRY,
    TOKEN_ENV_VAR,
    check_destination,
    check_execution_id,
    check_expires_at,
    check_parameters,
    check_seconds,
    check_text,
    check_uuid,
    parse_strict_json,
    read_small_file,
)
from ._errors import (
    APIError,
    ResultTooLargeError,
    TransactionLinkError,
    WaitTimeoutError,
    WebhookVerificationError,
)
from ._models import WorkflowExecution, WorkflowStatus

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_TIMEOUT = 3
EXIT_API_ERROR = 4
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141
EXIT_CODES_HELP = """\b
Exit codes:
  0    done; for run --wait and wait: every execution COMPLETED
  1    an execution ended FAILED, TIMEOUT, TERMINATED, EXPIRED or CANCELLED
       (webhooks verify: the delivery does not verify; 4 if its key cannot be fetched)
  2    usage error: a bad option, file or id, or no token (nothing was sent)
  3    the wait's --timeout passed first (the executions go on)
  4    API error: not found, refused, unreachable, a malformed answer, or (result)
       a result too large to print; also any unexpected error (-vv: its traceback)
       (run exits 0 for a completed execution whose result is too large to print,
       and says how to fetch it)
  130  interrupted (Ctrl-C)
  141  stdout was closed (e.g. piped into head)
With several ids the highest code of 4, 3, 1 wins."""

# A result printed to a terminal or a pipe is held in memory whole: past this, the
# command says how to stream it to a file instead (`aiotlink result ID --out PATH`).
MAX_PRINTED_RESULT_BYTES = 2**20
# A token file holds one token: a bound keeps a wrong path (a log) from being read.
MAX_TOKEN_FILE_BYTES = 64 * 1024
MAX_PARAMS_FILE_BYTES = 4 * 2**20
MAX_IDS_FILE_BYTES = 64 * 2**20
# A server-supplied string is cut to this many characters when shown to a person.
MAX_SHOWN_CHARS = 300
_DURATION = re.compile(r"(\d{1,12}(?:\.\d{1,9})?)\s*([smhd]?)", re.IGNORECASE)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}
_SEVERITY = (EXIT_API_ERROR, EXIT_TIMEOUT, EXIT_FAILED)


class UsageProblem(Exception):
    """A bad option or input: shown as one line, exit code 2, before any request."""


class StdoutClosed(Exception):
    """stdout was closed under us (a pipe into ``head``): exit code 141, quietly.

    Not an ``OSError``: click would turn a broken pipe into exit code 1 on its own.
    """


def clean(value: object, limit: int = MAX_SHOWN_CHARS) -> str:
    r"""``value`` as text safe to print to a terminal, at most ``limit`` characters.

    Control characters (ESC starts every terminal escape sequence, CR and BS rewrite
    what is shown), format characters (bidirectional overrides, zero-width ones) and
    lone surrogates are written as ``\x1b``, ``\u202e``: visible, and inert.
    """
    text = str(value)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    if text.isprintable():
        return text
    return "".join(
        char.encode("unicode_escape").decode("ascii")
        if unicodedata.category(char) in ("Cc", "Cf", "Cs", "Zl", "Zp")
        else char
        for char in text
    )


def clean_lines(text: str) -> str:
    """Several lines (indented JSON), each cleaned as :func:`clean` does, none cut."""
    return "\n".join(clean(line, len(line) + 1) for line in text.split("\n"))


def _finite(value: Any) -> Any:
    """``value`` with every NaN and infinity replaced by ``None`` (JSON's null).

    Iterative: a result nests as deep as the client's parser allows (about a thousand
    levels), deeper than recursion here could go.
    """
    top: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(value, top, 0)]
    while stack:
        item, into, key = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            item = None
        elif isinstance(item, dict):
            copy = dict.fromkeys(item)  # the keys in their order; values filled below
            stack.extend((child, copy, name) for name, child in item.items())
            item = copy
        elif isinstance(item, list | tuple):
            copy_list: list[Any] = [None] * len(item)
            stack.extend((child, copy_list, index) for index, child in enumerate(item))
            item = copy_list
        into[key] = item
    return top[0]


def dump_json(value: Any, *, indent: int | None = None) -> str:
    """``value`` as strict JSON: ASCII only, and NaN or infinity (not JSON) as ``null``.

    A result may hold them (the client decodes what the server sends); a script reading
    the output must get JSON that any parser takes.
    """
    try:
        return json.dumps(value, allow_nan=False, indent=indent)
    except ValueError:
        return json.dumps(_finite(value), allow_nan=False, indent=indent)


def execution_record(execution: WorkflowExecution) -> dict[str, Any]:
    """What a script is told of an execution (its token is left out: it opens the page)."""
    return {
        "id": execution.id,
        "status": execution.status.value,
        "workflow_definition_id": execution.workflow_definition_id,
        "name": execution.name,
        "revision": execution.revision,
        "locale": execution.locale,
        "link": execution.link,
        "expires_at": None if execution.expires_at is None else execution.expires_at.isoformat(),
        "record_id": None if execution.record_id is None else str(execution.record_id),
        "origin": execution.origin.type,
        "parameters": execution.parameters,
    }


def error_record(error: BaseException) -> dict[str, Any]:
    """An error as a script sees it: its type, message and, for API errors, status and code."""
    record: dict[str, Any] = {"type": type(error).__name__, "message": str(error)}
    if isinstance(error, APIError):
        record["status"] = error.status
        record["code"] = error.errors[0].code if error.errors else None
        record["fingerprint"] = error.fingerprint
    return record


def exit_code_of(error: BaseException) -> int:
    """The exit code an error ends a command with."""
    if isinstance(error, WaitTimeoutError):
        return EXIT_TIMEOUT
    return EXIT_API_ERROR


def worst(codes: Sequence[int]) -> int:
    """The exit code of several outcomes: the first of 4, 3, 1 among them, else 0."""
    return next((code for code in _SEVERITY if code in codes), EXIT_OK)


@attrs.define
class Output:
    """Where a command writes: results on stdout, messages on stderr, live views on either.

    In JSON mode stdout gets only JSON lines, and live views go to stderr when it is a
    terminal (else nowhere); otherwise they go to stdout when it is a terminal, and
    plain lines replace them when it is not.
    """

    json_mode: bool
    stdout: TextIO
    stderr: TextIO
    display: Console | None = None
    _live: Live | None = None

    @classmethod
    def create(cls, json_mode: bool) -> Output:
        """The output of a command run now (click's test runner swaps the streams)."""
        out = cls(json_mode, sys.stdout, sys.stderr)
        stream = sys.stderr if json_mode else sys.stdout
        console = Console(file=stream, highlight=False, markup=False, emoji=False)
        out.display = console if console.is_terminal else None
        return out

    @property
    def live(self) -> bool:
        """Whether a live view (updated in place) is shown."""
        return self.display is not None

    @property
    def plain_progress(self) -> bool:
        """Whether progress is written as plain lines (human output, not a terminal)."""
        return not self.json_mode and self.display is None

    def line(self, text: str) -> None:
        """One line of human output on stdout (already cleaned by the caller)."""
        if not self.json_mode:
            write_all(self.stdout, text + "\n")

    def record(self, record: Mapping[str, Any]) -> None:
        """One JSON object on its own line of stdout (JSON mode only)."""
        if self.json_mode:
            write_all(self.stdout, dump_json(record) + "\n")

    def message(self, text: str) -> None:
        """A line for the person on stderr, in either mode.

        While a live view is shown and stderr is a terminal (the same screen, as a
        rule), the line is printed above the view by its console: written beside it,
        the view's next redraw would draw over it.
        """
        if self._live is not None and _is_terminal(self.stderr):
            self._live.console.print(Text(text), soft_wrap=True)
            return
        self.stderr.write(text + "\n")
        self.stderr.flush()

    @contextlib.contextmanager
    def live_view(self, renderable: Any, **options: Any) -> Iterator[Live]:
        """A live view on the display, its last frame left on the screen (not transient)."""
        assert self.display is not None
        with Live(
            renderable,
            console=self.display,
            redirect_stdout=False,
            redirect_stderr=False,
            transient=False,
            **options,
        ) as live:
            self._live = live
            try:
                yield live
            finally:
                self._live = None

    def error(self, key: str | None, error: BaseException) -> None:
        """An error about one id: a JSON record with the id, or a line on stderr."""
        if self.json_mode:
            self.record({"id": key, "error": error_record(error)})
        else:
            where = f"{clean(key)}: " if key is not None else ""
            self.message(f"error: {where}{type(error).__name__}: {clean(error, 1000)}")


def write_all(stream: TextIO, text: str) -> None:
    """Write ``text`` to ``stream`` and flush: all of it, or ``BrokenPipeError``.

    Unbuffered (``PYTHONUNBUFFERED``, ``python -u``), stdout's text layer writes straight
    to the file, and a pipe may take only part of a large write (64 KiB): the text layer
    drops the rest without a word, so a result piped into ``head -c 10`` would end with
    exit code 0. Written here to the file in a loop, the closed pipe is an error.
    """
    raw = getattr(stream, "buffer", None)
    if not isinstance(raw, io.RawIOBase):
        stream.write(text)
        stream.flush()
        return
    stream.flush()
    data = memoryview(text.encode(stream.encoding, stream.errors or "strict"))
    while data:
        written = raw.write(data)
        data = data[written or 0 :]


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a stream without isatty, or a closed one
        return False


class _CleanFormatter(logging.Formatter):
    """Log lines with what the server sent cleaned of escape sequences."""

    def format(self, record: logging.LogRecord) -> str:
        return "\n".join(clean(line, 2000) for line in super().format(record).splitlines())


@contextlib.contextmanager
def library_logs(verbose: int, stream: TextIO) -> Iterator[None]:
    """The ``aiotlink`` logger on ``stream`` at INFO (``-v``) or DEBUG (``-vv``), else silent.

    Silent means silent: without a handler, Python's last-resort handler would print
    the library's warnings (a retry, a skipped poll) over the live view.
    """
    logger = logging.getLogger("aiotlink")
    saved = (logger.level, logger.propagate, logger.handlers[:])
    handler: logging.Handler = logging.NullHandler()
    if verbose:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(_CleanFormatter("%(levelname)s %(name)s: %(message)s"))
    logger.handlers = [handler]
    logger.propagate = False
    logger.setLevel(logging.DEBUG if verbose >= 2 else logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(saved[0])
        logger.propagate = saved[1]
        logger.handlers = saved[2]


def read_token_file(path: str) -> str:
    """The token in ``path``, surrounding whitespace stripped; never shown in an error."""
    try:
        data = read_small_file(path, MAX_TOKEN_FILE_BYTES, f"--token-file {path}")
    except ValueError as error:
        raise UsageProblem(str(error)) from None
    try:
        token = data.decode("ascii").strip()
    except UnicodeDecodeError:
        token = None
    if token is None:
        raise UsageProblem(f"--token-file {path} holds non-ASCII bytes (not shown)")
    if not token:
        raise UsageProblem(f"--token-file {path} is empty")
    return token


@attrs.frozen
class Settings:
    """The options every command takes."""

    json_mode: bool
    base_url: str | None
    token_file: str | None
    verbose: int


def _client(settings: Settings) -> TransactionLinkClient:
    if settings.token_file is not None:
        token = read_token_file(settings.token_file)
    else:
        token = os.environ.get(TOKEN_ENV_VAR, "")
        if not token:
            raise UsageProblem(
                f"no API token: set {TOKEN_ENV_VAR} or pass --token-file FILE "
                "(never the token itself: it would show in ps and shell history)"
            )
    try:
        return TransactionLinkClient(token, base_url=settings.base_url)
    except (TypeError, ValueError) as error:
        raise UsageProblem(str(error)) from None


def execute(
    settings: Settings, body: Callable[[TransactionLinkClient, Output], Awaitable[int]]
) -> int:
    """Run ``body`` with a client and the output, under the logging ``-v`` asks for."""
    output = Output.create(settings.json_mode)

    async def main() -> int:
        async with _client(settings) as client:
            return await body(client, output)

    with library_logs(settings.verbose, sys.stderr):
        try:
            return asyncio.run(main())
        except BrokenPipeError:
            raise StdoutClosed from None


def common_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Add the options every command has: --json, --base-url, --token-file, -v."""
    options = [
        click.option(
            "--json",
            "json_mode",
            is_flag=True,
            help="Write one JSON object per line on stdout and nothing else.",
        ),
        click.option(
            "--base-url",
            metavar="URL",
            help=f"API base URL (default: ${BASE_URL_ENV_VAR}, else the production API).",
        ),
        click.option(
            "--token-file",
            metavar="FILE",
            help=f"Read the API token from FILE (default: ${TOKEN_ENV_VAR}).",
        ),
        click.option(
            "-v", "--verbose", count=True, help="Show the library's logs on stderr (-vv: debug)."
        ),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def settings_of(options: Mapping[str, Any]) -> Settings:
    """The common options out of a command's keyword arguments."""
    return Settings(
        options["json_mode"], options["base_url"], options["token_file"], options["verbose"]
    )


def _positive_seconds(
    _context: click.Context, parameter: click.Parameter, value: float | None
) -> float | None:
    try:
        return check_seconds(parameter.human_readable_name, value, allow_none=True)
    except ValueError:
        raise click.BadParameter(
            f"must be a finite, positive number of seconds, got {value}"
        ) from None


def _execution_ids(values: Sequence[str], where: str = "") -> list[str]:
    for value in values:
        try:
            check_execution_id(value)
        except ValueError as error:
            raise UsageProblem(f"{where}{error}") from None
    return list(values)


def seconds_option(name: str, default: float | None, text: str) -> Callable[..., Any]:
    """An option of a finite, positive number of seconds."""
    return click.option(
        name,
        type=float,
        default=default,
        show_default=default is not None,
        callback=_positive_seconds,
        help=text,
    )


timeout_option = seconds_option("--timeout", None, "Wait at most this many seconds.")
poll_interval_option = seconds_option(
    "--poll-interval", 1.0, "Seconds between the first polls (they grow while nothing changes)."
)


def text_argument(name: str, value: str) -> str:
    """``value`` if it is text; ``UsageProblem`` for bytes that are not UTF-8.

    Python hands such bytes of the command line over as lone surrogates (PEP 383):
    they cannot be sent as JSON text, nor shown.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageProblem(f"{name} is not UTF-8 text: {clean(value, 40)!r}") from None
    return value


def destination_of(option: str, path: str) -> str:
    """A file to stream a result to; ``-`` is refused (it would be a file named "-")."""
    if path == "-":
        raise UsageProblem(f"{option} - is not stdout: print the result without {option}")
    return str(check_destination(path))


def parse_duration(text: str) -> timedelta:
    """``45m``, ``2h``, ``7d`` or seconds as a timedelta; ``UsageProblem`` otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise UsageProblem(f"--expires-in must be like 45m, 2h or 7d, got {clean(text, 40)!r}")
    seconds = float(match[1]) * _DURATION_UNITS[match[2].lower()]
    if seconds > MAX_EXPIRY.total_seconds() * 2:
        # timedelta itself overflows well before the largest number written here.
        raise UsageProblem(f"--expires-in must be at most 30 days, got {clean(text, 40)}")
    return timedelta(seconds=seconds)


def _expiry(expires_in: str) -> datetime | None:
    try:
        return check_expires_at(parse_duration(expires_in), now=datetime.now(UTC))
    except ValueError:  # it names expires_at, the library's argument: name the option
        raise UsageProblem(
            f"--expires-in must be 30m to 30d, got {clean(expires_in, 40)!r}"
        ) from None


def read_params(params_file: IO[bytes] | None, params: Sequence[str]) -> dict[str, Any]:
    """The parameters: the file's JSON object, then each KEY=VALUE (a string) over it."""
    parameters: dict[str, Any] = {}
    if params_file is not None:
        data = params_file.read(MAX_PARAMS_FILE_BYTES + 1)
        name = f"--params-file {params_file.name}"
        if len(data) > MAX_PARAMS_FILE_BYTES:
            raise UsageProblem(f"{name} is over {MAX_PARAMS_FILE_BYTES} bytes")
        try:
            document = parse_strict_json(data, name)
        except ValueError as error:
            raise UsageProblem(str(error)) from None
        if not isinstance(document, dict):
            raise UsageProblem(f"{name} must hold a JSON object")
        parameters.update(document)
    for param in params:
        key, equals, value = text_argument("--param", param).partition("=")
        if not equals or not key:
            raise UsageProblem(f"--param must be KEY=VALUE, got {clean(param, 40)!r}")
        parameters[key] = value
    try:
        check_parameters(parameters)
    except ValueError as error:
        raise UsageProblem(str(error)) from None
    return parameters


@contextlib.contextmanager
def status_view(output: Output, title: str) -> Iterator[Callable[[WorkflowExecution], None]]:
    """A function to call with each status seen: a live line, plain lines, or nothing."""
    started = time.monotonic()
    if output.display is not None:
        text = Text(f"{title}  waiting")
        with output.live_view(text, refresh_per_second=8):

            def show(execution: WorkflowExecution) -> None:
                elapsed = time.monotonic() - started
                text.plain = f"{title}  {clean(execution.status.value)}  {elapsed:.1f} s"

            yield show
        return

    def plain(execution: WorkflowExecution) -> None:
        if output.plain_progress:
            output.line(f"{clean(execution.status.value)}  {time.monotonic() - started:.1f} s")

    yield plain


def show_execution(output: Output, execution: WorkflowExecution, key: str | None = None) -> None:
    """One execution: a JSON record (its id ``key`` when given), or one line with its link."""
    output.record(execution_record(execution) | ({} if key is None else {"id": key}))
    link = f"  {clean(execution.link)}" if execution.link else ""
    output.line(f"{clean(execution.id)}  {clean(execution.status.value)}{link}")


def show_result(output: Output, key: str, result: Any) -> None:
    """A result: a JSON record with the id, or the JSON itself, indented and cleaned."""
    output.record({"id": key, "result": result})
    output.line(clean_lines(dump_json(result, indent=2)))


def too_large_hint(key: str) -> str:
    """What to do with a result too large to print."""
    return f"the result is too large to print: aiotlink result {key} --out PATH"


class ProgressBar:
    """A download's progress bar (bytes, rate, time left), fed by ``on_progress``."""

    def __init__(self, console: Console, label: str) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._task = self._progress.add_task(label, total=None)

    def __enter__(self) -> ProgressBar:
        self._progress.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._progress.stop()

    def update(self, done: int, total: int | None) -> None:
        """``download_result``'s ``on_progress``."""
        self._progress.update(self._task, completed=done, total=total)


async def download(
    client: TransactionLinkClient, output: Output, key: str, path: str
) -> dict[str, Any]:
    """Stream a result to ``path`` with a progress bar where there is a terminal."""
    bar = ProgressBar(output.display, clean(key)) if output.display is not None else None
    with bar if bar is not None else contextlib.nullcontext():
        downloaded = await client.workflows.download_result(
            key, path, on_progress=None if bar is None else bar.update
        )
    return {
        "id": key,
        "path": str(downloaded.path),
        "size": downloaded.size,
        "redirected": downloaded.redirected,
    }


def download_line(record: Mapping[str, Any]) -> str:
    """Where a downloaded result went, for a person."""
    where = "pre-signed storage" if record["redirected"] else "the API"
    return f"{clean(record['path'])}  {record['size']:,} bytes from {where}"


def help_if_alone(context: click.Context) -> int:
    """A group given no command prints its help (exit code 0)."""
    if context.invoked_subcommand is None:
        click.echo(context.get_help())
    return EXIT_OK


# The command tree --------------------------------------------------------------------


@click.group(
    help=(
        "Operate TransactionLink workflow executions: start, find, wait for, cancel, "
        "fetch results, and serve a fake API for trying it all.\n\n"
        f"The token comes from ${TOKEN_ENV_VAR} or --token-file, never from the command "
        f"line; the base URL from --base-url or ${BASE_URL_ENV_VAR}.\n\n{EXIT_CODES_HELP}"
    ),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    invoke_without_command=True,
)
@click.version_option(version("aiotlink"), prog_name="aiotlink")
@click.pass_context
def cli(context: click.Context) -> int:
    """The ``aiotlink`` command group."""
    return help_if_alone(context)


@cli.command(
    short_help="Start an execution, wait for it, show its result.",
    epilog=(
        "\b\nExample:\n  aiotlink run 6f1c... --param customerId=c-42 --timeout 600"
        "\n  aiotlink run 6f1c... --no-wait --json"
    ),
)
@click.argument("definition_id")
@click.option("--param", "params", multiple=True, metavar="KEY=VALUE", help="A parameter.")
@click.option(
    "--params-file",
    type=click.File("rb"),
    help="A JSON object of parameters ('-': stdin); --param overrides its keys.",
)
@click.option("--locale", default="en", show_default=True, help="The hosted page's language.")
@click.option("--expires-in", metavar="DURATION", help="Expire after 30m to 30d, e.g. 2h, 7d.")
@click.option("--record-id", metavar="UUID", help="The record the execution belongs to.")
@click.option("--wait/--no-wait", default=True, show_default=True, help="Wait for the end.")
@timeout_option
@poll_interval_option
@click.option("--download", metavar="PATH", help="Stream the result to PATH, not stdout.")
@click.option(
    "--cancel-on-interrupt",
    is_flag=True,
    help="On Ctrl-C while waiting, cancel the remote execution (else it goes on).",
)
@common_options
def run(
    definition_id: str,
    params: tuple[str, ...],
    params_file: IO[bytes] | None,
    locale: str,
    expires_in: str | None,
    record_id: str | None,
    wait: bool,
    timeout: float | None,
    poll_interval: float,
    download: str | None,
    cancel_on_interrupt: bool,
    **options: Any,
) -> int:
    """Start an execution of DEFINITION_ID; wait for it and show its result.

    Prints the execution's id at once. A result over 1 MiB is not printed: pass
    --download PATH, or fetch it later with aiotlink result ID --out PATH.
    """
    settings = settings_of(options)
    if not wait:
        given = {
            "--download": download is not None,
            "--timeout": timeout is not None,
            "--cancel-on-interrupt": cancel_on_interrupt,
        }
        for name, present in given.items():
            if present:
                raise UsageProblem(f"{name} applies to a run that waits: drop --no-wait or it")
    text_argument("DEFINITION_ID", definition_id)
    text_argument("--locale", locale)
    parameters = read_params(params_file, params)
    try:
        check_text("definition_id", definition_id)
        check_text("locale", locale)
        expires_at = None
        if expires_in is not None:
            expires_at = _expiry(expires_in)
        uuid = None if record_id is None else check_uuid("--record-id", record_id)
        destination = None if download is None else destination_of("--download", download)
    except ValueError as error:
        raise UsageProblem(str(error)) from None

    async def body(client: TransactionLinkClient, output: Output) -> int:
        try:
            execution = await client.workflows.initialise(
                definition_id,
                locale=locale,
                parameters=parameters,
                expires_at=expires_at,
                record_id=uuid,
            )
        except TransactionLinkError as error:
            output.error(None, error)
            return EXIT_API_ERROR
        key = execution.id
        if not wait:
            show_execution(output, execution)
            return EXIT_OK
        link = f"  {clean(execution.link)}" if execution.link else ""
        output.line(f"started {clean(key)}{link}")
        try:
            with status_view(output, clean(key)) as show:
                execution = await client.workflows.wait_for_completion(
                    key,
                    timeout=timeout,
                    poll_interval=poll_interval,
                    on_status=show,
                    raise_on_failure=False,
                    cancel_remote_on_cancel=cancel_on_interrupt,
                )
        except asyncio.CancelledError:
            what = "asked to cancel it" if cancel_on_interrupt else "it goes on"
            output.message(f"interrupted: execution {clean(key)}: {what}")
            if output.json_mode:
                output.record(
                    {"id": key, "error": {"type": "Interrupted", "cancelled": cancel_on_interrupt}}
                )
            raise
        except TransactionLinkError as error:
            output.error(key, error)
            return exit_code_of(error)
        if execution.status is not WorkflowStatus.COMPLETED:
            show_execution(output, execution)
            return EXIT_FAILED
        return await _run_result(client, output, execution, destination)

    return execute(settings, body)


async def _run_result(
    client: TransactionLinkClient,
    output: Output,
    execution: WorkflowExecution,
    destination: str | None,
) -> int:
    key = execution.id
    record = execution_record(execution)
    try:
        if destination is not None:
            record["download"] = await download(client, output, key, destination)
        else:
            record["result"] = await client.workflows.get_result(
                key, max_bytes=MAX_PRINTED_RESULT_BYTES
            )
    except ResultTooLargeError:
        record["result_omitted"] = too_large_hint(key)
        output.message(too_large_hint(key))
    except TransactionLinkError as error:
        output.error(key, error)
        return EXIT_API_ERROR
    output.record(record)
    output.line(f"{clean(key)}  COMPLETED")
    if "download" in record:
        output.line(download_line(record["download"]))
    elif "result" in record:
        output.line(clean_lines(dump_json(record["result"], indent=2)))
    return EXIT_OK


async def each_id(
    output: Output, keys: Sequence[str], act: Callable[[str], Awaitable[None]]
) -> int:
    """``act`` on each id in turn; an API error is shown for its id (exit code 4)."""
    codes = []
    for key in keys:
        try:
            await act(key)
        except TransactionLinkError as error:
            output.error(key, error)
            codes.append(EXIT_API_ERROR)
    return worst(codes)


@cli.command(epilog="\b\nExample:\n  aiotlink find 0b6f... 9c2e... --json")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@common_options
def find(ids: tuple[str, ...], **options: Any) -> int:
    """Show executions as they are now: status, name, hosted link."""
    keys = _execution_ids(ids)

    async def body(client: TransactionLinkClient, output: Output) -> int:
        async def show(key: str) -> None:
            # Keyed by the id as given, as wait's records are: the server may change its case.
            show_execution(output, await client.workflows.find(key), key)

        return await each_id(output, keys, show)

    return execute(settings_of(options), body)


@cli.command(epilog="\b\nExample:\n  aiotlink cancel 0b6f...")
@click.argument("ids", nargs=-1, required=True, metavar="ID...")
@common_options
def cancel(ids: tuple[str, ...], **options: Any) -> int:
    """Cancel executions that have not ended."""
    keys = _execution_ids(ids)

    async def body(client: TransactionLinkClient, output: Output) -> int:
        async def cancel_one(key: str) -> None:
            await client.workflows.cancel(key)
            output.record({"id": key, "cancelled": True})
            output.line(f"{clean(key)}  cancelled")

        return await each_id(output, keys, cancel_one)

    return execute(settings_of(options), body)


@attrs.define
class Row:
    """One execution of ``wait``: what was last seen of it, and how it ended."""

    key: str
    status: str = "waiting"
    outcome: str | None = None
    code: int | None = None
    changed: float = 0.0


class WaitTable:
    """The rows of ``wait``, keyed by the id as the user typed it, and their rendering."""

    def __init__(self, keys: Sequence[str], height: int) -> None:
        self.rows = {key: Row(key) for key in keys}
        self._height = max(height - 4, 3)
        self._started = time.monotonic()

    def render(self) -> Group:
        """The live view: the rows that fit, most recently changed first, and counts."""
        table = Table("execution", "status", "seconds", box=None, pad_edge=False)
        rows = sorted(self.rows.values(), key=lambda row: -row.changed)
        for row in rows[: self._height]:
            table.add_row(Text(clean(row.key)), Text(row.status), f"{row.changed:.1f}")
        left = len(self.rows) - self._height
        more = Text(f"... and {left} more") if left > 0 else Text("")
        return Group(table, more, Text(self.summary()))

    def seen(self, key: str, status: str) -> None:
        """A status seen for ``key`` (cleaned here, once)."""
        row = self.rows[key]
        row.status = clean(status, 40)
        row.changed = time.monotonic() - self._started

    def summary(self) -> str:
        """Counts of the outcomes so far."""
        ended = [row for row in self.rows.values() if row.outcome is not None]
        counts: dict[str, int] = {}
        for row in ended:
            assert row.outcome is not None
            counts[row.outcome] = counts.get(row.outcome, 0) + 1
        parts = [f"{count} {name}" for name, count in sorted(counts.items())]
        waiting = len(self.rows) - len(ended)
        if waiting:
            parts.append(f"{waiting} waiting")
        return f"{len(self.rows)} executions: " + ", ".join(parts)


def _read_ids_file(ids_file: IO[bytes]) -> list[str]:
    data = ids_file.read(MAX_IDS_FILE_BYTES + 1)
    if len(data) > MAX_IDS_FILE_BYTES:
        raise UsageProblem(f"--from-file is over {MAX_IDS_FILE_BYTES} bytes")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise UsageProblem(f"--from-file is not UTF-8 text (byte {error.start})") from None
    keys = []
    for number, line in enumerate(text.splitlines(), start=1):
        entry = line.strip()
        if entry and not entry.startswith("#"):
            keys.extend(_execution_ids([entry], where=f"--from-file line {number}: "))
    return keys


@cli.command(
    short_help="Wait for many executions, with a live table.",
    epilog=(
        "\b\nExample:\n  aiotlink wait 0b6f... 9c2e... --timeout 600"
        "\n  aiotlink find ... | jq -r .id | aiotlink wait --from-file - --json"
    ),
)
@click.argument("ids", nargs=-1, metavar="[ID]...")
@click.option(
    "--from-file",
    "ids_file",
    type=click.File("rb"),
    help="Also the ids in FILE, one a line ('-': stdin; # starts a comment).",
)
@timeout_option
@poll_interval_option
@common_options
def wait(
    ids: tuple[str, ...],
    ids_file: IO[bytes] | None,
    timeout: float | None,
    poll_interval: float,
    **options: Any,
) -> int:
    """Wait for many executions at once, with a live table, and a summary at the end.

    An id given twice is waited for once. Each execution's outcome is printed as it
    ends (with --json, one object per line, keyed by the id as given).
    """
    keys = _execution_ids(ids)
    if ids_file is not None:
        keys.extend(_read_ids_file(ids_file))
    if not keys:
        raise UsageProblem("no execution id: give some, or --from-file FILE")
    # One row per execution: ids that differ only in case (a UUID) are one execution.
    unique: dict[str, str] = {}
    for key in keys:
        unique.setdefault(check_execution_id(key), key)
    duplicates = len(keys) - len(unique)

    async def body(client: TransactionLinkClient, output: Output) -> int:
        height = output.display.size.height if output.display is not None else 0
        table = WaitTable(list(unique.values()), height)

        def ended(key: str, outcome: str, code: int, record: dict[str, Any]) -> None:
            row = table.rows[key]
            row.outcome, row.code = outcome, code
            output.record(record)
            if output.plain_progress:
                output.line(f"{clean(key)}  {clean(outcome, 60)}")

        async def follow(key: str) -> None:
            def seen(execution: WorkflowExecution) -> None:
                table.seen(key, execution.status.value)
                if output.plain_progress and not execution.is_terminal:
                    output.line(f"{clean(key)}  {clean(execution.status.value)}")

            try:
                execution = await client.workflows.wait_for_completion(
                    key,
                    timeout=timeout,
                    poll_interval=poll_interval,
                    on_status=seen,
                    raise_on_failure=False,
                )
            except TransactionLinkError as error:
                table.seen(key, "timed out" if isinstance(error, WaitTimeoutError) else "error")
                outcome = "timed out" if isinstance(error, WaitTimeoutError) else "error"
                if not output.json_mode:
                    output.error(key, error)
                ended(key, outcome, exit_code_of(error), {"id": key, "error": error_record(error)})
                return
            code = EXIT_OK if execution.status is WorkflowStatus.COMPLETED else EXIT_FAILED
            # Keyed by the id as given: the server may spell it in another case.
            record = execution_record(execution) | {"id": key}
            ended(key, execution.status.value, code, record)

        async def follow_all() -> None:
            try:
                await asyncio.gather(*(follow(key) for key in table.rows))
            except asyncio.CancelledError:  # Ctrl-C: a record for each id still waited for
                for row in table.rows.values():
                    if row.outcome is None:
                        output.record({"id": row.key, "error": {"type": "Interrupted"}})
                raise

        if output.display is not None:
            with output.live_view(
                table.render(), refresh_per_second=4, get_renderable=table.render
            ):
                await follow_all()
            # The table shows the rows that fit the screen: name every one that did
            # not complete below it, so that none is lost.
            for row in table.rows.values():
                if row.code is not None and row.code != EXIT_OK:
                    output.line(f"{clean(row.key)}  {clean(row.outcome, 60)}")
        else:
            await follow_all()
        note = f" ({duplicates} duplicate ids waited for once)" if duplicates else ""
        summary = table.summary() + note
        if output.json_mode or output.display is None:
            (output.message if output.json_mode else output.line)(summary)
        codes = [row.code for row in table.rows.values() if row.code is not None]
        return worst(codes)

    return execute(settings_of(options), body)


@cli.command(
    short_help="Print a result, or stream it to a file.",
    epilog=("\b\nExample:\n  aiotlink result 0b6f...\n  aiotlink result 0b6f... --out report.json"),
)
@click.argument("execution_id", metavar="ID")
@click.option(
    "--out",
    metavar="PATH",
    help="Stream the result to PATH (any size; resumes a dropped connection).",
)
@common_options
def result(execution_id: str, out: str | None, **options: Any) -> int:
    """Print a completed execution's result (up to 1 MiB), or stream it to a file."""
    try:
        check_uuid("ID", execution_id)
        destination = None if out is None else destination_of("--out", out)
    except ValueError as error:
        raise UsageProblem(str(error)) from None

    async def body(client: TransactionLinkClient, output: Output) -> int:
        try:
            if destination is not None:
                saved = await download(client, output, execution_id, destination)
                output.record(saved)
                output.line(download_line(saved))
                return EXIT_OK
            value = await client.workflows.get_result(
                execution_id, max_bytes=MAX_PRINTED_RESULT_BYTES
            )
        except ResultTooLargeError:
            output.message(too_large_hint(execution_id))
            if output.json_mode:
                output.record(
                    {
                        "id": execution_id,
                        "error": {
                            "type": "ResultTooLargeError",
                            "message": too_large_hint(execution_id),
                        },
                    }
                )
            return EXIT_API_ERROR
        except TransactionLinkError as error:
            output.error(execution_id, error)
            return EXIT_API_ERROR
        show_result(output, execution_id, value)
        return EXIT_OK

    return execute(settings_of(options), body)


@cli.command(
    "fake-server",
    short_help="Serve a fake API on 127.0.0.1 until Ctrl-C.",
    epilog=(
        "\b\nExample:\n  aiotlink fake-server --port 8080 --step-seconds 0.5"
        "\n  aiotlink fake-server --definition my-flows.json"
    ),
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8080,
    show_default=True,
    help="The API's port on 127.0.0.1 (0: any free one).",
)
@click.option(
    "--step-seconds",
    type=click.FloatRange(0, 1e9),
    default=1.0,
    show_default=True,
    help="Seconds per status step (0: one step per find).",
)
@click.option("--webhook-url", metavar="URL", help="POST signed webhooks here (webhooks extra).")
@click.option(
    "--definition",
    "definition_files",
    multiple=True,
    metavar="FILE",
    help=(
        'Add the definitions in this JSON file: {"name", "statuses", and optionally "id", '
        '"result" or "result_bytes", "step_seconds", "interactive"}, or a list of them.'
    ),
)
@click.option(
    "--json",
    "json_mode",
    is_flag=True,
    help="Print one JSON line (url, storage_url, token, jwt, webhook_url, definitions), "
    "not the banner.",
)
def fake_server(
    port: int,
    step_seconds: float,
    webhook_url: str | None,
    definition_files: tuple[str, ...],
    json_mode: bool,
) -> int:
    """Serve a fake TransactionLink API on 127.0.0.1 until Ctrl-C; print its URL and token.

    Four ready definitions, plus those of --definition files. The same as
    python -m aiotlink.testing (see its --help for more options). Ctrl-C (or SIGTERM)
    is its normal end: exit code 0.
    """
    from .testing import _process

    if not math.isfinite(step_seconds):
        raise click.BadParameter("must be a finite number", param_hint="--step-seconds")
    argv = ["--port", str(port), "--step-seconds", repr(step_seconds)]
    if json_mode:
        argv.append("--json")
    for path in definition_files:
        argv += ["--definition", path]
    if webhook_url is not None:
        _check_webhook_url(webhook_url)
        argv += ["--webhook-url", webhook_url]
    try:
        for path in definition_files:
            _process.load_definitions(path)
        parsed = _process.build_parser().parse_args(argv)
    except ValueError as error:
        raise UsageProblem(clean(error, 500)) from None
    # The fake cannot start (a port in use, a refused option): nothing was served.
    return EXIT_USAGE if asyncio.run(_process.serve_until_signal(parsed)) else EXIT_OK


def _check_webhook_url(url: str) -> None:
    from yarl import URL

    try:
        parsed = URL(url)
        host = parsed.host
    except ValueError:
        host = None
    if host is None or parsed.scheme not in ("http", "https"):
        raise UsageProblem("--webhook-url must be an absolute http(s) URL")


@cli.group(short_help="Check webhook deliveries (webhooks extra).", invoke_without_command=True)
@click.pass_context
def webhooks(context: click.Context) -> int:
    """Check webhook deliveries (needs the webhooks extra: pip install "aiotlink[webhooks]")."""
    return help_if_alone(context)


@webhooks.command(
    epilog=(
        "\b\nExample:\n  aiotlink webhooks verify --signature 'eyJhbGciOi...' "
        "--body-file delivery.json"
    )
)
@click.option("--signature", required=True, help="The JWS-SIGNATURE header, as received.")
@click.option(
    "--body-file",
    type=click.File("rb"),
    default="-",
    show_default=True,
    help="The body, exactly as received ('-': stdin).",
)
@common_options
def verify(signature: str, body_file: IO[bytes], **options: Any) -> int:
    """Check that a captured delivery was signed by TransactionLink, and show its event."""
    from ._webhooks import DEFAULT_MAX_BODY_BYTES

    data = body_file.read(DEFAULT_MAX_BODY_BYTES + 1)
    if len(data) > DEFAULT_MAX_BODY_BYTES:
        raise UsageProblem(f"the body is over {DEFAULT_MAX_BODY_BYTES} bytes: not a delivery")

    async def body(client: TransactionLinkClient, output: Output) -> int:
        try:
            event = await client.webhooks.verify(data, signature)
        except ImportError as error:
            raise UsageProblem(str(error)) from None
        except WebhookVerificationError as error:
            output.error(None, error)
            # The key could not be fetched (the API unreachable, or refusing): nothing
            # is known of the delivery yet, so an API error, not a failed check.
            fetch_failed = isinstance(error.__cause__, TransactionLinkError)
            return EXIT_API_ERROR if fetch_failed else EXIT_FAILED
        key = None if event.execution_id is None else str(event.execution_id)
        output.record(
            {
                "id": key,
                "verified": True,
                "event_type": event.event_type,
                "status": event.status,
                "key_id": event.key_id,
                "payload": event.payload,
            }
        )
        output.line(
            f"verified: {clean(event.event_type)} for {clean(key)}, status "
            f"{clean(event.status)} (key {clean(event.key_id)})"
        )
        return EXIT_OK

    return execute(settings_of(options), body)


@cli.command(
    short_help="Run a complete flow (on a built-in fake without a token).",
    epilog="\b\nExample:\n  aiotlink demo",
)
@click.option("--definition", help="Workflow definition id to run (real API).")
@click.option("--large-result-definition", help="A definition whose result is large.")
@click.option("--cancel-definition", help="A definition to start and cancel.")
@click.option("--base-url", metavar="URL", help=f"API base URL (default: ${BASE_URL_ENV_VAR}).")
@seconds_option("--poll-interval", 1.0, "Seconds between the first polls (real API).")
@seconds_option("--timeout", 600.0, "Seconds to wait for each execution at most (real API).")
@click.option(
    "--json", "json_mode", is_flag=True, help='Write each step as a JSON line: {"step": ...}.'
)
def demo(**options: Any) -> int:
    """Run a complete flow: on a built-in fake server, or with a token on the API."""
    from ._cli import DemoOptions, run_demo_command

    return run_demo_command(DemoOptions(**options))


def _quiet_broken_pipe() -> int:
    # Python's own flush at exit would fail again and print a traceback.
    with contextlib.suppress(OSError, ValueError, AttributeError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    return EXIT_BROKEN_PIPE


def cli_main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: the process's); return the exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    try:
        code = cli.main(args=arguments, prog_name="aiotlink", standalone_mode=False)
    except click.ClickException as error:
        name = f" {arguments[0]}" if arguments and not arguments[0].startswith("-") else ""
        message = clean(error.format_message(), 500)
        click.echo(f"aiotlink{name}: error: {message} (see --help)", err=True)
        return EXIT_USAGE
    except UsageProblem as problem:
        click.echo(f"aiotlink: error: {clean(problem, 500)}", err=True)
        return EXIT_USAGE
    except (KeyboardInterrupt, click.Abort):
        return EXIT_INTERRUPTED
    except (BrokenPipeError, StdoutClosed):
        return _quiet_broken_pipe()
    except Exception as error:
        return _unexpected(error, arguments)
    return code if isinstance(code, int) else EXIT_OK


def _verbosity(arguments: Sequence[str]) -> int:
    """How many -v the command line has (before any ``--``)."""
    count = 0
    for argument in arguments:
        if argument == "--":
            break
        if argument == "--verbose":
            count += 1
        elif re.fullmatch(r"-v+", argument):
            count += len(argument) - 1
    return count


def _unexpected(error: Exception, arguments: Sequence[str]) -> int:
    """An error no command handled: one line (-vv: the traceback too), never a bare traceback.

    A library error keeps its documented code (3 for a timeout, else 4); anything else
    (a bug, an error the OS gives) is exit code 4 as well.
    """
    if _verbosity(arguments) >= 2:
        traceback.print_exception(error, file=sys.stderr)
    what = "error" if isinstance(error, TransactionLinkError) else "unexpected error"
    message = clean(error, 1000)
    click.echo(f"aiotlink: {what}: {type(error).__name__}: {message}", err=True)
    return exit_code_of(error)
