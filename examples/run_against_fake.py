"""Run every example against the fake server, as `nox -s examples` does, so none can rot.

Starts ``python -m aiotlink.testing`` on a free port, points the examples at it through
``TRANSACTIONLINK_BASE_URL`` and ``TRANSACTIONLINK_TOKEN``, and fails if any example
fails or says something other than what it should.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).parent
TOKEN = "tot_examples_000000000000000000"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_fake(*options: str) -> tuple[subprocess.Popen[str], dict[str, str]]:
    command = [sys.executable, "-m", "aiotlink.testing", "--port", "0", "--token", TOKEN]
    command += ["--step-seconds", "0.05", "--large-result-mib", "1", *options]
    fake = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert fake.stdout is not None
    banner = ""
    for line in fake.stdout:
        banner += line
        if "Ctrl-C" in line:
            break
    listed = re.findall(r"^\s+(\S+)\s+(\S+)\s{2,}INITIALISED", banner, re.MULTILINE)
    ids = {name: definition_id for definition_id, name in listed}
    url = re.search(r"listening on (\S+)", banner)
    assert url is not None, banner
    return fake, {"url": url[1], **ids}


def run(environment: dict[str, str], *arguments: str) -> str:
    print("$ python", " ".join(arguments), flush=True)
    result = subprocess.run(
        [sys.executable, *arguments], env=environment, capture_output=True, text=True, timeout=300
    )
    print(result.stdout, end="")
    if result.returncode != 0:
        print(result.stderr, file=sys.stderr)
        raise SystemExit(f"example failed: {' '.join(arguments)}")
    return result.stdout


def main() -> None:
    fake, fake_info = start_fake()
    try:
        environment = {
            **os.environ,
            "TRANSACTIONLINK_BASE_URL": fake_info["url"],
            "TRANSACTIONLINK_TOKEN": TOKEN,
            "KYC_DEFINITION_ID": fake_info["kyc-background"],
        }
        background, failing = fake_info["kyc-background"], fake_info["kyc-failing"]
        output = run(environment, str(HERE / "quickstart.py"), background)
        assert "finished: COMPLETED" in output, output
        assert "cancelled: CANCELLED" in output, output
        output = run(environment, str(HERE / "starlette_app.py"))
        assert "finished:" in output, output
        pool_options = ["--count", "1000", "--concurrency", "50", "--poll-interval", "0.05"]
        output = run(environment, str(HERE / "worker_pool.py"), background, failing, *pool_options)
        assert re.search(r"COMPLETED\s+500", output), output
        assert re.search(r"FAILED\s+500", output), output
        with tempfile.TemporaryDirectory() as folder:
            state = str(Path(folder) / "ids.json")
            resume = str(HERE / "resume_waiting.py")
            run(environment, resume, "start", background, "--count", "20", "--state", state)
            output = run(environment, resume, "resume", "--state", state, "--poll-interval", "0.05")
            assert "20 of 20 finished" in output, output
        run_webhooks_example()
        run_durable_example()
        print("all examples ran against the fake")
    finally:
        stop(fake)


def run_webhooks_example() -> None:
    """The FastAPI app, with a fake that sends its webhooks to it."""
    port = free_port()
    hooks = f"http://127.0.0.1:{port}/transactionlink/webhooks"
    fake, fake_info = start_fake("--webhook-url", hooks)
    try:
        environment = {
            **os.environ,
            "TRANSACTIONLINK_BASE_URL": fake_info["url"],
            "TRANSACTIONLINK_TOKEN": TOKEN,
            "KYC_DEFINITION_ID": fake_info["kyc-background"],
        }
        output = run(environment, str(HERE / "fastapi_webhooks.py"), "--port", str(port))
        assert "finished: COMPLETED" in output, output
        assert "webhooks handled:" in output, output
        assert "bytes, streamed" in output, output
    finally:
        stop(fake)


def run_durable_example() -> None:
    """The FastAPI app that hands executions to arq, its worker, a real Redis."""
    from aiotlink.testing import RedisServer

    port = free_port()
    hooks = f"http://127.0.0.1:{port}/transactionlink/webhooks"
    fake, fake_info = start_fake("--webhook-url", hooks)
    try:
        with RedisServer() as redis, tempfile.TemporaryDirectory() as results:
            environment = {
                **os.environ,
                "TRANSACTIONLINK_BASE_URL": fake_info["url"],
                "TRANSACTIONLINK_TOKEN": TOKEN,
                "KYC_DEFINITION_ID": fake_info["large-report"],
                "REDIS_URL": redis.url,
                "KYC_RESULTS_DIR": results,
            }
            output = run(environment, str(HERE / "durable_app.py"), "--port", str(port))
            assert "handled: COMPLETED" in output, output
            assert f"result downloaded: {2**20} bytes" in output, output
    finally:
        stop(fake)


def stop(fake: subprocess.Popen[str]) -> None:
    fake.send_signal(signal.SIGINT)
    fake.wait(timeout=30)
    if fake.stdout is not None:
        fake.stdout.close()


if __name__ == "__main__":
    main()
