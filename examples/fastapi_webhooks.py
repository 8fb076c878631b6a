"""A FastAPI service whose waits finish on TransactionLink's webhooks.

    POST /kyc                         start a KYC workflow; answers its id
    GET  /kyc/{id}?wait=10            wait up to `wait` seconds for it to end
    POST /transactionlink/webhooks    the receiver: set this URL in TransactionLink's dashboard

Waits poll only once a minute, as a safety net: each verified webhook nudges the waits
on its execution, so they finish within a lookup of the webhook. The receiver hands
each event to a queue and answers at once; a background task does the follow-up.

Serve it (needs the `webhooks` extra, FastAPI and uvicorn):

    TRANSACTIONLINK_TOKEN=tot_... KYC_DEFINITION_ID=... uvicorn examples.fastapi_webhooks:app

``python examples/fastapi_webhooks.py --port 8000`` serves it on that port, drives it
once and checks the outcome: ``nox -s examples`` runs it against a fake TransactionLink
that sends its webhooks there (``python -m aiotlink.testing --webhook-url ...``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, HTTPException

from aiotlink import NotFoundError, TransactionLinkClient, WaitTimeoutError, WebhookEvent

DEFINITION_ID = os.environ.get("KYC_DEFINITION_ID", "kyc-background")
MAX_WAIT = 30.0  # seconds a request may hold its connection open
SAFETY_NET_POLL = 60.0  # seconds between polls: the webhooks do the rest

# Made at import so that the receiver can be mounted below. Creating it does no I/O:
# its connections open on first use, inside the server's event loop; the lifespan
# closes it.
client = TransactionLinkClient()  # TRANSACTIONLINK_TOKEN, TRANSACTIONLINK_BASE_URL
events: asyncio.Queue[WebhookEvent] = asyncio.Queue(maxsize=10_000)
seen_statuses: Counter[str] = Counter()  # what the follow-up task has handled
handled_one = asyncio.Event()


async def on_event(event: WebhookEvent) -> None:
    """Hand the event off and return: the provider waits at most 10 s for the answer."""
    events.put_nowait(event)  # a full queue raises: 500, and the provider redelivers


async def follow_up() -> None:
    """The work a webhook triggers, off the receiver's path (here: count statuses)."""
    handled: set[str] = set()
    while True:
        event = await events.get()
        if event.delivery_key in handled:  # a redelivery of an event already handled
            continue
        handled.add(event.delivery_key)
        seen_statuses[event.status.value if event.status else "?"] += 1
        handled_one.set()


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    worker = asyncio.create_task(follow_up())
    async with client:  # closed at shutdown
        yield
    worker.cancel()


app = FastAPI(lifespan=lifespan)
# A route, not app.mount: a mount answers the bare path with a redirect to its "/" form,
# which the provider counts as a failed delivery.
app.add_route("/transactionlink/webhooks", client.webhooks.asgi_app(on_event))


@app.post("/kyc", status_code=202)
async def start_kyc(parameters: dict[str, Any]) -> dict[str, Any]:
    execution = await client.workflows.initialise(DEFINITION_ID, parameters=parameters)
    return {"id": execution.id, "status": execution.status.value, "link": execution.link}


@app.get("/kyc/{execution_id}")
async def await_kyc(execution_id: str, wait: float = 10.0) -> dict[str, Any]:
    try:
        execution = await client.workflows.wait_for_completion(
            execution_id,
            timeout=min(max(wait, 0.01), MAX_WAIT),
            poll_interval=SAFETY_NET_POLL,
            raise_on_failure=False,
        )
    except WaitTimeoutError as timed_out:
        last = timed_out.execution
        return {"id": execution_id, "status": last.status.value if last else None, "done": False}
    except (NotFoundError, ValueError) as error:
        raise HTTPException(404, "no such execution") from error
    return {"id": execution_id, "status": execution.status.value, "done": True}


async def check(port: int) -> None:
    """Serve the app on ``port``, start a KYC run, wait for it, and check the outcome."""
    import httpx
    import uvicorn

    # Listening before the server starts: requests wait in the backlog until it does.
    listener = socket.create_server(("127.0.0.1", port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    serving = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        async with asyncio.timeout(60):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                started = await http.post("/kyc", json={"customerId": "c-42"})
                assert started.status_code == 202, started.text
                execution_id = started.json()["id"]
                print("started", execution_id)
                began = time.perf_counter()
                finished = await http.get(f"/kyc/{execution_id}", params={"wait": "20"})
                took = time.perf_counter() - began
                assert finished.status_code == 200, finished.text
                assert finished.json()["done"], finished.text
                # Polling alone would have taken SAFETY_NET_POLL: a webhook ended the wait.
                assert took < SAFETY_NET_POLL / 2, took
                await handled_one.wait()  # the follow-up task runs after the answer
                print(f"finished: {finished.json()['status']} in {took:.2f} s")
                print("webhooks handled:", dict(seen_statuses))
    finally:
        server.should_exit = True
        await serving
        listener.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True, help="serve on 127.0.0.1:PORT")
    asyncio.run(check(parser.parse_args().port))


if __name__ == "__main__":
    main()
