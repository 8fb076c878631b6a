"""A minimal API server for the call benchmark: GET /workflows/{id} answers the spec's body.

Run as its own process (``python benchmarks/_server.py``): it listens on 127.0.0.1, a
free port, prints the port, and serves until it is sent SIGINT or SIGTERM. The answer is
a fixed execution body of the spec, so the server costs the same whatever the client.
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web
from decode import RAW

HEADERS = {"Content-Type": "application/json;charset=UTF-8"}


async def find(request: web.Request) -> web.Response:
    return web.Response(body=RAW, headers=HEADERS)


async def serve() -> None:
    app = web.Application()
    app.router.add_get("/workflows/{workflow_id}", find)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print(runner.addresses[0][1], flush=True)
    stop = asyncio.Event()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signal_number, stop.set)
    await stop.wait()
    await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve())
