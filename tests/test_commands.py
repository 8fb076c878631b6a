"""The operator's command line: every command in-process (click's runner) against the fake."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from aiohttp import web

from aiotlink._commands import EXIT_CODES_HELP, clean, cli, dump_json
from aiotlink.testing import FakeTransactionLink, GeneratedResult

from .cli_helpers import (
    LoopThread,
    hostile_app,
    invoke,
    invoke_on_screen,
    screen_lines,
    strict_json,
)

MISSING = "00000000-0000-4000-8000-000000000000"
DEEP = "22222222-2222-4222-8222-222222222222"


@attrs.frozen
class Fake:
    """The fake, served from a thread, with the definitions the tests use."""

    fake: FakeTransactionLink
    thread: LoopThread
    env: dict[str, str | None]
    ok: str
    failing: str
    interactive: str
    slow: str
    large: str

    def requests(self) -> int:
        """How many requests the fake has had."""
        return len(self.fake.requests)

    def status(self, key: str) -> str:
        """The status of an execution, as the fake has it."""
        return str(self.thread.call(self._find(key)))

    async def _find(self, key: str) -> str:
        from aiotlink import TransactionLinkClient

        async with TransactionLinkClient(self.fake.token, base_url=self.fake.url) as client:
            return (await client.workflows.find(key)).status.value


@pytest.fixture(scope="module")
def served() -> Iterator[Fake]:
    """One fake for the module (each test makes its own executions)."""
    thread = LoopThread()

    async def start() -> Fake:
        fake = FakeTransactionLink(redirect_threshold=100_000)
        await fake.start()
        env: dict[str, str | None] = {
            "TRANSACTIONLINK_TOKEN": fake.token,
            "TRANSACTIONLINK_BASE_URL": fake.url,
        }
        return Fake(
            fake,
            thread,
            env,
            ok=fake.add_definition(
                statuses=["INITIALISED", "RUNNING", "COMPLETED"],
                result={"decision": "APPROVED", "score": 0.97},
            ),
            failing=fake.add_definition(statuses=["INITIALISED", "RUNNING", "FAILED"]),
            interactive=fake.add_definition(statuses=["INITIALISED", "AWAITING"], interactive=True),
            slow=fake.add_definition(statuses=["RUNNING", "COMPLETED"], step_seconds=60),
            large=fake.add_definition(
                statuses=["RUNNING", "COMPLETED"], result=GeneratedResult(1_500_000)
            ),
        )

    fake = thread.call(start())
    yield fake
    thread.call(fake.fake.close())
    thread.close()


def started(served: Fake, definition: str) -> str:
    """The id of a new execution of ``definition``, started through the CLI."""
    invoked = invoke(["run", definition, "--no-wait", "--json"], env=served.env)
    assert invoked.code == 0, invoked.err
    return str(invoked.records()[0]["id"])


# Help, version ------------------------------------------------------------------------

COMMANDS = ["run", "find", "cancel", "wait", "result", "fake-server", "demo", "webhooks"]


def test_help_lists_every_command_and_the_exit_codes() -> None:
    """`aiotlink --help` names each command and documents every exit code."""
    invoked = invoke(["--help"])
    assert invoked.code == 0
    for command in COMMANDS:
        assert re.search(rf"^  {command} ", invoked.out, re.M), command
    for code in ("0", "1", "2", "3", "4", "130", "141"):
        assert re.search(rf"^    {code} ", invoked.out, re.M), code
    assert invoke([]).out == invoked.out
    group = invoke(["webhooks"])
    assert group.code == 0
    assert "verify " in group.out


@pytest.mark.parametrize(
    "command", [*COMMANDS[:-1], "webhooks verify"], ids=lambda command: command
)
def test_each_command_has_plain_help_with_an_example(command: str) -> None:
    """Each command's --help has an example and no reStructuredText markup."""
    invoked = invoke([*command.split(), "--help"])
    assert invoked.code == 0
    assert "Example:" in invoked.out
    assert f"aiotlink {command}" in invoked.out
    assert "``" not in invoked.out
    assert ":func:" not in invoked.out


def test_version() -> None:
    """--version prints the installed version."""
    from importlib.metadata import version

    invoked = invoke(["--version"])
    assert (invoked.code, invoked.out.strip()) == (0, f"aiotlink, version {version('aiotlink')}")


def test_exit_codes_are_distinct() -> None:
    """The documented codes are six distinct outcomes and a closed stdout."""
    codes = re.findall(r"^  (\d+) ", EXIT_CODES_HELP, re.M)
    assert codes == ["0", "1", "2", "3", "4", "130", "141"]


# run -----------------------------------------------------------------------------------


def test_run_waits_and_prints_the_result(served: Fake) -> None:
    """run waits for the end and prints the result; plain lines when not a terminal."""
    invoked = invoke(
        ["run", served.ok, "--param", "customerId=c-42", "--poll-interval", "0.01"], env=served.env
    )
    assert invoked.code == 0, invoked.err
    lines = invoked.out.splitlines()
    assert lines[0].startswith("started ")
    key = lines[0].split()[1]
    assert "RUNNING" in invoked.out
    assert f"{key}  COMPLETED" in lines
    assert json.loads(invoked.out[invoked.out.index("{") :]) == {
        "decision": "APPROVED",
        "score": 0.97,
    }
    assert "\x1b" not in invoked.out


def test_run_json_is_one_record_with_the_result(served: Fake, tmp_path: Path) -> None:
    """run --json writes one object: the execution, its parameters and result."""
    params = tmp_path / "params.json"
    params.write_text('{"customerId": "c-1", "tier": 2}')
    arguments = ["run", served.ok, "--json", "--params-file", str(params), "--param", "tier=3"]
    invoked = invoke(
        [*arguments, "--poll-interval", "0.01", "--record-id", MISSING], env=served.env
    )
    assert invoked.code == 0, invoked.err
    [record] = invoked.records()
    assert record["status"] == "COMPLETED"
    assert record["parameters"] == {"customerId": "c-1", "tier": "3"}
    assert record["result"] == {"decision": "APPROVED", "score": 0.97}
    assert record["record_id"] == MISSING


