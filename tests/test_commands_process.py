"""The command line as a user runs it: processes against the fake as its own process, in a pty."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cli_helpers import (
    AIOTLINK,
    child_env,
    fake_server_process,
    found,
    read_until,
    run_in_pty,
    run_process,
    sigint_default,
    strict_json,
)

MISSING = "00000000-0000-4000-8000-000000000000"
# Cursor movement or erasing: how rich redraws a live view in place.
IN_PLACE = re.compile(rb"\x1b\[\d*[AK]|\x1b\[2K|\r(?!\n)")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """``aiotlink fake-server`` with a --definition file: a 12 MB result, a slow flow."""
    path = tmp_path_factory.mktemp("definitions") / "flows.json"
    path.write_text(
        json.dumps(
            [
                {
                    "name": "big-export",
                    "statuses": ["RUNNING", "COMPLETED"],
                    "result_bytes": 12_000_000,
                },
                {"name": "slow-review", "statuses": ["RUNNING", "COMPLETED"], "step_seconds": 1.5},
                {"name": "stuck", "statuses": ["AWAITING"], "interactive": True},
                # 0.8 MB of JSON, printed indented: 1.4 MB in one write
                {
                    "name": "wide",
                    "statuses": ["COMPLETED"],
                    "result": [{"k": number} for number in range(60_000)],
                },
            ]
        )
    )
    with fake_server_process("--step-seconds", "0.05", "--definition", str(path)) as info:
        info["env"] = json.dumps(child_env(info["token"], info["url"]))
        yield info


def env_of(server: dict[str, str]) -> dict[str, str]:
    """The environment of a command against the fake process."""
    return dict(json.loads(server["env"]))


def start(server: dict[str, str], name: str) -> str:
    """A new execution of the named definition, started through the CLI process."""
    invoked = run_process(["run", server[name], "--no-wait", "--json"], env_of(server))
    assert invoked.code == 0, invoked.err
    return str(invoked.records()[0]["id"])


def test_every_command_as_a_process_with_json_and_exit_codes(
    server: dict[str, str], tmp_path: Path
) -> None:
    """run, find, cancel, wait, result: JSON parsed from stdout, the documented exit codes."""
    env = env_of(server)
    ran = run_process(["run", server["kyc-background"], "--json", "--poll-interval", "0.02"], env)
    assert ran.code == 0, ran.err
    [record] = ran.records()
    assert record["status"] == "COMPLETED"
    assert record["result"]["decision"] == "APPROVED"
    failed = run_process(["run", server["kyc-failing"], "--json", "--poll-interval", "0.02"], env)
    assert (failed.code, failed.records()[0]["status"]) == (1, "FAILED")
    stuck = start(server, "stuck")
    found = run_process(["find", stuck, MISSING, "--json"], env)
    assert found.code == 4
    assert [line["id"] for line in found.records()] == [stuck, MISSING]
    cancelled = run_process(["cancel", stuck, "--json"], env)
    assert (cancelled.code, cancelled.records()) == (0, [{"id": stuck, "cancelled": True}])
    waited = run_process(["wait", stuck, record["id"], "--json", "--poll-interval", "0.02"], env)
    assert waited.code == 1
    statuses = {line["id"]: line["status"] for line in waited.records()}
    assert statuses == {stuck: "CANCELLED", record["id"]: "COMPLETED"}
    timed_out = run_process(["wait", start(server, "slow-review"), "--timeout", "0.3"], env)
    assert timed_out.code == 3
    target = tmp_path / "export.json"
    big = run_process(["run", server["big-export"], "--json", "--poll-interval", "0.02"], env)
    assert big.code == 0
    assert "--out PATH" in big.records()[0]["result_omitted"]
    saved = run_process(["result", big.records()[0]["id"], "--out", str(target), "--json"], env)
    assert saved.code == 0, saved.err
    assert saved.records()[0]["size"] == target.stat().st_size == 12_000_000
    assert saved.records()[0]["redirected"] is True
    usage = run_process(["run", "kyc", "--expires-in", "99999999999d"], env)
    assert (usage.code, usage.out, usage.err.count("\n")) == (2, "", 1)


def test_the_banner_suggests_commands_that_work(server: dict[str, str]) -> None:
    """Each command the fake-server banner suggests runs and exits 0."""
    suggested = re.findall(
        r"(?:try|or):\s+TRANSACTIONLINK_TOKEN=(\S+) python -m aiotlink (.+?)(?:   \(|$)",
        server["banner"],
        re.M,
    )
    assert len(suggested) == 2
    assert {line[1].split()[0] for line in suggested} == {"demo", "run"}
    for token, command in suggested:
        env = {"TRANSACTIONLINK_TOKEN": token, "TRANSACTIONLINK_BASE_URL": ""}
        arguments = command.split()
        if arguments[0] == "demo":
            arguments += ["--poll-interval", "0.05"]
        invoked = run_process(arguments, env)
        assert invoked.code == 0, (command, invoked.err)


def test_fake_server_usage_errors_are_one_line() -> None:
    """Ports out of range, NaN steps, a bad webhook URL, a bad file and a port in use: exit 2."""
    with fake_server_process() as info:
        taken = info["url"].rsplit(":", 1)[1]
        cases = [
            ["--port", "99999"],
            ["--port", "-5"],
            ["--step-seconds", "nan"],
            ["--step-seconds", "inf"],
            ["--webhook-url", "ftp://example.com/x"],
            ["--definition", "/nonexistent/flows.json"],
            ["--port", taken],
        ]
        for arguments in cases:
            done = subprocess.run(
                [AIOTLINK, "fake-server", *arguments], capture_output=True, text=True, timeout=30
            )
            assert done.returncode == 2, (arguments, done.stderr)
            assert done.stderr.count("\n") == 1, (arguments, done.stderr)
            assert "Traceback" not in done.stderr
            assert done.stdout == ""


def test_a_definition_file_with_nan_or_deep_nesting_is_refused(tmp_path: Path) -> None:
    """A definition file holding NaN, or nested 1,000 deep, is a usage error."""
    nan = tmp_path / "nan.json"
    nan.write_text('{"name": "x", "statuses": ["COMPLETED"], "step_seconds": NaN}')
    deep = tmp_path / "deep.json"
    deep.write_text(
        '{"name": "x", "statuses": ["COMPLETED"], "result": ' + "[" * 1000 + "]" * 1000 + "}"
    )
    for path, problem in ((nan, "NaN"), (deep, "nests deeper")):
        done = subprocess.run(
            [AIOTLINK, "fake-server", "--port", "0", "--definition", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 2
        assert problem in done.stderr
        assert done.stderr.count("\n") == 1


def test_ctrl_c_on_run_wait_cancels_with_the_option_and_not_without(
    server: dict[str, str],
) -> None:
    """SIGINT exits 130; --cancel-on-interrupt cancels the remote execution, else it goes on.

    The second run is in JSON mode: its interruption is a record with the id.
    """
    env = env_of(server)
    outcomes = {}
    for option in (["--cancel-on-interrupt"], ["--json", "-v"]):
        process = subprocess.Popen(
            [AIOTLINK, "run", server["stuck"], "--poll-interval", "0.05", *option],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**os.environ, **env, "PYTHONFAULTHANDLER": "1"},
            preexec_fn=sigint_default,
        )
        assert process.stdout is not None
        assert process.stderr is not None
        try:
            if "--json" in option:
                seen = read_until(process.stderr.fileno(), lambda data: b"AWAITING" in data, 30)
                key = found(r"initialised execution (\S+)", seen.decode())
            else:
                seen = read_until(process.stdout.fileno(), lambda data: b"AWAITING" in data, 30)
                key = found(r"started (\S+)", seen.decode())
            process.send_signal(signal.SIGINT)
            try:
                code = process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # Stuck: faulthandler (PYTHONFAULTHANDLER) dumps every thread's stack on
                # SIGABRT, so that the failure says where.
                process.send_signal(signal.SIGABRT)
                process.wait(timeout=10)
                stacks = process.stderr.read().decode(errors="replace")
                raise AssertionError(f"no exit within 30 s of SIGINT:\n{stacks[-6000:]}") from None
            out = process.stdout.read().decode()
            err = process.stderr.read().decode()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
            process.stderr.close()
        assert code == 130, err
        assert "Traceback" not in err
        now = run_process(["find", key, "--json"], env)
        outcomes[option[0]] = now.records()[0]["status"]
        if "--json" in option:
            interrupted = {"type": "Interrupted", "cancelled": False}
            assert [strict_json(line) for line in out.splitlines()] == [
                {"id": key, "error": interrupted}
            ]
        else:
            assert f"interrupted: execution {key}: asked to cancel it" in err
    assert outcomes == {"--cancel-on-interrupt": "CANCELLED", "--json": "AWAITING"}


def test_ctrl_c_on_wait_json_writes_a_record_for_each_unfinished_id(
    server: dict[str, str],
) -> None:
    """SIGINT while waiting: 130, and an Interrupted record for each id not yet ended."""
    env = env_of(server)
    done, stuck = start(server, "kyc-background"), start(server, "stuck")
    process = subprocess.Popen(
        [AIOTLINK, "wait", done, stuck, "--json", "--poll-interval", "0.05"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **env},
        preexec_fn=sigint_default,
    )
    assert process.stdout is not None
    try:
        first = read_until(process.stdout.fileno(), lambda data: b"\n" in data, 30)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    records = [strict_json(line) for line in (first + out).decode().splitlines()]
    assert [(record["id"], record.get("status")) for record in records] == [
        (done, "COMPLETED"),
        (stuck, None),
    ]
    assert records[1]["error"] == {"type": "Interrupted"}


def test_a_closed_stdout_ends_quietly_with_141(server: dict[str, str]) -> None:
    """Output into a pipe nobody reads (`| head -0`) exits 141, nothing on stderr."""
    read, write = os.pipe()
    os.close(read)
    ids = [MISSING] * 3
    done = subprocess.run(
        [AIOTLINK, "wait", *ids, "--json"],
        stdout=write,
        stderr=subprocess.PIPE,
        text=True,
        timeout=30,
        env={**os.environ, **env_of(server)},
    )
    os.close(write)
    assert done.returncode == 141
    assert done.stderr == ""


@pytest.mark.parametrize("unbuffered", ["", "1"], ids=["buffered", "unbuffered"])
@pytest.mark.parametrize("json_mode", [False, True], ids=["lines", "json"])
def test_a_large_result_into_head_exits_141(
    server: dict[str, str], unbuffered: str, json_mode: bool
) -> None:
    """`result ID | head -c 10`: the one large write meets a closed pipe: 141, not 0."""
    key = start(server, "wide")
    env = {**os.environ, **env_of(server), "PYTHONUNBUFFERED": unbuffered}
    arguments = [AIOTLINK, "result", key, *(["--json"] if json_mode else [])]
    writer = subprocess.Popen(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    assert writer.stdout is not None
    first = writer.stdout.read(10)
    writer.stdout.close()  # as head -c 10 does
    _, err = writer.communicate(timeout=30)
    assert writer.returncode == 141, err
    assert first.startswith(b"[" if not json_mode else b'{"id"')
    assert err == b""


# In a terminal ---------------------------------------------------------------------------


def test_wait_in_a_terminal_updates_a_table_in_place(server: dict[str, str]) -> None:
    """On a terminal, wait redraws its table in place and ends with a summary."""
    env = env_of(server)
    keys = [start(server, "slow-review"), start(server, "kyc-background")]
    ran = run_in_pty(["wait", *keys, "--poll-interval", "0.05"], env, stderr_pty=False)
    assert ran.code == 0, ran
    assert IN_PLACE.search(ran.out), ran.out
    text = ran.out.decode()
    assert "2 executions: 2 COMPLETED" in text
    assert all(key in text for key in keys)


def test_result_out_in_a_terminal_shows_a_progress_bar(
    server: dict[str, str], tmp_path: Path
) -> None:
    """On a terminal, result --out draws a progress bar with bytes and rate, in place."""
    env = env_of(server)
    big = run_process(["run", server["big-export"], "--json", "--poll-interval", "0.02"], env)
    target = tmp_path / "export.json"
    ran = run_in_pty(
        ["result", big.records()[0]["id"], "--out", str(target)], env, stderr_pty=False
    )
    assert ran.code == 0, ran
    text = ran.out.decode()
    assert re.search(r"12\.0/12\.0 MB", text), text
    assert "MB/s" in text or "kB/s" in text
    assert f"{target}  12,000,000 bytes from pre-signed storage" in text


def test_json_in_a_terminal_writes_only_json_on_stdout(
    server: dict[str, str], tmp_path: Path
) -> None:
    """With stdout and stderr both terminals, --json keeps live views off stdout."""
    env = env_of(server)
    keys = [start(server, "slow-review"), start(server, "kyc-background")]
    waited = run_in_pty(["wait", *keys, "--json", "--poll-interval", "0.05"], env, stderr_pty=True)
    big = run_process(["run", server["big-export"], "--json", "--poll-interval", "0.02"], env)
    target = tmp_path / "export.json"
    saved = run_in_pty(
        ["result", big.records()[0]["id"], "--out", str(target), "--json"], env, stderr_pty=True
    )
    for ran, count in ((waited, 2), (saved, 1)):
        assert ran.code == 0, ran
        assert b"\x1b" not in ran.out
        lines = ran.out.decode().splitlines()
        assert len(lines) == count
        for line in lines:
            strict_json(line)
        assert IN_PLACE.search(ran.err), ran.err  # the live view went to stderr
    assert target.stat().st_size == 12_000_000


def test_run_not_on_a_terminal_prints_plain_lines(server: dict[str, str]) -> None:
    """Not a terminal: each status on a line of its own, no escape sequences."""
    ran = run_process(["run", server["kyc-background"], "--poll-interval", "0.02"], env_of(server))
    assert ran.code == 0
    assert b"\x1b" not in ran.out.encode()
    statuses = [line.split()[0] for line in ran.out.splitlines()[1:4]]
    assert statuses[-1] == "COMPLETED"
    assert "RUNNING" in ran.out


def test_run_in_a_terminal_shows_its_status_in_place(server: dict[str, str]) -> None:
    """On a terminal, run's status line is redrawn in place."""
    ran = run_in_pty(
        ["run", server["slow-review"], "--poll-interval", "0.05"], env_of(server), stderr_pty=False
    )
    assert ran.code == 0, ran
    assert IN_PLACE.search(ran.out)


