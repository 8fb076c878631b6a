"""A FastAPI service whose waits finish on TransactionLink's webhooks.

    POST /kyc                         start a KYC workflow; answers its id
    GET  /kyc/{id}?wait=10            wait up to `wait` seconds for it to end
    GET  /kyc/{id}/result             the result, streamed as it comes (any size)
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
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from aiotlink import (
    NotFoundError,
    ResultNotReadyError,
    TransactionLinkClient,
    WaitTimeoutError,
    WebhookEvent,
)

DEFINITION_ID = os.environ.get("KYC_DEFINITION_ID", "kyc-background")
MAX_WAIT = 30.0  # seconds a request may hold its connection open
SAFETY_NET_POLL = 60.0  # seconds between polls: the webhooks do the rest

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
    # Made here, in the server's loop (TRANSACTIONLINK_TOKEN, TRANSACTIONLINK_BASE_URL),
    # so that a test's transactionlink_defaults fixture points it at the fake.
    async with TransactionLinkClient() as client:  # closed at shutdown
        app.state.transactionlink = client
        app.state.webhooks = client.webhooks.asgi_app(on_event)
        yield
    worker.cancel()


def transactionlink(request: Request) -> TransactionLinkClient:
    """The app's one client, for the routes (a FastAPI dependency)."""
    client: TransactionLinkClient = request.app.state.transactionlink
    return client


Client = Annotated[TransactionLinkClient, Depends(transactionlink)]
app = FastAPI(lifespan=lifespan)


class WebhookReceiver:
    """The receiver that the lifespan made with the client.

    A route, not app.mount: a mount answers the bare path with a redirect to its "/"
    form, which the provider counts as a failed delivery.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await scope["app"].state.webhooks(scope, receive, send)


app.router.routes.append(Route("/transactionlink/webhooks", WebhookReceiver()))


@app.post("/kyc", status_code=202)
async def start_kyc(parameters: dict[str, Any], client: Client) -> dict[str, Any]:
    execution = await client.workflows.initialise(DEFINITION_ID, parameters=parameters)
    return {"id": execution.id, "status": execution.status.value, "link": execution.link}


@app.get("/kyc/{execution_id}")
async def await_kyc(execution_id: str, client: Client, wait: float = 10.0) -> dict[str, Any]:
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


@app.get("/kyc/{execution_id}/result")
async def kyc_result(execution_id: str, client: Client) -> StreamingResponse:
    """The result's JSON, streamed from TransactionLink (or its storage) as it arrives."""
    try:
        chunks = client.workflows.stream_result(execution_id)
        # The request is made here, so that its errors become statuses; once the
        # answer has started, a failure can only cut the body short.
        first = await anext(chunks)
    except ResultNotReadyError as error:
        raise HTTPException(409, "the execution has no result yet") from error
    except (NotFoundError, ValueError) as error:
        raise HTTPException(404, "no such execution") from error

    async def body() -> AsyncIterator[bytes]:
        yield first
        async for chunk in chunks:  # a few chunks in memory, whatever the size
            yield chunk

    return StreamingResponse(body(), media_type="application/json")


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
                result = await http.get(f"/kyc/{execution_id}/result")
                assert result.status_code == 200, result.text
                print("result:", len(result.content), "bytes, streamed")
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
    args = parser.parse_args()
    if not os.environ.get("TRANSACTIONLINK_TOKEN"):
        parser.error("set TRANSACTIONLINK_TOKEN to your API token (tot_...)")
    asyncio.run(check(args.port))


if __name__ == "__main__":
    main()