def test_run_of_a_failing_workflow_exits_1(served: Fake) -> None:
    """A run that ends FAILED exits 1 with the execution on stdout."""
    invoked = invoke(["run", served.failing, "--json", "--poll-interval", "0.01"], env=served.env)
    assert invoked.code == 1
    assert invoked.records()[0]["status"] == "FAILED"


def test_run_without_wait_prints_the_execution(served: Fake) -> None:
    """--no-wait prints the new execution with its link, and exits 0."""
    invoked = invoke(["run", served.interactive, "--no-wait", "--expires-in", "2h"], env=served.env)
    assert invoked.code == 0
    key, status, link = invoked.out.split()
    assert (status, link) == ("INITIALISED", f"{served.fake.url}/hosted/{key}")


def test_run_of_a_large_result_hints_at_result_out(served: Fake) -> None:
    """A result too large to print (a $redirect here) gives the command that saves it."""
    invoked = invoke(["run", served.large, "--poll-interval", "0.01", "--json"], env=served.env)
    assert invoked.code == 0, invoked.err
    [record] = invoked.records()
    hint = f"aiotlink result {record['id']} --out PATH"
    assert hint in record["result_omitted"]
    assert hint in invoked.err
    human = invoke(["run", served.large, "--poll-interval", "0.01"], env=served.env)
    assert "aiotlink result " in human.err
    assert "--out PATH" in human.err


def test_run_download_streams_the_result_to_a_file(served: Fake, tmp_path: Path) -> None:
    """--download PATH writes the whole result, from storage, and says where."""
    target = tmp_path / "result.json"
    arguments = ["run", served.large, "--download", str(target), "--poll-interval", "0.01"]
    invoked = invoke([*arguments, "--json"], env=served.env)
    assert invoked.code == 0, invoked.err
    [record] = invoked.records()
    assert record["download"] == {
        "id": record["id"],
        "path": str(target),
        "size": 1_500_000,
        "redirected": True,
    }
    assert target.stat().st_size == 1_500_000


def test_run_past_its_timeout_exits_3(served: Fake) -> None:
    """A wait that outlasts --timeout exits 3 with an error record naming the id."""
    invoked = invoke(["run", served.slow, "--timeout", "0.2", "--json"], env=served.env)
    assert invoked.code == 3
    [record] = invoked.records()
    assert record["error"]["type"] == "WaitTimeoutError"
    assert re.fullmatch(r"[0-9a-f-]{36}", record["id"])


def test_run_of_an_unknown_definition_exits_4(served: Fake) -> None:
    """An API error exits 4, with a record whose id is null (no execution was made)."""
    invoked = invoke(["run", "no-such-definition", "--json"], env=served.env)
    assert invoked.code == 4
    [record] = invoked.records()
    assert record["id"] is None
    assert record["error"]["status"] == 404
    human = invoke(["run", "no-such-definition"], env=served.env)
    assert human.code == 4
    assert human.err.startswith("error: NotFoundError: 404")
    assert human.out == ""


# Bad input: a usage error before any request -----------------------------------------


def _deep(tmp_path: Path) -> list[str]:
    path = tmp_path / "deep.json"
    path.write_text('{"a": ' + "[" * 1000 + "]" * 1000 + "}")
    return ["run", "kyc", "--params-file", str(path)]


def _nan(tmp_path: Path) -> list[str]:
    path = tmp_path / "nan.json"
    path.write_text('{"score": NaN}')
    return ["run", "kyc", "--params-file", str(path)]


def _list(tmp_path: Path) -> list[str]:
    path = tmp_path / "list.json"
    path.write_text("[1, 2]")
    return ["run", "kyc", "--params-file", str(path)]


def _link_to_null(tmp_path: Path) -> list[str]:
    link = tmp_path / "stdout"
    link.symlink_to("/dev/null")  # as /dev/stdout is a link to a terminal or a pipe
    return ["result", MISSING, "--out", str(link)]


def _latin1_ids(tmp_path: Path) -> list[str]:
    path = tmp_path / "ids.txt"
    path.write_bytes(MISSING.encode() + b"\n# caf\xe9\n")
    return ["wait", "--from-file", str(path)]


BAD_INPUT: dict[str, Any] = {
    "empty definition": ["run", ""],
    "empty locale": ["run", "kyc", "--locale", ""],
    "expiry overflow": ["run", "kyc", "--expires-in", "99999999999d"],
    "expiry too soon": ["run", "kyc", "--expires-in", "5m"],
    "expiry not a duration": ["run", "kyc", "--expires-in", "soon"],
    "param without =": ["run", "kyc", "--param", "customerId"],
    "param without key": ["run", "kyc", "--param", "=x"],
    "record id": ["run", "kyc", "--record-id", "nope"],
    "timeout nan": ["run", "kyc", "--timeout", "nan"],
    "timeout inf": ["wait", MISSING, "--timeout", "inf"],
    "poll interval negative": ["wait", MISSING, "--poll-interval", "-1"],
    "download to a folder": ["run", "kyc", "--download", "/tmp/"],
    "find a path": ["find", "../etc"],
    "cancel no id": ["cancel"],
    "wait no id": ["wait"],
    "result not a uuid": ["result", "kyc"],
    "result out to a folder": ["result", MISSING, "--out", "/tmp"],
    "result out dash": ["result", MISSING, "--out", "-"],
    "run download dash": ["run", "kyc", "--download", "-"],
    "result out a link to a device": _link_to_null,
    "ids file not utf-8": _latin1_ids,
    "no-wait download": ["run", "kyc", "--no-wait", "--download", "r.json"],
    "no-wait timeout": ["run", "kyc", "--no-wait", "--timeout", "5"],
    "no-wait cancel": ["run", "kyc", "--no-wait", "--cancel-on-interrupt"],
    "param not utf-8": ["run", "kyc", "--param", "name=caf\udce9"],
    "param key not utf-8": ["run", "kyc", "--param", "caf\udce9=x"],
    "locale not utf-8": ["run", "kyc", "--locale", "e\udcffn"],
    "definition not utf-8": ["run", "kyc\udcff"],
    "unknown option": ["find", MISSING, "--colour"],
    "nan params": _nan,
    "deep params": _deep,
    "params not an object": _list,
}


