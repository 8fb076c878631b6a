"""Every example run with no argument (and no token) prints its usage, not a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parent.parent / "examples"
RUNNABLE = ["quickstart", "starlette_app", "worker_pool", "resume_waiting", "fastapi_webhooks"]


@pytest.mark.parametrize("name", RUNNABLE)
def test_an_example_without_arguments_prints_its_usage(name: str) -> None:
    """Exit status 2 with argparse's usage line on stderr; no traceback."""
    environment = {key: value for key, value in os.environ.items() if "TRANSACTIONLINK" not in key}
    finished = subprocess.run(
        [sys.executable, str(EXAMPLES / f"{name}.py")],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert finished.returncode == 2, finished.stderr
    assert finished.stderr.startswith(f"usage: {name}.py"), finished.stderr
    assert "Traceback" not in finished.stderr