def test_fake_server_json_is_one_line_a_script_can_use(tmp_path: Path) -> None:
    """--json: one JSON line (url, token, storage, definitions), nothing else on stdout."""
    path = tmp_path / "flows.json"
    path.write_text(json.dumps({"name": "odd\u001b[2Jname", "statuses": ["RUNNING", "COMPLETED"]}))
    command = [AIOTLINK, "fake-server", "--port", "0", "--json", "--definition", str(path)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        record = strict_json(process.stdout.readline())
        assert set(record) == {"url", "storage_url", "token", "jwt", "webhook_url", "definitions"}
        assert record["url"].startswith("http://127.0.0.1:")
        assert record["storage_url"].startswith("http://127.0.0.1:")
        names = {item["name"]: item["id"] for item in record["definitions"]}
        assert names["odd\x1b[2Jname"]
        ran = run_process(
            ["run", names["odd\x1b[2Jname"], "--json", "--poll-interval", "0.05"],
            child_env(record["token"], record["url"]),
        )
        assert ran.code == 0, ran.err
    finally:
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=10)
    assert (process.returncode, out) == (0, "")
    assert err == "stopped\n"


def test_the_banner_escapes_definition_names(tmp_path: Path) -> None:
    """A name from a definition file cannot drive the terminal the banner is printed to."""
    path = tmp_path / "flows.json"
    path.write_text(json.dumps({"name": "odd\u001b[2Jname", "statuses": ["COMPLETED"]}))
    with fake_server_process("--definition", str(path)) as info:
        assert "\x1b" not in info["banner"]
        assert "odd\\x1b[2Jname" in info["banner"]
