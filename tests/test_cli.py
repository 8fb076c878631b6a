"""The ``aiotlink demo`` command, on the built-in fake and against a separate API process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from aiotlink._cli import main
from aiotlink._client import TOKEN_ENV_VAR

from .cli_helpers import serving

STEPS = [
    "1. initialise",
    "2. find it",
    "3. wait for it to finish",
    "4. fetch the result",
    "5. a large result",
    "6. cancel",
    "7. an error",
    "done",
]


def test_demo_runs_every_step_on_the_built_in_fake(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a token the demo starts the fake and shows every step, statuses live."""
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    assert main(["demo"]) == 0
    output = capsys.readouterr().out
    positions = [output.index(step) for step in STEPS]
    assert positions == sorted(positions)
    for status in ("RUNNING", "AWAITING", "PAUSED", "COMPLETED", "CANCELLED"):
        assert status in output
    assert "NotFoundError: 404 WORKFLOW_NOT_FOUND" in output
    assert "APPROVED" in output


def test_demo_json_writes_each_step_as_a_json_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--json: every line of stdout is {"step": ...}, the steps in order."""
    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    assert main(["demo", "--json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert all(set(json.loads(line)) == {"step"} for line in lines)
    positions = [next(i for i, step in enumerate(steps) if name in step) for name in STEPS]
    assert positions == sorted(positions)
    assert steps[-1] == "done"


def test_python_dash_m_aiotlink() -> None:
    """`python -m aiotlink demo` on a machine without a token runs the demo and exits 0."""
    environment = {key: value for key, value in os.environ.items() if key != TOKEN_ENV_VAR}
    result = subprocess.run(
        [sys.executable, "-m", "aiotlink", "demo"],
        capture_output=True,
        text=True,
        timeout=120,
        env=environment,
    )
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout
    assert result.stderr == ""


def test_token_without_definition_asks_for_one(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """With a token but no --definition the demo says what is missing and exits 2."""
    monkeypatch.setenv(TOKEN_ENV_VAR, "tot_x")
    assert main(["demo"]) == 2
    assert "--definition" in capsys.readouterr().err


@pytest.fixture
def api_process() -> Iterator[dict[str, str]]:
    """The fake as a separate process (as a real API would be): its URL, token and ids."""
    command = [sys.executable, "-m", "aiotlink.testing", "--port", "0", "--step-seconds", "0.05"]
    with serving(command) as info:
        yield info


def test_demo_against_an_api_with_a_token(
    api_process: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With TRANSACTIONLINK_TOKEN and --definition the demo runs against that API."""
    monkeypatch.setenv(TOKEN_ENV_VAR, api_process["token"])
    arguments = ["demo", "--base-url", api_process["url"], "--poll-interval", "0.05"]
    arguments += ["--definition", api_process["kyc-background"]]
    arguments += ["--cancel-definition", api_process["kyc-interactive"]]
    assert main(arguments) == 0
    output = capsys.readouterr().out
    assert f"running against {api_process['url']}" in output
    assert "COMPLETED" in output
    assert "CANCELLED" in output
    assert api_process["token"] not in output


def test_demo_failure_is_reported_with_exit_status_1(
    api_process: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """An API error ends the demo with its text on stderr and exit status 1."""
    monkeypatch.setenv(TOKEN_ENV_VAR, api_process["token"])
    arguments = ["demo", "--base-url", api_process["url"], "--definition", "no-such-definition"]
    assert main(arguments) == 1
    assert "failed: NotFoundError: 404" in capsys.readouterr().err
    assert main([*arguments, "--json"]) == 1
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records[-1]["error"]["type"] == "NotFoundError"
    assert all(set(record) == {"step"} for record in records[:-1])


def test_demo_of_a_failing_workflow_says_there_is_no_result(
    api_process: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A definition that fails shows its last status and no result; the demo goes on."""
    monkeypatch.setenv(TOKEN_ENV_VAR, api_process["token"])
    arguments = ["demo", "--base-url", api_process["url"], "--poll-interval", "0.05"]
    arguments += ["--definition", api_process["kyc-failing"]]
    assert main(arguments) == 0
    assert "no result: the execution ended FAILED" in capsys.readouterr().out


def test_a_malformed_token_is_reported_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A token with a stray newline ends the demo with one line on stderr and status 1."""
    monkeypatch.setenv(TOKEN_ENV_VAR, "tot_abc\n")
    assert main(["demo", "--definition", "kyc"]) == 1
    assert capsys.readouterr().err.startswith("failed: ValueError: token")


def test_ctrl_c_exits_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during the demo ends it with status 130 and no traceback."""

    def interrupted(coroutine: object) -> None:
        coroutine.close()
        raise KeyboardInterrupt

    monkeypatch.delenv(TOKEN_ENV_VAR, raising=False)
    monkeypatch.setattr("aiotlink._cli.asyncio.run", interrupted)
    assert main(["demo"]) == 130


def test_console_script_is_installed() -> None:
    """The `aiotlink` console script is on PATH next to the interpreter."""
    script = os.path.join(os.path.dirname(sys.executable), "aiotlink")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0
    assert "demo" in result.stdout