@pytest.mark.parametrize("arguments", BAD_INPUT.values(), ids=list(BAD_INPUT))
def test_bad_input_is_a_one_line_usage_error_before_any_request(
    served: Fake, tmp_path: Path, arguments: Any
) -> None:
    """Exit 2, one line on stderr naming the problem, nothing on stdout, no request."""
    if callable(arguments):
        arguments = arguments(tmp_path)
    before = served.requests()
    invoked = invoke([*arguments, "--json"], env=served.env)
    assert invoked.code == 2, invoked
    assert invoked.out == ""
    assert invoked.err.count("\n") == 1, invoked.err
    assert invoked.err.startswith("aiotlink")
    assert "Traceback" not in invoked.err
    assert served.requests() == before


def test_ids_on_stdin_must_be_utf8_and_their_file_is_bounded_in_bytes(
    served: Fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Latin-1 on stdin: a usage error; the bound counts bytes, not characters."""
    import aiotlink._commands

    latin1 = invoke(["wait", "--from-file", "-"], env=served.env, stdin=b"caf\xe9\n")
    assert latin1.code == 2
    assert latin1.err == "aiotlink: error: --from-file is not UTF-8 text (byte 3)\n"
    monkeypatch.setattr(aiotlink._commands, "MAX_IDS_FILE_BYTES", 10)
    path = tmp_path / "ids.txt"
    path.write_text("# " + "é" * 6 + "\n")  # 9 characters, 15 bytes
    over = invoke(["wait", "--from-file", str(path)], env=served.env)
    assert over.code == 2
    assert over.err == "aiotlink: error: --from-file is over 10 bytes\n"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["run", "kyc", "--timeout", "nan"], "a finite, positive number of seconds, got nan"),
        (["run", "kyc", "--expires-in", "5m"], "--expires-in must be 30m to 30d, got '5m'"),
        (["run", "kyc", "--no-wait", "--timeout", "5"], "--timeout applies to a run that waits"),
    ],
)
def test_usage_errors_name_the_option(served: Fake, arguments: list[str], message: str) -> None:
    """The message names the option as typed, and says what it must be."""
    invoked = invoke(arguments, env=served.env)
    assert invoked.code == 2
    assert message in invoked.err, invoked.err
    assert "expires_at" not in invoked.err


def test_a_missing_token_says_how_to_set_one() -> None:
    """No token: one line naming the variable and --token-file, exit 2."""
    invoked = invoke(["find", MISSING], env={"TRANSACTIONLINK_TOKEN": None})
    assert invoked.code == 2
    assert "TRANSACTIONLINK_TOKEN" in invoked.err
    assert "--token-file" in invoked.err
    assert invoked.err.count("\n") == 1


@pytest.mark.parametrize(
    "content", [b"tot_s3cret value\n", "tot_s3cret\u00e9".encode(), b"", b"x" * 70_000]
)
def test_token_file_errors_never_show_its_content(
    served: Fake, tmp_path: Path, content: bytes
) -> None:
    """A bad --token-file is one usage line that does not echo what the file holds."""
    path = tmp_path / "token"
    path.write_bytes(content)
    invoked = invoke(
        ["find", MISSING, "--token-file", str(path)], env={"TRANSACTIONLINK_TOKEN": None}
    )
    assert invoked.code == 2
    assert "s3cret" not in invoked.err
    assert "xxxx" not in invoked.err
    assert invoked.err.count("\n") == 1
    missing = invoke(["find", MISSING, "--token-file", str(tmp_path / "nope")])
    assert (missing.code, missing.err.count("\n")) == (2, 1)
    assert "cannot read --token-file" in missing.err


def test_token_file_is_used(served: Fake, tmp_path: Path) -> None:
    """A token in --token-file (with a trailing newline) is the one sent."""
    path = tmp_path / "token"
    path.write_text(served.fake.token + "\n")
    env = {"TRANSACTIONLINK_TOKEN": "tot_wrong", "TRANSACTIONLINK_BASE_URL": served.fake.url}
    key = started(served, served.interactive)
    invoked = invoke(["find", key, "--token-file", str(path), "--json"], env=env)
    assert invoked.code == 0, invoked.err
    assert invoked.records()[0]["id"] == key


# find, cancel --------------------------------------------------------------------------


def test_find_shows_each_and_an_error_record_with_its_id(served: Fake) -> None:
    """find ID... prints one record per id; a missing one is an error record, exit 4."""
    key = started(served, served.interactive)
    invoked = invoke(["find", key, MISSING, "--json"], env=served.env)
    assert invoked.code == 4
    found, missing = invoked.records()
    assert (found["id"], found["status"]) == (key, "AWAITING")  # a step per find
    assert found["link"] == f"{served.fake.url}/hosted/{key}"
    assert "token" not in found
    assert missing["id"] == MISSING
    assert (missing["error"]["status"], missing["error"]["code"]) == (404, "WORKFLOW_NOT_FOUND")
    human = invoke(["find", key], env=served.env)
    assert human.code == 0
    assert human.out.split()[:2] == [key, "AWAITING"]


def test_cancel_cancels_and_reports_errors(served: Fake) -> None:
    """cancel ID... cancels each; an execution that ended is an error, exit 4."""
    key = started(served, served.interactive)
    invoked = invoke(["cancel", key, "--json"], env=served.env)
    assert (invoked.code, invoked.records()) == (0, [{"id": key, "cancelled": True}])
    assert served.status(key) == "CANCELLED"
    done = started(served, served.failing)
    assert invoke(["wait", done, "--poll-interval", "0.01"], env=served.env).code == 1
    again = invoke(["cancel", done], env=served.env)
    assert again.code == 4
    assert again.err.startswith(f"error: {done}: BadRequestError: 400 WORKFLOW_ALREADY_FINISHED")


# wait ----------------------------------------------------------------------------------


def test_wait_for_many_with_duplicates_and_other_cases(served: Fake) -> None:
    """Rows are keyed by the id as typed; duplicates are waited for once; counts add up."""
    ok, failed = started(served, served.ok), started(served, served.failing)
    arguments = ["wait", ok.upper(), failed, ok, MISSING, "--poll-interval", "0.01", "--json"]
    invoked = invoke(arguments, env=served.env)
    assert invoked.code == 4
    records = {record["id"]: record for record in invoked.records()}
    assert set(records) == {ok.upper(), failed, MISSING}
    assert records[ok.upper()]["status"] == "COMPLETED"
    assert records[failed]["status"] == "FAILED"
    assert records[MISSING]["error"]["type"] == "NotFoundError"
    assert invoked.err.strip() == (
        "3 executions: 1 COMPLETED, 1 FAILED, 1 error (1 duplicate ids waited for once)"
    )


def test_wait_reads_ids_from_stdin_and_prints_plain_lines(served: Fake) -> None:
    """--from-file - reads ids (comments and blank lines skipped); plain lines, exit 0."""
    first, second = started(served, served.ok), started(served, served.ok)
    stdin = f"# a batch\n{first}\n\n  {second}  \n"
    invoked = invoke(
        ["wait", "--from-file", "-", "--poll-interval", "0.01"], env=served.env, stdin=stdin
    )
    assert invoked.code == 0, invoked.err
    lines = invoked.out.splitlines()
    assert f"{first}  COMPLETED" in lines
    assert f"{second}  COMPLETED" in lines
    assert lines[-1] == "2 executions: 2 COMPLETED"
    assert invoked.err == ""


def test_wait_past_its_timeout_exits_3(served: Fake) -> None:
    """Executions still running at --timeout are timed out (exit 3), not failed."""
    slow, done = started(served, served.slow), started(served, served.ok)
    arguments = ["wait", slow, done, "--timeout", "0.5", "--poll-interval", "0.01", "--json"]
    invoked = invoke(arguments, env=served.env)
    assert invoked.code == 3
    records = {record["id"]: record for record in invoked.records()}
    assert records[slow]["error"]["type"] == "WaitTimeoutError"
    assert records[done]["status"] == "COMPLETED"
    assert "1 COMPLETED, 1 timed out" in invoked.err


def test_wait_with_a_bad_id_in_the_file_names_its_line(served: Fake, tmp_path: Path) -> None:
    """A malformed id in --from-file is a usage error naming the line."""
    path = tmp_path / "ids"
    path.write_text(f"{MISSING}\nnot/an/id\n")
    invoked = invoke(["wait", "--from-file", str(path)], env=served.env)
    assert invoked.code == 2
    assert "--from-file line 2" in invoked.err


# result --------------------------------------------------------------------------------


def test_result_prints_a_small_one_and_hints_at_a_large_one(served: Fake, tmp_path: Path) -> None:
    """result ID prints JSON; a large one exits 4 with the --out hint; --out saves it."""
    small = invoke(["run", served.ok, "--json", "--poll-interval", "0.01"], env=served.env)
    key = small.records()[0]["id"]
    printed = invoke(["result", key, "--json"], env=served.env)
    assert printed.records() == [{"id": key, "result": {"decision": "APPROVED", "score": 0.97}}]
    assert json.loads(invoke(["result", key], env=served.env).out) == {
        "decision": "APPROVED",
        "score": 0.97,
    }
    large = invoke(["run", served.large, "--json", "--poll-interval", "0.01"], env=served.env)
    big = large.records()[0]["id"]
    too_large = invoke(["result", big, "--json"], env=served.env)
    assert too_large.code == 4
    [record] = too_large.records()
    assert record["id"] == big
    assert f"aiotlink result {big} --out PATH" in record["error"]["message"]
    target = tmp_path / "big.json"
    saved = invoke(["result", big, "--out", str(target)], env=served.env)
    assert saved.code == 0
    assert saved.out == f"{target}  1,500,000 bytes from pre-signed storage\n"
    assert target.stat().st_size == 1_500_000
    missing = invoke(["result", MISSING, "--json"], env=served.env)
    assert missing.code == 4
    assert missing.records()[0]["id"] == MISSING


# Logs ----------------------------------------------------------------------------------


def test_library_warnings_show_only_with_verbose(served: Fake) -> None:
    """A retry's WARNING is silent by default and on stderr with -v."""
    key = started(served, served.interactive)
    served.thread.call(_fail_next_find(served.fake))
    quiet = invoke(["find", key], env=served.env)
    assert quiet.code == 0
    assert quiet.err == ""
    served.thread.call(_fail_next_find(served.fake))
    loud = invoke(["find", key, "-v"], env=served.env)
    assert loud.code == 0
    assert "WARNING aiotlink: " in loud.err
    assert served.fake.token not in loud.err


async def _fail_next_find(fake: FakeTransactionLink) -> None:
    fake.fail_next("find", 503, retry_after=0)


# A hostile server: escape sequences, ids in another case, NaN ----------------------------

EVIL = "\x1b]0;pwned\x07\x1b[2J\x1b[31mred\r\x08\u202e"


def _execution(key: str, **changes: Any) -> dict[str, Any]:
    from .conftest import execution_body

    return execution_body(id=key, **changes)


@pytest.fixture(scope="module")
def hostile() -> Iterator[dict[str, str | None]]:
    """A server that answers with terminal escapes, ids in upper case and NaN."""
    thread = LoopThread()
    key = "7d0c1a3e-5b2f-4c8e-9a61-3f2b8d4e6a10"

    def evil_execution() -> web.Response:
        body = _execution(key.upper(), status="COMPLETED" + EVIL, link="https://x/" + EVIL)
        return web.json_response(body)

    def upper_case_execution() -> web.Response:
        return web.json_response(_execution(key.upper(), status="COMPLETED"))

    def evil_error() -> web.Response:
        errors = [{"code": "NOPE" + EVIL, "message": "gone" + EVIL}]
        return web.json_response({"errors": errors, "fingerprint": "f" + EVIL}, status=404)

    def nan_result() -> web.Response:
        return web.Response(
            body=b'{"score": NaN, "big": -Infinity}', content_type="application/json"
        )

    def path_as_id() -> web.Response:
        return web.json_response(_execution("../../x"), status=201)

    def deep_nan_result() -> web.Response:
        return web.Response(body=b"[" * 600 + b"NaN" + b"]" * 600, content_type="application/json")

    routes = {
        ("POST", "/workflows"): path_as_id,
        ("GET", f"/workflows/{DEEP}/result"): deep_nan_result,
        ("GET", f"/workflows/{key}"): upper_case_execution,
        ("GET", f"/workflows/{MISSING}"): evil_error,
        ("GET", "/workflows/11111111-1111-4111-8111-111111111111"): evil_execution,
        ("GET", f"/workflows/{key}/result"): nan_result,
    }
    url, runner = thread.call(hostile_app(routes))
    yield {"TRANSACTIONLINK_TOKEN": "tot_x", "TRANSACTIONLINK_BASE_URL": url, "key": key}
    thread.call(runner.cleanup())
    thread.close()


def test_server_strings_cannot_inject_terminal_escapes(hostile: dict[str, str | None]) -> None:
    """Status, link, id and error texts from the server are shown without control chars."""
    env = {name: value for name, value in hostile.items() if name != "key"}
    shown = invoke(["find", "11111111-1111-4111-8111-111111111111", MISSING], env=env)
    assert shown.code == 4
    for text in (shown.out, shown.err):
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202e]", text), repr(text)
    assert "\\x1b]0;pwned\\x07" in shown.out
    assert "gone\\x1b" in shown.err
    as_json = invoke(["find", "11111111-1111-4111-8111-111111111111", "--json"], env=env)
    assert "\x1b" not in as_json.out
    assert as_json.records()[0]["link"] == "https://x/" + EVIL


