"""Process mode: python -m aiotlink.testing."""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

import aiotlink.testing
from aiotlink.testing import FakeTransactionLink
from aiotlink.testing import _process as process

from .helpers import auth

PACKAGE_ROOT = Path(aiotlink.testing.__file__).resolve().parents[2]


async def start_process(*arguments: str) -> tuple[asyncio.subprocess.Process, str]:
    """Start the process mode; return it once it has printed its banner, and the banner."""
    environment = {**os.environ, "PYTHONPATH": str(PACKAGE_ROOT)}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "aiotlink.testing",
        *arguments,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    assert child.stdout is not None
    banner = ""
    while "Press Ctrl-C" not in banner:
        line = await asyncio.wait_for(child.stdout.readline(), timeout=30)
        assert line, "the process ended before printing its banner"
        banner += line.decode()
    return child, banner


async def stop_process(child: asyncio.subprocess.Process, signum: int) -> tuple[int, str, str]:
    """Send ``signum`` and wait for the exit; return the code, the rest of stdout, stderr."""
    child.send_signal(signum)
    out, err = await asyncio.wait_for(child.communicate(), timeout=30)
    assert child.returncode is not None
    return child.returncode, out.decode(), err.decode()


def definition_ids(banner: str) -> dict[str, str]:
    """The definition ids printed in the banner, by name."""
    pattern = r"^\s+([0-9a-f-]{36})\s+(\S+)"
    return {name: definition_id for definition_id, name in re.findall(pattern, banner, re.M)}


async def test_the_process_serves_and_stops_on_sigint(session: aiohttp.ClientSession) -> None:
    """The process prints its URL, token and definitions, serves them, and exits 0 on SIGINT."""
    child, banner = await start_process(
        "--port", "0", "--step-seconds", "0", "--large-result-mib", "1"
    )
    try:
        url = re.search(r"listening on (http://127\.0\.0\.1:\d+)\n", banner)
        token = re.search(r"token\s+(tot_\w+)", banner)
        assert url is not None
        assert token is not None
        assert re.search(r"jwt\s+\S+\.\S+\.\S+", banner)
        ids = definition_ids(banner)
        assert set(ids) == {"kyc-background", "kyc-failing", "kyc-interactive", "large-report"}
        body = {"workflowDefinitionId": ids["kyc-background"], "locale": "en", "parameters": {}}
        headers = auth(token.group(1))
        async with session.post(
            f"{url.group(1)}/workflows", json=body, headers=headers
        ) as response:
            assert response.status == 200
            execution_id = (await response.json())["id"]
        for expected in ("RUNNING", "COMPLETED"):
            async with session.get(
                f"{url.group(1)}/workflows/{execution_id}", headers=headers
            ) as response:
                assert (await response.json())["status"] == expected
        async with session.get(
            f"{url.group(1)}/workflows/{execution_id}/result", headers=headers
        ) as response:
            assert (await response.json())["decision"] == "APPROVED"
    finally:
        code, rest, errors = await stop_process(child, signal.SIGINT)
    assert code == 0
    assert "Traceback" not in errors
    assert errors == ""
    assert rest.strip() == "stopped"


async def test_the_process_stops_on_sigterm() -> None:
    """SIGTERM stops the process cleanly with exit code 0."""
    child, _ = await start_process("--port", "0", "--token", "tot_fixed")
    code, rest, errors = await stop_process(child, signal.SIGTERM)
    assert (code, rest.strip(), errors) == (0, "stopped", "")


def options(*arguments: str) -> argparse.Namespace:
    """Parse process-mode arguments."""
    return process.build_parser().parse_args(list(arguments))


def test_the_default_port_is_8080() -> None:
    """Without --port the process listens on 8080, with 1 s steps and a 64 MiB report."""
    defaults = options()
    assert (defaults.port, defaults.step_seconds, defaults.large_result_mib) == (8080, 1.0, 64)
    assert defaults.token is None


async def test_serve_prints_the_banner_and_stops() -> None:
    """serve() prints URL, credentials and ids, and returns 0 once stop is set."""
    stop = asyncio.Event()
    stop.set()
    out, err = io.StringIO(), io.StringIO()
    code = await process.serve(
        options("--port", "0", "--token", "tot_abc", "--large-result-mib", "1"),
        stop=stop,
        out=out,
        err=err,
    )
    assert code == 0
    assert err.getvalue() == ""
    printed = out.getvalue()
    assert "token    tot_abc" in printed
    assert "(1 MiB result, redirected to storage)" in printed
    assert "(interactive: link and token)" in printed
    assert printed.endswith("stopped\n")
    assert set(definition_ids(printed).values()) == {
        demo.definition_id for demo in process.DEMO_DEFINITIONS
    }


async def test_serve_reports_a_taken_port(fake: FakeTransactionLink) -> None:
    """A port in use makes serve() print one error line and return 1."""
    port = fake.url.rsplit(":", 1)[1]
    out, err = io.StringIO(), io.StringIO()
    code = await process.serve(options("--port", port), stop=asyncio.Event(), out=out, err=err)
    assert code == 1
    assert out.getvalue() == ""
    assert err.getvalue().startswith("error: cannot listen on 127.0.0.1")
    assert err.getvalue().count("\n") == 1


def test_main_stops_on_a_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    """main() routes SIGINT to a clean stop and returns the exit code of serve()."""
    seen: list[int] = []

    async def serve(
        parsed: argparse.Namespace, *, stop: asyncio.Event, out: object, err: object
    ) -> int:
        seen.append(parsed.port)
        os.kill(os.getpid(), signal.SIGINT)
        await asyncio.wait_for(stop.wait(), timeout=30)
        return 0

    monkeypatch.setattr(process, "serve", serve)
    assert process.main(["--port", "1234"]) == 0
    assert seen == [1234]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_demo_ids_are_stable() -> None:
    """The process mode's definition ids are the same on every run."""
    ids = [demo.definition_id for demo in process.DEMO_DEFINITIONS]
    assert ids == [demo.definition_id for demo in process.DEMO_DEFINITIONS]
    assert len(set(ids)) == 4


def test_python_dash_m_runs_main(monkeypatch: pytest.MonkeyPatch) -> None:
    """python -m aiotlink.testing exits with the code main() returns."""
    import runpy

    monkeypatch.setattr(process, "main", lambda: 3)
    with pytest.raises(SystemExit) as exited:
        runpy.run_path(str(Path(process.__file__).with_name("__main__.py")), run_name="__main__")
    assert exited.value.code == 3


def test_main_treats_ctrl_c_without_signal_handlers_as_a_clean_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Where Ctrl-C arrives as KeyboardInterrupt (no loop signal handlers), exit code is 0."""
    from aiotlink.testing import _process

    def interrupted(coroutine: object) -> int:
        coroutine.close()  # never started: the interrupt comes first
        raise KeyboardInterrupt

    monkeypatch.setattr(_process.asyncio, "run", interrupted)
    assert _process.main(["--port", "0"]) == 0
