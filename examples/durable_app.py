"""A FastAPI service that starts KYC executions and hands their follow-up to arq workers.

    POST /kyc                         start a KYC workflow and follow it durably
    POST /transactionlink/webhooks    the receiver: webhooks nudge the durable follows

The web process does not wait: `follow` records the execution in Redis and returns.
The worker processes (examples/durable_worker.py) poll it in short jobs, rarely, as a
safety net; each verified webhook nudges the follow so that the worker looks it up at
once. When it ends, a worker downloads its result to disk and runs `kyc_finished`.
A deploy, an OOM kill or a crash of any process forgets nothing.

Serve it (needs the `arq` and `webhooks` extras, FastAPI and uvicorn), with workers,
TRANSACTIONLINK_TOKEN, KYC_DEFINITION_ID and REDIS_URL set:

    uvicorn examples.durable_app:app

``python examples/durable_app.py --port 8000`` serves it, starts a worker process,
drives it once and checks the outcome: ``nox -s examples`` runs it against the fake
TransactionLink and a real Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from arq.connections import ArqRedis
from fastapi import FastAPI

from aiotlink import TransactionLinkClient, WebhookEvent
from aiotlink.arq import follow

DEFINITION_ID = os.environ.get("KYC_DEFINITION_ID", "kyc-background")
REDIS_URL = os.environ.get("REDIS_URL", "redis://localhost:6379/0")
# Where the workers download results: a directory they can all write to.
RESULTS_DIR = os.environ.get("KYC_RESULTS_DIR", "kyc-results")
SAFETY_NET_POLL = 60.0  # seconds between polls: the webhooks do the rest
FOLLOW_FOR = 7 * 86400.0  # a KYC flow may wait days for its customer

# Made at import so that the receiver can be mounted below; neither does I/O yet.
client = TransactionLinkClient()  # TRANSACTIONLINK_TOKEN, TRANSACTIONLINK_BASE_URL
arq_redis = ArqRedis.from_url(REDIS_URL)


async def on_event(event: WebhookEvent) -> None:
    """Nothing more to do here: the receiver has nudged the durable follow already."""


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    async with client:
        yield
    await arq_redis.aclose()


app = FastAPI(lifespan=lifespan)
app.add_route("/transactionlink/webhooks", client.webhooks.asgi_app(on_event, arq_redis=arq_redis))


@app.post("/kyc", status_code=202)
async def start_kyc(parameters: dict[str, Any]) -> dict[str, Any]:
    execution = await client.workflows.initialise(DEFINITION_ID, parameters=parameters)
    await follow(
        arq_redis,
        execution.id,
        on_terminal="kyc_finished",
        timeout=FOLLOW_FOR,
        poll_interval=SAFETY_NET_POLL,
        download_to=RESULTS_DIR,
    )
    return {"id": execution.id, "status": execution.status.value}


def wait_for_file(path: Path) -> None:
    """Wait until the worker's handler has written ``path`` (the check's timeout bounds it)."""
    while not path.exists():
        time.sleep(0.05)


async def check(port: int) -> None:
    """Serve the app and a worker, start a KYC run, and wait for its handler to run."""
    import httpx
    import uvicorn

    with tempfile.TemporaryDirectory() as folder:
        outcomes = Path(folder) / "outcomes.jsonl"
        worker = await asyncio.create_subprocess_exec(
            *[sys.executable, "-m", "arq", "durable_worker.WorkerSettings"],
            cwd=Path(__file__).parent,
            env={**os.environ, "KYC_OUTCOMES_FILE": str(outcomes)},
        )
        listener = socket.create_server(("127.0.0.1", port))
        server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        serving = asyncio.create_task(server.serve(sockets=[listener]))
        try:
            async with asyncio.timeout(60):
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                    started = await http.post("/kyc", json={"customerId": "c-42"})
                    assert started.status_code == 202, started.text
                    execution_id = started.json()["id"]
                    print("started and followed", execution_id)
                    began = time.perf_counter()
                    await asyncio.to_thread(wait_for_file, outcomes)
                    took = time.perf_counter() - began
            [record] = [json.loads(line) for line in outcomes.read_text().splitlines()]
            assert record["id"] == execution_id, record
            # Polling alone would have taken SAFETY_NET_POLL: a webhook nudged the follow.
            assert took < SAFETY_NET_POLL / 2, took
            print(f"handled: {record['status']} in {took:.2f} s,", end=" ")
            print(f"result downloaded: {record.get('result_bytes', 0)} bytes")
        finally:
            server.should_exit = True
            await serving
            listener.close()
            worker.terminate()
            await worker.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="serve on 127.0.0.1:PORT")
    asyncio.run(check(parser.parse_args().port))


if __name__ == "__main__":
    main()
