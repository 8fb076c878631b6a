"""A Starlette app that shares one client through its lifespan.

    POST /kyc                   start a KYC workflow; answers its id (and hosted link)
    GET  /kyc/{id}?wait=10      wait up to `wait` seconds; the result once it is done

Serve it (FastAPI works the same way: create the client in the lifespan):

    TRANSACTIONLINK_TOKEN=tot_... KYC_DEFINITION_ID=... uvicorn examples.starlette_app:app

``python examples/starlette_app.py`` drives both endpoints once in-process as a check.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from aiotlink import NotFoundError, TransactionLinkClient, WaitTimeoutError, WorkflowStatus

BASE_URL = os.environ.get("TRANSACTIONLINK_BASE_URL", "https://api.transactionlink.io")
DEFINITION_ID = os.environ.get("KYC_DEFINITION_ID", "kyc-background")
MAX_WAIT = 30.0  # seconds a request may hold its connection open


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    # One client for the whole app: it shares its connection pool across requests.
    async with TransactionLinkClient(base_url=BASE_URL) as client:
        yield {"client": client}


async def start_kyc(request: Request) -> JSONResponse:
    client: TransactionLinkClient = request.state.client
    parameters = await request.json()
    execution = await client.workflows.initialise(DEFINITION_ID, parameters=parameters)
    body = {"id": execution.id, "status": execution.status.value, "link": execution.link}
    return JSONResponse(body, status_code=202)


async def await_kyc(request: Request) -> JSONResponse:
    client: TransactionLinkClient = request.state.client
    execution_id = request.path_params["execution_id"]
    try:
        wait = float(request.query_params.get("wait", "10"))
    except ValueError:
        return JSONResponse({"error": "wait must be a number of seconds"}, 400)
    wait = min(max(wait, 0.01), MAX_WAIT)
    try:
        execution = await client.workflows.wait_for_completion(
            execution_id, timeout=wait, raise_on_failure=False, poll_interval=0.2
        )
    except WaitTimeoutError as timed_out:
        # Not done yet: the execution keeps running; the caller asks again later.
        status = timed_out.execution.status.value if timed_out.execution else None
        return JSONResponse({"id": execution_id, "status": status, "done": False}, 202)
    except (NotFoundError, ValueError):
        return JSONResponse({"id": execution_id, "error": "no such execution"}, 404)
    body: dict[str, Any] = {"id": execution_id, "status": execution.status.value, "done": True}
    if execution.status is WorkflowStatus.COMPLETED:
        body["result"] = await client.workflows.get_result(execution_id)
    return JSONResponse(body)


app = Starlette(
    routes=[
        Route("/kyc", start_kyc, methods=["POST"]),
        Route("/kyc/{execution_id}", await_kyc, methods=["GET"]),
    ],
    lifespan=lifespan,
)


def check() -> None:
    """Drive both endpoints once, in-process, and fail loudly if anything is off."""
    from starlette.testclient import TestClient

    with TestClient(app) as http:
        started = http.post("/kyc", json={"customerId": "c-42"})
        assert started.status_code == 202, started.text
        execution_id = started.json()["id"]
        print("started", started.json())
        impatient = http.get(f"/kyc/{execution_id}", params={"wait": "0.05"})
        print("after 0.05 s:", impatient.status_code, impatient.json())
        finished = http.get(f"/kyc/{execution_id}", params={"wait": "20"})
        assert finished.status_code == 200, finished.text
        assert finished.json()["done"], finished.text
        print("finished:", finished.json())
        missing = http.get("/kyc/00000000-0000-4000-8000-000000000000", params={"wait": "1"})
        assert missing.status_code == 404, missing.text


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args()
    if not os.environ.get("TRANSACTIONLINK_TOKEN"):
        parser.error("set TRANSACTIONLINK_TOKEN to your API token (tot_...)")
    check()