def test_wait_keys_by_the_id_asked_when_the_server_answers_in_upper_case(
    hostile: dict[str, str | None],
) -> None:
    """The server names the execution in upper case: the row is still the one asked for."""
    env = {name: value for name, value in hostile.items() if name != "key"}
    key = str(hostile["key"])
    invoked = invoke(["wait", key, "--json", "--poll-interval", "0.01"], env=env)
    assert invoked.code == 0, invoked.err
    assert [record["id"] for record in invoked.records()] == [key]
    human = invoke(["wait", key, "--poll-interval", "0.01"], env=env)
    assert f"{key}  COMPLETED" in human.out.splitlines()
    found = invoke(["find", key, "--json"], env=env)
    assert [record["id"] for record in found.records()] == [key]


def test_an_execution_id_that_is_no_uuid_is_an_api_error_not_a_traceback(
    hostile: dict[str, str | None],
) -> None:
    """initialise answers with id "../../x": ResponseValidationError, exit 4, one line."""
    env = {name: value for name, value in hostile.items() if name != "key"}
    for extra in ([], ["--json"]):
        invoked = invoke(["run", "kyc", "--poll-interval", "0.01", *extra], env=env)
        assert invoked.code == 4, invoked
        assert "Traceback" not in invoked.err
        assert "ResponseValidationError" in invoked.err + invoked.out
        assert "UUID" in invoked.err + invoked.out


