"""Waits fed by webhooks against plain polling, executions ending at random times on the fake.

1,000 executions end at random times over 30 s on the fake (FakeTransactionLink, in
this process): uniformly from the moment the waits start, a quarter of them passing
through AWAITING half-way. Each side runs in a fresh process of its own, on the same
plan (same seed, so the same end times relative to the start of the waits):

- **webhooks**: the fake POSTs every status change, signed, to the client's own
  receiver (``client.webhooks.aiohttp_handler``, served by aiohttp on 127.0.0.1), and
  1,000 ``wait_for_completion(id, poll_interval=30, max_poll_interval=30)`` run under
  one ``asyncio.gather``;
- **polling**: the same fake sends the same webhooks to a sink that answers 204 and
  tells the client nothing, and the waits use the default schedule (1 s, growing 1.5
  times per unchanged poll up to 15 s).

The executions are initialised first, with webhooks off; the fake sends the changes
from the start of the waits on. Measured per side: the time from each execution's
terminal status change on the fake (its webhook's ``occurredAt``: exact, as the fake
computes it from the walk, on a clock that is the monotonic one moved to the epoch) to
its wait returning, p50, p99 (nearest rank) and max; GETs of the executions per
execution (``fake.requests_for("find")`` during the waits) and key fetches, apart; the
event loop's worst lag and full collections. On the webhook side, where the latency
goes: fake (timer, signing, its one queue of first POSTs), delivery (HTTP and
verification) and the lookup the nudge starts, and the slowest waits one by one.
Client, receiver and fake share one event loop, so the fake's signing and serving
count against the latency: a conservative figure.

    python benchmarks/webhooks.py                                 # 1,000 over 30 s
    python benchmarks/webhooks.py --executions 20 --spread 2      # a smoke run
    python benchmarks/webhooks.py --lead 1    # every end at least 1 s after the waits start
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import random
import statistics
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import aiohttp
from _common import FullCollections, Meters, rounded, run_script, spread
from aiohttp import web

from aiotlink import TransactionLinkClient, WebhookEvent
from aiotlink.testing import FakeTransactionLink

SIDES = ("webhooks", "polling")
TERMINAL = "COMPLETED"
# A quarter of the executions pass through AWAITING half-way: a change that a wait for
# the end ignores (no lookup on the webhook side; the default schedule starts over at
# 1 s on the polling side).
AWAITING_SHARE = 0.25
SETUP_WORKERS = 20
# Seconds a side may take after the last planned end before the batch is given up.
TAIL_SECONDS = 60.0
SLOWEST = 5  # the slowest waits of the webhook side, reported one by one


def nearest_rank(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` percentile of ``values`` by nearest rank (p99 of 20 is the max)."""
    ordered = sorted(values)
    return ordered[max(math.ceil(fraction * len(ordered)) - 1, 0)]


def distribution_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50, p99 and max of durations, in milliseconds."""
    return {
        "p50": statistics.median(seconds) * 1000,
        "p99": nearest_rank(seconds, 0.99) * 1000,
        "max": max(seconds) * 1000,
    }


async def serve(handler: Any) -> tuple[web.AppRunner, str]:
    """Serve ``handler`` for POST /hooks on 127.0.0.1, a free port; the runner and URL."""
    app = web.Application()
    app.router.add_post("/hooks", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/hooks"


async def sink(request: web.Request) -> web.Response:
    """The polling side's receiver: reads the delivery and answers 204, nothing more."""
    await request.read()
    return web.Response(status=204)


async def make_signing_key(fake: FakeTransactionLink) -> None:
    """Have the fake make its RSA key now (50-100 ms), not at the first change.

    Asking for the public key makes it; the provider's keys exist before any event.
    """
    url = f"{fake.url}/auth/webhooks/key/{fake.webhook_key_id}?pem=true"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers={"Authorization": fake.token}) as answer,
    ):
        answer.raise_for_status()


