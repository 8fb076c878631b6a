"""Helpers of the command line's tests: servers in a thread, the CLI in-process and in a pty."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import attrs
import pytest
from aiohttp import web
from click.testing import CliRunner

from aiotlink._commands import cli_main

T = TypeVar("T")
AIOTLINK = str(Path(sys.executable).with_name("aiotlink"))


class LoopThread:
    """An event loop in a thread: servers for commands that run their own loop."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def call(self, awaitable: Awaitable[T], timeout: float = 30) -> T:
        """Run ``awaitable`` on the thread's loop; its result."""

        async def run() -> T:
            return await awaitable

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(timeout)

    def close(self) -> None:
        """Stop the loop and the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


@attrs.frozen
class Invoked:
    """What a command did: its exit code, stdout and stderr."""

    code: int
    out: str
    err: str

    def records(self) -> list[dict[str, Any]]:
        """stdout as JSON lines, parsed strictly (NaN and Infinity refused)."""
        return [strict_json(line) for line in self.out.splitlines()]


def strict_json(text: str) -> Any:
    """``text`` as JSON; NaN and Infinity (not JSON) raise."""

    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def invoke(
    arguments: Sequence[str],
    env: Mapping[str, str | None] | None = None,
    stdin: str | bytes | None = None,
    entry: Callable[[list[str]], int] = cli_main,
) -> Invoked:
    """Run the command line in this process, with click's runner isolating its streams.

    ``entry``: ``aiotlink._cli.main`` for the console script's own entry point.
    """
    runner = CliRunner()
    with runner.isolation(input=stdin, env=env) as (out, err, _):
        code = entry(list(arguments))
    return Invoked(code, out.getvalue().decode(), err.getvalue().decode())


class Screen(io.StringIO):
    """A stream that says it is a terminal: stdout and stderr on one screen, in-process."""

    def isatty(self) -> bool:
        return True


def invoke_on_screen(
    arguments: Sequence[str],
    env: Mapping[str, str | None],
    monkeypatch: pytest.MonkeyPatch,
    height: int = 12,
) -> tuple[int, str]:
    """Run a command with stdout and stderr on one (emulated) terminal: code, raw output."""
    from rich.console import Console

    from aiotlink._commands import Output

    stream = Screen()

    def create(cls: type[Output], json_mode: bool) -> Output:
        console = Console(
            file=stream,
            force_terminal=True,
            width=100,
            height=height,
            highlight=False,
            markup=False,
            emoji=False,
            _environ={"TERM": "xterm-256color"},
        )
        return cls(json_mode, stream, stream, console)

    monkeypatch.setattr(Output, "create", classmethod(create))
    invoked = invoke(arguments, env)
    return invoked.code, stream.getvalue()


_TERMINAL_TOKEN = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])|\x1b\][^\x07]*\x07|\r|\n|[^\x1b\r\n]+")


def screen_lines(raw: str) -> list[str]:
    """What a terminal shows after ``raw``: text, CR, LF, cursor up (CSI A), erase (CSI K).

    Enough of a terminal for rich's live views, which redraw by moving the cursor up
    and erasing lines; other sequences (colours, the cursor's visibility) are ignored.
    """
    lines, row, column = [""], 0, 0
    for match in _TERMINAL_TOKEN.finditer(raw):
        token = match[0]
        if token == "\n":
            row, column = row + 1, 0
            if row == len(lines):
                lines.append("")
        elif token == "\r":
            column = 0
        elif match[2] == "A":
            row = max(0, row - int(match[1] or 1))
        elif match[2] == "K":
            lines[row] = "" if match[1] == "2" else lines[row][:column]
        elif not token.startswith("\x1b"):
            line = lines[row].ljust(column)
            lines[row] = line[:column] + token + line[column + len(token) :]
            column += len(token)
    return [line.rstrip() for line in lines]


def run_process(
    arguments: Sequence[str], env: Mapping[str, str], timeout: float = 60, stdin: str = ""
) -> Invoked:
    """Run the installed ``aiotlink`` console script as a process."""
    done = subprocess.run(
        [AIOTLINK, *arguments],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **env},
        input=stdin,
    )
    return Invoked(done.returncode, done.stdout, done.stderr)


def child_env(token: str, url: str) -> dict[str, str]:
    """The environment of a command against a server."""
    return {"TRANSACTIONLINK_TOKEN": token, "TRANSACTIONLINK_BASE_URL": url}


def read_banner(process: subprocess.Popen[str]) -> dict[str, str]:
    """The fake process's banner: its URL, token, the ids by name, and the banner itself."""
    assert process.stdout is not None
    lines: list[str] = []
    for line in process.stdout:
        lines.append(line)
        if "Ctrl-C" in line:
            break
    banner = "".join(lines)
    info = {name: key for key, name in re.findall(r"^ {4}(\S+)\s+(\S+)", banner, re.M)}
    info["banner"] = banner
    info["url"] = found(r"listening on (\S+)", banner)
    info["token"] = found(r"token\s+(\S+)", banner)
    return info


def fake_server_process(*arguments: str) -> contextlib.AbstractContextManager[dict[str, str]]:
    """``aiotlink fake-server`` as a process: its URL, token, banner and definition ids."""
    return serving([AIOTLINK, "fake-server", "--port", "0", *arguments])


@contextlib.contextmanager
def serving(command: Sequence[str]) -> Iterator[dict[str, str]]:
    """The fake run by ``command`` as a process, until SIGINT: what its banner says."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        info = read_banner(process)
        yield info
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def found(pattern: str, text: str) -> str:
    """The first group of ``pattern`` in ``text``, which must be there."""
    match = re.search(pattern, text)
    assert match is not None, (pattern, text)
    return match[1]


def sigint_default() -> None:
    """In a child before it runs: SIGINT delivered as at a terminal (Popen's preexec_fn).

    A shell starts background jobs with SIGINT ignored and their children inherit that;
    Python then leaves Ctrl-C alone, as it should. CI may run the suite so: the tests
    that press Ctrl-C act as a user at the terminal.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def read_until(fd: int, done: Callable[[bytes], bool], timeout: float) -> bytes:
    """What ``fd`` gives until ``done(all so far)`` or EOF or ``timeout`` seconds."""
    data = b""
    deadline = time.monotonic() + timeout
    while not done(data) and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.05)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            data += chunk
    return data


@attrs.frozen
class TerminalRun:
    """A command run with stdout (and maybe stderr) on pseudo-terminals."""

    code: int
    out: bytes
    err: bytes


def run_in_pty(
    arguments: Sequence[str], env: Mapping[str, str], *, stderr_pty: bool, timeout: float = 60
) -> TerminalRun:
    """Run ``aiotlink`` with stdout on a pseudo-terminal, stderr on another one or a pipe."""
    out_main, out_child = pty.openpty()
    err_main, err_child = pty.openpty() if stderr_pty else os.pipe()
    environment = {**os.environ, **env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE"):
        environment.pop(name, None)
    process = subprocess.Popen(
        [AIOTLINK, *arguments],
        stdin=subprocess.DEVNULL,
        stdout=out_child,
        stderr=err_child,
        env=environment,
    )
    os.close(out_child)
    os.close(err_child)
    out, err = b"", b""
    deadline = time.monotonic() + timeout
    try:
        while process.poll() is None and time.monotonic() < deadline:
            out += read_until(out_main, lambda _: True, 0.05)
            err += read_until(err_main, lambda _: True, 0.05)
        out += read_until(out_main, lambda _: False, 0.3)
        err += read_until(err_main, lambda _: False, 0.3)
        code = process.wait(timeout=5)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        os.close(out_main)
        os.close(err_main)
    return TerminalRun(code, out, err)


async def hostile_app(
    routes: Mapping[tuple[str, str], Callable[[], web.Response]],
) -> tuple[str, web.AppRunner]:
    """Serve ``routes`` (method, path) on 127.0.0.1; the base URL, and the runner to clean up."""
    app = web.Application()
    for (method, path), answer in routes.items():

        async def handler(_: web.Request, answer: Callable[[], web.Response] = answer) -> Any:
            return answer()

        app.router.add_route(method, path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return f"http://127.0.0.1:{port}", runner