def test_an_unexpected_error_is_one_line_and_exit_4(
    served: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in a command: one line on stderr, exit 4; -vv adds the traceback."""
    import aiotlink._commands

    def broken(*_: object) -> None:
        raise RuntimeError("boom")

    key = started(served, served.interactive)
    monkeypatch.setattr(aiotlink._commands, "show_execution", broken)
    quiet = invoke(["find", key], env=served.env)
    assert (quiet.code, quiet.err) == (4, "aiotlink: unexpected error: RuntimeError: boom\n")
    loud = invoke(["find", key, "-vv"], env=served.env)
    assert loud.code == 4
    assert "Traceback" in loud.err
    assert loud.err.endswith("aiotlink: unexpected error: RuntimeError: boom\n")


def test_a_deeply_nested_result_with_nan_prints(hostile: dict[str, str | None]) -> None:
    """600 levels and a NaN: the client reads it, so the command prints it (NaN as null)."""
    env = {name: value for name, value in hostile.items() if name != "key"}
    expected: Any = None
    for _ in range(600):
        expected = [expected]
    as_json = invoke(["result", DEEP, "--json"], env=env)
    assert as_json.code == 0, as_json.err[-500:]
    nested = "[" * 600 + "null" + "]" * 600
    assert as_json.out == '{"id": "' + DEEP + '", "result": ' + nested + "}\n"
    human = invoke(["result", DEEP], env=env)
    assert human.code == 0, human.err[-500:]
    assert re.sub(r"\s", "", human.out) == nested


def test_json_output_is_strict_even_for_a_nan_result(hostile: dict[str, str | None]) -> None:
    """A result holding NaN and -Infinity is written as strict JSON (null)."""
    env = {name: value for name, value in hostile.items() if name != "key"}
    invoked = invoke(["result", str(hostile["key"]), "--json"], env=env)
    assert invoked.code == 0, invoked.err
    assert invoked.records()[0]["result"] == {"score": None, "big": None}
    human = invoke(["result", str(hostile["key"])], env=env)
    assert strict_json(human.out) == {"score": None, "big": None}


def test_clean_and_dump_json() -> None:
    """clean() escapes control and format characters; dump_json() never writes NaN."""
    assert clean("ok ü") == "ok ü"
    assert clean("a\x1b[2Jb\u202ec") == "a\\x1b[2Jb\\u202ec"
    assert clean("x" * 500, limit=10) == "x" * 9 + "…"
    assert dump_json({"a": [float("nan"), (1, float("inf"))]}) == '{"a": [null, [1, null]]}'


# webhooks verify -----------------------------------------------------------------------


def test_webhooks_verify_checks_a_captured_delivery(tmp_path: Path) -> None:
    """A delivery of the fake verifies (exit 0, the event); a changed body does not (exit 1)."""
    thread = LoopThread()

    async def capture() -> tuple[FakeTransactionLink, bytes, str]:
        fake = FakeTransactionLink(
            webhook_url="http://127.0.0.1:9/hooks", webhook_retry_seconds=0.01
        )
        await fake.start()
        kyc = fake.add_definition(statuses=["INITIALISED", "COMPLETED"])
        from aiotlink import TransactionLinkClient

        async with TransactionLinkClient(fake.token, base_url=fake.url) as client:
            await client.workflows.initialise(kyc)
        await fake.webhooks_settled(timeout=10)
        delivery = fake.webhook_deliveries[0]
        return fake, delivery.body, delivery.signature

    fake, body, signature = thread.call(capture())
    try:
        env: dict[str, str | None] = {
            "TRANSACTIONLINK_TOKEN": fake.token,
            "TRANSACTIONLINK_BASE_URL": fake.url,
        }
        path = tmp_path / "body.json"
        path.write_bytes(body)
        arguments = ["webhooks", "verify", "--signature", signature, "--json"]
        invoked = invoke([*arguments, "--body-file", str(path)], env=env)
        assert invoked.code == 0, invoked.err
        [record] = invoked.records()
        assert record["verified"] is True
        assert record["id"] == json.loads(body)["workflowExecutionId"]
        from_stdin = invoke(
            ["webhooks", "verify", "--signature", signature], env=env, stdin=body.decode()
        )
        assert from_stdin.code == 0
        assert from_stdin.out.startswith("verified: WORKFLOW_STATUS_UPDATED for ")
        changed = invoke(
            arguments, env=env, stdin=body.decode().replace("INITIALISED", "COMPLETED")
        )
        assert changed.code == 1
        assert changed.records()[0]["id"] is None
        assert changed.records()[0]["error"]["type"] == "WebhookVerificationError"

        def refused() -> web.Response:
            return web.json_response({"errors": [{"code": "FORBIDDEN"}]}, status=403)

        url, runner = thread.call(hostile_app({("GET", "/auth/webhooks/key/{kid}"): refused}))
        unfetched = invoke(
            [*arguments, "--body-file", str(path)],
            env={"TRANSACTIONLINK_TOKEN": fake.token, "TRANSACTIONLINK_BASE_URL": url},
        )
        thread.call(runner.cleanup())
        # The key could not be had: an API error (4), not a delivery that fails (1).
        assert unfetched.code == 4, unfetched
        assert "could not fetch the key" in unfetched.records()[0]["error"]["message"]
    finally:
        thread.call(fake.close())
        thread.close()


# demo and the entry point -------------------------------------------------------------


def test_demo_is_a_command_of_the_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    """`aiotlink demo` through click asks for --definition when a token is set."""
    invoked = invoke(["demo"], env={"TRANSACTIONLINK_TOKEN": "tot_x"})
    assert invoked.code == 2
    assert "--definition" in invoked.err


def test_without_the_cli_extra_the_command_says_how_to_install_it() -> None:
    """Without click and rich: one line naming the extra (exit 2); demo's help still works."""
    script = (
        "import sys; sys.modules['click'] = None; sys.modules['rich'] = None\n"
        "from aiotlink._cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    missing = subprocess.run(
        [sys.executable, "-c", script, "find", MISSING], capture_output=True, text=True, timeout=30
    )
    assert missing.returncode == 2
    assert missing.stderr == (
        'aiotlink: the command line needs the cli extra: pip install "aiotlink[cli]"\n'
    )
    demo = subprocess.run(
        [sys.executable, "-c", script, "demo", "--help"], capture_output=True, text=True, timeout=30
    )
    assert demo.returncode == 0
    assert "--definition" in demo.stdout


def test_the_group_is_click() -> None:
    """The command tree is click's (the cli extra)."""
    import click

    assert isinstance(cli, click.Group)


# fake-server in-process, and its definition files ----------------------------------------


def test_fake_server_serves_the_definitions_of_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """fake-server --definition FILE adds its definitions; the banner lists them."""
    import asyncio

    from aiotlink.testing import _process

    path = tmp_path / "flows.json"
    path.write_text(
        json.dumps(
            {
                "name": "kyc-custom",
                "statuses": ["RUNNING", "COMPLETED"],
                "result": {"ok": True},
                "step_seconds": 0.5,
                "interactive": True,
            }
        )
    )

    async def serve_once(options: Any) -> int:
        stop = asyncio.Event()
        stop.set()
        return await _process.serve(options, stop=stop, out=sys.stdout, err=sys.stderr)

    monkeypatch.setattr(_process, "serve_until_signal", serve_once)
    invoked = invoke(["fake-server", "--port", "0", "--definition", str(path)])
    assert invoked.code == 0, invoked.err
    custom = _process.load_definitions(str(path))[0]
    assert re.search(rf"^    {custom.definition_id}  kyc-custom ", invoked.out, re.M)
    assert (custom.statuses, custom.step_seconds, custom.interactive) == (
        ("RUNNING", "COMPLETED"),
        0.5,
        True,
    )
    hooks = invoke(["fake-server", "--port", "0", "--webhook-url", "http://127.0.0.1:9/x"])
    assert hooks.code == 0, hooks.err
    assert "webhooks http://127.0.0.1:9/x" in hooks.out
    as_json = invoke(["fake-server", "--port", "0", "--json", "--definition", str(path)])
    assert as_json.code == 0, as_json.err
    [record] = as_json.records()
    assert {"id": custom.definition_id, "name": "kyc-custom"}.items() <= record["definitions"][
        -1
    ].items()
    assert as_json.err == "stopped\n"


BAD_DEFINITIONS = {
    "not an object": "[1]",
    "empty list": "[]",
    "unknown key": '{"name": "x", "statuses": ["COMPLETED"], "colour": 1}',
    "no name": '{"statuses": ["COMPLETED"]}',
    "no statuses": '{"name": "x"}',
    "bad status": '{"name": "x", "statuses": ["DONE"]}',
    "bad id": '{"name": "x", "statuses": ["COMPLETED"], "id": 5}',
    "bad step": '{"name": "x", "statuses": ["COMPLETED"], "step_seconds": -1}',
    "bad interactive": '{"name": "x", "statuses": ["COMPLETED"], "interactive": "yes"}',
    "result and bytes": '{"name": "x", "statuses": ["COMPLETED"], "result": 1, "result_bytes": 9}',
    "tiny bytes": '{"name": "x", "statuses": ["COMPLETED"], "result_bytes": 1}',
    "nan": '{"name": "x", "statuses": ["COMPLETED"], "result": NaN}',
    "deep": '{"name": "x", "statuses": ["COMPLETED"], "result": ' + "[" * 70 + "]" * 70 + "}",
    "not json": "{name",
    "not utf-8": b'{"name": "\xff"}',
    "too large": b" " * (2**20 + 1),
}


@pytest.mark.parametrize("content", BAD_DEFINITIONS.values(), ids=list(BAD_DEFINITIONS))
def test_a_bad_definition_file_is_a_usage_error(tmp_path: Path, content: str | bytes) -> None:
    """Each problem of a definition file is one line naming the file, exit 2."""
    path = tmp_path / "flows.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    invoked = invoke(["fake-server", "--port", "0", "--definition", str(path)])
    assert invoked.code == 2
    assert str(path) in invoked.err
    assert invoked.err.count("\n") == 1


def test_the_process_parser_checks_ports_and_steps() -> None:
    """python -m aiotlink.testing refuses a port out of range and a NaN step (argparse, 2)."""
    from aiotlink.testing import _process

    for arguments in (["--port", "70000"], ["--storage-port", "x"], ["--step-seconds", "nan"]):
        with pytest.raises(SystemExit) as exited:
            _process.build_parser().parse_args(arguments)
        assert exited.value.code == 2


def test_broken_pipe_in_process_exits_141(served: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write to a closed stdout ends the command with 141 (click would say 1)."""
    from aiotlink import _commands

    def closed(*_: object) -> None:
        raise BrokenPipeError

    monkeypatch.setattr(_commands.Output, "record", closed)
    monkeypatch.setattr(_commands.os, "dup2", lambda *_: None)
    assert invoke(["find", MISSING, "--json"], env=served.env).code == 141


def test_ctrl_c_in_process_exits_130(served: Fake, monkeypatch: pytest.MonkeyPatch) -> None:
    """KeyboardInterrupt (Ctrl-C) ends any command with 130."""
    from aiotlink import _commands

    def interrupted(coroutine: Any) -> None:
        coroutine.close()
        raise KeyboardInterrupt

    monkeypatch.setattr(_commands.asyncio, "run", interrupted)
    assert invoke(["find", MISSING], env=served.env).code == 130


@pytest.mark.parametrize(
    ("arguments", "stdin"),
    [
        (["demo"], None),
        (["find", MISSING], None),
        (["demo", "--help"], None),
        (["--version"], None),
    ],
)
def test_without_the_cli_extra_in_process(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    arguments: list[str],
    stdin: None,
) -> None:
    """Without click: the install line for the commands, the demo on argparse."""
    from aiotlink import _cli

    monkeypatch.delitem(sys.modules, "aiotlink._commands")
    monkeypatch.setitem(sys.modules, "click", None)
    monkeypatch.setenv("TRANSACTIONLINK_TOKEN", "tot_x")
    if arguments == ["demo", "--help"]:
        with pytest.raises(SystemExit) as exited:
            _cli.main(arguments)
        assert exited.value.code == 0
        assert "--large-result-definition" in capsys.readouterr().out
        return
    if arguments == ["--version"]:
        assert _cli.main(arguments) == 0
        assert capsys.readouterr().out == invoke(["--version"]).out  # as with the extra
        return
    assert _cli.main(arguments) == 2
    err = capsys.readouterr().err
    expected = "--definition" if arguments == ["demo"] else 'pip install "aiotlink[cli]"'
    assert expected in err


def test_an_import_error_of_another_module_is_not_hidden(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a missing click or rich means the extra is missing; other errors are raised."""
    from aiotlink import _cli

    monkeypatch.delitem(sys.modules, "aiotlink._commands")
    monkeypatch.setitem(sys.modules, "rich.live", None)
    assert _cli.main(["find", MISSING]) == 2
    monkeypatch.setitem(sys.modules, "attrs", None)
    with pytest.raises(ImportError):
        _cli.main(["find", MISSING])


# Live views in-process, with rich told the output is a terminal ------------------------------

TERMINAL = {"TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "1", "COLUMNS": "120", "LINES": "30"}
IN_PLACE = re.compile(r"\x1b\[\d*[AK]|\x1b\[2K|\r(?!\n)")


def test_live_views_redraw_in_place(served: Fake, tmp_path: Path) -> None:
    """run, wait and result --out on a terminal redraw in place; --json keeps stdout JSON."""
    env = {**served.env, **TERMINAL}
    ran = invoke(["run", served.ok, "--poll-interval", "0.01"], env=env)
    assert ran.code == 0, ran.err
    assert IN_PLACE.search(ran.out)
    keys = [started(served, served.ok) for _ in range(3)]
    waited = invoke(["wait", *keys, "--poll-interval", "0.01"], env=env)
    assert waited.code == 0
    assert IN_PLACE.search(waited.out)
    assert "3 executions: 3 COMPLETED" in waited.out
    big = invoke(["run", served.large, "--json", "--poll-interval", "0.01"], env=served.env)
    target = tmp_path / "big.json"
    saved = invoke(["result", big.records()[0]["id"], "--out", str(target)], env=env)
    assert saved.code == 0
    assert "1.5/1.5 MB" in saved.out
    as_json = invoke(["wait", *keys, "--json", "--poll-interval", "0.01"], env=env)
    assert "\x1b" not in as_json.out
    assert len(as_json.records()) == 3
    assert IN_PLACE.search(as_json.err)


def test_readme_transcripts_of_usage_errors_are_what_the_commands_print() -> None:
    """The README's usage-error transcript is the commands' output, character for character."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    block = readme[readme.index("Bad input is one line") :]
    block = block[block.index("```console\n") + 11 :]
    block = block[: block.index("\n```")]
    commands: list[tuple[str, str]] = []
    for line in block.splitlines():
        if line.startswith("$ "):
            commands.append((line[2:], ""))
        else:
            commands[-1] = (commands[-1][0], commands[-1][1] + line + "\n")
    assert len(commands) == 2
    for command, expected in commands:
        arguments = command.split()
        env: dict[str, str | None] = {"TRANSACTIONLINK_TOKEN": "tot_x"}
        if arguments[:2] == ["env", "-u"]:
            env = {arguments[2]: None}
            arguments = arguments[3:]
        invoked = invoke(arguments[1:], env=env)
        assert invoked.code == 2
        assert invoked.err == expected.rstrip("\n") + "\n"


# Traces ------------------------------------------------------------------------------


def test_commands_make_the_client_spans_for_a_global_sdk(
    served: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the otel extra, `aiotlink find` and `wait` trace to the global provider.

    As `opentelemetry-instrument aiotlink ...` sets an SDK's provider up globally (here
    in place of the global one, which a process may set only once); off again after.
    """
    import opentelemetry.trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from aiotlink import _cli, _instrument

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(opentelemetry.trace, "get_tracer_provider", lambda: provider)
    execution_id = started(served, served.ok)
    assert exporter.get_finished_spans() == ()  # cli_main alone: no tracing
    for arguments in (["find", execution_id], ["wait", execution_id, "--poll-interval", "0.05"]):
        invoked = invoke(arguments, env=served.env, entry=_cli.main)
        assert invoked.code == 0, invoked.err
        assert _instrument.current is None
    names = [span.name for span in exporter.get_finished_spans()]
    assert {"aiotlink.find", "GET /workflows/{id}", "aiotlink.wait", "aiotlink.poll"} <= set(names)
    # A process that instrumented aiotlink itself keeps its providers, on after.
    import aiotlink.otel

    own = InMemorySpanExporter()
    own_provider = TracerProvider()
    own_provider.add_span_processor(SimpleSpanProcessor(own))
    aiotlink.otel.instrument(tracer_provider=own_provider)
    hooks = _instrument.current
    try:
        assert invoke(["find", execution_id], env=served.env, entry=_cli.main).code == 0
        assert _instrument.current is hooks
    finally:
        aiotlink.otel.uninstrument()
    assert "aiotlink.find" in [span.name for span in own.get_finished_spans()]
    assert len(exporter.get_finished_spans()) == len(names)
    provider.shutdown()


def test_without_the_otel_extra_the_commands_run_untraced(
    served: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No opentelemetry: the command runs, and aiotlink.otel is never imported."""
    import aiotlink
    from aiotlink import _cli, _instrument

    monkeypatch.delitem(sys.modules, "aiotlink.otel", raising=False)
    monkeypatch.delitem(sys.modules, "aiotlink.otel._hooks", raising=False)
    monkeypatch.delattr(aiotlink, "otel", raising=False)
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    execution_id = started(served, served.ok)
    invoked = invoke(["find", execution_id, "--json"], env=served.env, entry=_cli.main)
    assert invoked.code == 0, invoked.err
    assert invoked.records()[0]["id"] == execution_id
    assert _instrument.current is None
    assert "aiotlink.otel" not in sys.modules


# On a terminal (emulated in-process: stdout and stderr on one screen) -------------------


def test_wait_on_a_terminal_keeps_errors_the_table_and_every_unfinished_id(
    served: Fake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Errors printed while live stay; the last table stays; all not completed are named."""
    keys = [started(served, served.ok) for _ in range(3)] + [started(served, served.failing)]
    arguments = ["wait", *keys, MISSING, "--poll-interval", "0.05"]
    code, raw = invoke_on_screen(arguments, served.env, monkeypatch, height=7)
    assert code == 4
    shown = screen_lines(raw)
    error = next(line for line in shown if line.startswith("error: "))
    assert error.startswith(f"error: {MISSING}: NotFoundError: ")
    summary = "5 executions: 3 COMPLETED, 1 FAILED, 1 error"
    assert summary in shown, shown
    # Three rows fit: the two that did not complete are named below the table.
    assert shown[shown.index(summary) + 1 :][:2] == [f"{keys[3]}  FAILED", f"{MISSING}  error"]


@pytest.fixture(scope="module")
def evil_status() -> Iterator[dict[str, str | None]]:
    """A server whose execution never ends, in a status made of escape sequences."""
    thread = LoopThread()
    key = "33333333-3333-4333-8333-333333333333"

    def execution() -> web.Response:
        return web.json_response(_execution(key, status="RUNNING" + EVIL), status=201)

    routes = {("POST", "/workflows"): execution, ("GET", f"/workflows/{key}"): execution}
    url, runner = thread.call(hostile_app(routes))
    yield {"TRANSACTIONLINK_TOKEN": "tot_x", "TRANSACTIONLINK_BASE_URL": url, "key": key}
    thread.call(runner.cleanup())
    thread.close()


@pytest.mark.parametrize("on_screen", [False, True], ids=["plain", "terminal"])
@pytest.mark.parametrize("command", ["run", "wait"])
def test_statuses_are_escaped_in_progress_lines_and_live_views(
    evil_status: dict[str, str | None],
    monkeypatch: pytest.MonkeyPatch,
    command: str,
    on_screen: bool,
) -> None:
    """run's plain lines and live line, wait's plain lines and live table: escaped."""
    env = {name: value for name, value in evil_status.items() if name != "key"}
    target = "kyc" if command == "run" else str(evil_status["key"])
    arguments = [command, target, "--poll-interval", "0.01", "--timeout", "0.6"]
    if on_screen:
        code, raw = invoke_on_screen(arguments, env, monkeypatch)
        raw = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", raw)  # the live view's own sequences
    else:
        invoked = invoke(arguments, env)
        code, raw = invoked.code, invoked.out
    assert code == 3
    assert "RUNNING\\x1b]0;pwned\\x07" in raw, raw
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f\u202e]", raw.replace("\r", "")), repr(raw)


def test_verbose_logs_are_escaped() -> None:
    """-v's log lines escape what the server sent."""
    import io
    import logging

    from aiotlink._commands import library_logs

    stream = io.StringIO()
    with library_logs(1, stream):
        logging.getLogger("aiotlink.test").warning("status %s", EVIL)
    logged = stream.getvalue()
    assert logged.startswith("WARNING aiotlink.test: status \\x1b]0;pwned\\x07\\x1b[2J"), logged
    assert not re.search(r"[\x00-\x09\x0b-\x1f\x7f\u202e]", logged), repr(logged)


def test_write_all_writes_everything_to_an_unbuffered_file_or_raises(tmp_path: Path) -> None:
    """Unbuffered stdout (PYTHONUNBUFFERED): the whole text, or BrokenPipeError."""
    import io
    import os

    from aiotlink._commands import write_all

    path = tmp_path / "out.txt"
    with io.TextIOWrapper(io.FileIO(path, "w"), encoding="utf-8") as unbuffered:
        write_all(unbuffered, "é" * 200_000)
    assert path.read_text(encoding="utf-8") == "é" * 200_000
    read, write = os.pipe()
    os.close(read)
    raw = io.FileIO(write, "w")
    closed = io.TextIOWrapper(raw, encoding="utf-8")
    try:
        with pytest.raises(BrokenPipeError):
            write_all(closed, "x" * 200_000)
    finally:
        closed.detach()
        raw.close()