def plan(
    executions: int, lead: float, spread_seconds: float, seed: int
) -> list[tuple[float, bool]]:
    """Per execution: when it ends, in seconds after the waits start, and if it awaits."""
    rng = random.Random(seed)
    return [
        (lead + rng.uniform(0, spread_seconds), rng.random() < AWAITING_SHARE)
        for _ in range(executions)
    ]


async def run(
    side: str,
    executions: int,
    spread_seconds: float,
    lead: float,
    setup_seconds: float,
    webhook_poll_interval: float,
    seed: int,
) -> dict[str, Any]:
    # The fake's clock is the monotonic clock (the event loop's) moved to the epoch:
    # its times, occurredAt included, convert back exactly, and wall-clock steps
    # cannot skew a latency.
    epoch = time.time() - time.monotonic()

    def clock() -> float:
        return epoch + time.monotonic()

    received: dict[str, float] = {}  # execution id: when its terminal event was handed over
    returned: dict[str, float] = {}  # execution id: when its wait returned

    def on_event(event: WebhookEvent) -> None:
        if event.status is not None and event.status.is_terminal:
            received.setdefault(str(event.execution_id), time.monotonic())

    async with FakeTransactionLink(clock=clock) as fake:
        client = TransactionLinkClient(fake.token, base_url=fake.url)
        handler = client.webhooks.aiohttp_handler(on_event) if side == "webhooks" else sink
        runner, hook_url = await serve(handler)
        try:
            async with client:
                await make_signing_key(fake)
                keys_before = len(fake.requests_for("webhook_key"))
                # The waits start together at `start`; each execution ends its planned
                # seconds after it, at least `lead` (time for the waits' first lookups).
                setup_started = time.monotonic()
                start = setup_started + setup_seconds
                walks = plan(executions, lead, spread_seconds, seed)
                ids: list[str] = [""] * executions
                queue = iter(range(executions))

                async def initialise() -> None:
                    for index in queue:
                        ends_after, awaits = walks[index]
                        statuses = (
                            ["RUNNING", "AWAITING", TERMINAL] if awaits else ["RUNNING", TERMINAL]
                        )
                        # The walk takes len - 1 steps from initialise (a few ms from
                        # now) to its end: start + ends_after. The exact end is read
                        # back from the webhook, so those ms do not matter.
                        step = (start + ends_after - time.monotonic()) / (len(statuses) - 1)
                        step = max(step, 0.001)  # 0 would mean a step per find
                        definition = fake.add_definition(statuses=statuses, step_seconds=step)
                        ids[index] = (await client.workflows.initialise(definition)).id

                try:
                    async with asyncio.timeout(setup_seconds):
                        await asyncio.gather(*(initialise() for _ in range(SETUP_WORKERS)))
                except TimeoutError:
                    raise SystemExit(
                        f"initialising took over {setup_seconds:g} s: give more --setup-seconds"
                    ) from None
                setup_took = time.monotonic() - setup_started
                # From now on every change is POSTed: to the client's receiver, or the sink.
                fake.set_webhook_url(hook_url)
                gc.collect()
                await asyncio.sleep(start - time.monotonic())
                finds_before = len(fake.requests_for("find"))

                async def wait(execution_id: str) -> str:
                    if side == "webhooks":
                        execution = await client.workflows.wait_for_completion(
                            execution_id,
                            poll_interval=webhook_poll_interval,
                            max_poll_interval=webhook_poll_interval,
                        )
                    else:  # the default schedule
                        execution = await client.workflows.wait_for_completion(execution_id)
                    returned[execution_id] = time.monotonic()
                    return execution.status.value

                collections = FullCollections()
                gc.callbacks.append(collections)
                try:
                    async with (
                        Meters() as meters,
                        asyncio.timeout(lead + spread_seconds + TAIL_SECONDS),
                    ):
                        statuses = await asyncio.gather(*(wait(id_) for id_ in ids))
                finally:
                    gc.callbacks.remove(collections)
                wait_took = time.monotonic() - start
                await fake.webhooks_settled(timeout=30)
        finally:
            await runner.cleanup()
        finds = fake.requests_for("find")[finds_before:]
        key_fetches = len(fake.requests_for("webhook_key")) - keys_before
        deliveries = list(fake.webhook_deliveries)

    changed: dict[str, float] = {}  # execution id: its terminal change, monotonic
    posted: dict[str, float] = {}  # execution id: the first POST of its terminal webhook
    for delivery in deliveries:
        if delivery.status == TERMINAL:
            execution_id = delivery.payload["workflowExecutionId"]
            occurred = datetime.fromisoformat(delivery.payload["occurredAt"]).timestamp()
            changed[execution_id] = occurred - epoch
            posted[execution_id] = delivery.attempts[0].at
    latencies = [returned[id_] - changed[id_] for id_ in ids]
    per_execution = Counter(request.path.rsplit("/", 1)[-1] for request in finds)
    report: dict[str, Any] = {
        "side": side,
        "executions": executions,
        "all_completed": all(status == TERMINAL for status in statuses),
        "setup_seconds": setup_took,
        "wait_seconds": wait_took,
        "latency_ms": distribution_ms(latencies),
        "gets_per_execution": len(finds) / executions,
        "most_gets_one_execution": max(per_execution.values()),
        "key_fetches": key_fetches,
        "deliveries": len(deliveries),
        "deliveries_not_delivered": sum(d.outcome != "delivered" for d in deliveries),
        # Changes before the waits started would not be a wait's latency at all.
        "ended_before_start": sum(changed[id_] < start for id_ in ids),
        "worst_loop_lag_ms": meters.worst_lag * 1000,
        "full_gc_collections": len(collections.pauses),
        "worst_full_gc_ms": max(collections.pauses, default=0.0) * 1000,
    }
    if side == "webhooks":
        # Where the latency goes: the fake (timer, signing, its queue of POSTs), the
        # delivery (HTTP, verification), and the lookup the nudge started.
        report["fake_to_post_ms"] = distribution_ms([posted[id_] - changed[id_] for id_ in ids])
        report["post_to_event_ms"] = distribution_ms(
            [received[id_] - posted[id_] for id_ in ids if id_ in received]
        )
        report["event_to_return_ms"] = distribution_ms(
            [returned[id_] - received[id_] for id_ in ids if id_ in received]
        )
        # The slowest waits, to see where and when the tail happens.
        slowest = sorted(ids, key=lambda id_: changed[id_] - returned[id_])[:SLOWEST]
        report["slowest"] = [
            {
                "ended_at_s": changed[id_] - start,
                "latency_ms": (returned[id_] - changed[id_]) * 1000,
                "fake_to_post_ms": (posted[id_] - changed[id_]) * 1000,
                # None: no terminal event was handed over (a poll ended the wait).
                "post_to_event_ms": (received[id_] - posted[id_]) * 1000
                if id_ in received
                else None,
                "event_to_return_ms": (returned[id_] - received[id_]) * 1000
                if id_ in received
                else None,
            }
            for id_ in slowest
        ]
        # Waits a poll ended before the webhook was handed over (or without it).
        report["ended_by_poll"] = sum(
            id_ not in received or returned[id_] < received[id_] for id_ in ids
        )
    return report


# Measures given per side as the median, min and max over the rounds.
SPREAD_MEASURES = (
    "setup_seconds",
    "wait_seconds",
    "gets_per_execution",
    "most_gets_one_execution",
    "key_fetches",
    "worst_loop_lag_ms",
    "full_gc_collections",
    "worst_full_gc_ms",
)
DISTRIBUTIONS = ("latency_ms", "fake_to_post_ms", "post_to_event_ms", "event_to_return_ms")


def summarise(rounds: dict[str, list[dict[str, Any]]], arguments: dict[str, Any]) -> dict[str, Any]:
    """Both sides over the rounds, the ratio of GETs, and the targets (worst round)."""

    def side(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "all_completed": all(outcome["all_completed"] for outcome in outcomes),
            "ended_before_start": max(outcome["ended_before_start"] for outcome in outcomes),
            "deliveries_not_delivered": max(
                outcome["deliveries_not_delivered"] for outcome in outcomes
            ),
        }
        if "ended_by_poll" in outcomes[0]:
            summary["ended_by_poll"] = spread([outcome["ended_by_poll"] for outcome in outcomes])
            summary["slowest_per_round"] = [outcome["slowest"] for outcome in outcomes]
        for measure in SPREAD_MEASURES:
            summary[measure] = spread([outcome[measure] for outcome in outcomes])
        for name in DISTRIBUTIONS:
            if name in outcomes[0]:
                summary[name] = {
                    key: spread([outcome[name][key] for outcome in outcomes])
                    for key in ("p50", "p99", "max")
                }
        return summary

    hooked, polled = rounds["webhooks"], rounds["polling"]
    report: dict[str, Any] = {**arguments, "rounds": len(hooked)}
    report["webhooks"] = side(hooked)
    report["polling"] = side(polled)
    report["polling_gets_over_webhooks"] = spread(
        [
            base["gets_per_execution"] / mine["gets_per_execution"]
            for mine, base in zip(hooked, polled, strict=True)
        ]
    )
    latency = report["webhooks"]["latency_ms"]
    report["targets"] = {
        "p50_under_20_ms": latency["p50"]["max"] < 20,
        "p99_under_200_ms": latency["p99"]["max"] < 200,
        "at_most_2.5_gets_per_execution": report["webhooks"]["gets_per_execution"]["max"] <= 2.5,
        "at_least_3x_fewer_gets": report["polling_gets_over_webhooks"]["min"] >= 3,
    }
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=1000)
    parser.add_argument(
        "--spread", type=float, default=30.0, help="seconds over which the executions end"
    )
    parser.add_argument(
        "--lead",
        type=float,
        default=0.0,
        help="seconds from the start of the waits to the earliest end (default 0: some "
        "end while the waits' first lookups are still being made)",
    )
    parser.add_argument(
        "--setup-seconds",
        type=float,
        default=None,
        help="seconds allowed to initialise the executions (default: 1 s + 2 ms each)",
    )
    parser.add_argument("--webhook-poll-interval", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=20270115)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--side", choices=SIDES, help="run one side only, once")
    args = parser.parse_args()
    if args.executions < 1 or args.spread <= 0 or args.lead < 0 or args.rounds < 1:
        parser.error("--executions and --rounds must be at least 1, --spread above 0")
    setup_seconds = args.setup_seconds
    if setup_seconds is None:
        setup_seconds = 1.0 + 0.002 * args.executions
    if args.side:
        report = asyncio.run(
            run(
                args.side,
                args.executions,
                args.spread,
                args.lead,
                setup_seconds,
                args.webhook_poll_interval,
                args.seed,
            )
        )
        print(json.dumps(rounded(report, 3)))
        return
    arguments = ["--executions", str(args.executions), "--spread", str(args.spread)]
    arguments += ["--lead", str(args.lead), "--setup-seconds", str(setup_seconds)]
    arguments += ["--webhook-poll-interval", str(args.webhook_poll_interval)]
    arguments += ["--seed", str(args.seed)]
    rounds: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    for number in range(args.rounds):
        # Each round starts with the other side, each side in a fresh process.
        for side in SIDES[number % 2 :] + SIDES[: number % 2]:
            command = [sys.executable, __file__, "--side", side, *arguments]
            timeout = 120 + setup_seconds + args.lead + args.spread + TAIL_SECONDS
            rounds[side].append(run_script(command, timeout=timeout))
    settings = {
        "executions": args.executions,
        "spread_seconds": args.spread,
        "lead_seconds": args.lead,
        "webhook_poll_interval": args.webhook_poll_interval,
        "seed": args.seed,
    }
    print(json.dumps(rounded(summarise(rounds, settings), 3), indent=2))


if __name__ == "__main__":
    main()
