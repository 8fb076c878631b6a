"""``python -m aiotlink.arq list|replay|purge``: the dead letters, for an operator."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Awaitable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, cast

from ._state import (
    DEAD_LETTER_ORDER_KEY,
    DEAD_LETTERS_KEY,
    REPLAY_PREFIX,
    armed_key,
    due_key,
    encode,
    follow_key,
    scripts,
    shard_args,
    shard_of,
    text,
)

if TYPE_CHECKING:
    from arq.connections import ArqRedis

# Where the commands find Redis unless --redis says otherwise.
REDIS_URL_VARIABLE = "AIOTLINK_REDIS_URL"


async def dead_letters(redis: ArqRedis) -> list[dict[str, Any]]:
    """Every dead letter, oldest first: its payload, ``reason``, ``failed_at`` and ``entry``."""
    # redis-py types its commands as "an awaitable or the value", whichever client.
    entries = await cast("Awaitable[dict[bytes, bytes]]", redis.hgetall(DEAD_LETTERS_KEY))
    letters = []
    for entry, stored in entries.items():
        letter = json.loads(stored)
        letter["entry"] = text(entry)
        letters.append(letter)
    return sorted(letters, key=lambda letter: (letter.get("failed_at", 0), letter["entry"]))


async def replay(redis: ArqRedis, entry: str) -> bool:
    """Take the dead letter ``entry`` off and make its delivery due again, on its queue.

    Atomic: of replays racing for one entry, one makes it due (True), the others find
    it gone (False). The handler then gets ``max_attempts`` attempts again.
    """
    stored = await cast("Awaitable[bytes | None]", redis.hget(DEAD_LETTERS_KEY, entry))
    if stored is None:
        return False
    letter = json.loads(stored)
    if "raw" in letter:
        return False  # a payload that did not decode: for an operator to read, then purge
    payload = {key: value for key, value in letter.items() if key not in ("failed_at", "reason")}
    payload["attempt"] = 1
    queue = payload["queue"]
    member = f"{REPLAY_PREFIX}{entry}"
    shard = shard_of(member)
    replayed = await scripts(redis).replay(
        keys=[
            DEAD_LETTERS_KEY,
            DEAD_LETTER_ORDER_KEY,
            follow_key(member),
            due_key(queue, shard),
            armed_key(queue, shard),
        ],
        args=[*shard_args(redis, queue, shard), entry, stored, encode(payload), repr(time.time())],
    )
    return bool(int(replayed))


async def purge(redis: ArqRedis, entry: str) -> bool:
    """Delete the dead letter ``entry``; whether it was there."""
    async with redis.pipeline(transaction=True) as both:
        both.hdel(DEAD_LETTERS_KEY, entry)
        both.zrem(DEAD_LETTER_ORDER_KEY, entry)
        deleted, _ = await both.execute()
    return bool(deleted)


def _line(letter: dict[str, Any]) -> str:
    # Never the execution's body: it holds the execution's token.
    failed = datetime.fromtimestamp(letter.get("failed_at", 0), UTC).isoformat(timespec="seconds")
    return (
        f"{letter['entry']}  {failed}  handler={letter.get('handler')}"
        f" queue={letter.get('queue')} outcome={letter.get('kind')}"
        f" attempts={letter.get('attempt')}  {letter.get('reason', '')}"
    )


async def _run(options: argparse.Namespace) -> int:
    from arq.connections import RedisSettings, create_pool

    redis = await create_pool(RedisSettings.from_dsn(options.redis))
    try:
        letters = await dead_letters(redis)
        if options.command == "list":
            for letter in letters:
                print(_line(letter))
            if not letters:
                print("no dead letters")
            return 0
        entries = [letter["entry"] for letter in letters] if options.all else options.entries
        status = 0
        act, done = (replay, "replayed") if options.command == "replay" else (purge, "purged")
        for entry in entries:
            if await act(redis, entry):
                print(f"{done} {entry}")
            else:
                print(f"no dead letter {entry} to be {done} (gone already?)", file=sys.stderr)
                status = 1
        return status
    finally:
        await redis.aclose()


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m aiotlink.arq``."""
    parser = argparse.ArgumentParser(
        prog="python -m aiotlink.arq",
        description="List, replay and purge the dead letters of durable following (aiotlink.arq).",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--redis",
        default=os.environ.get(REDIS_URL_VARIABLE, "redis://localhost:6379/0"),
        help=f"the Redis URL (default: ${REDIS_URL_VARIABLE}, else redis://localhost:6379/0)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="list the dead letters, oldest first", parents=[common])
    again = commands.add_parser(
        "replay", help="run the handler of dead letters again", parents=[common]
    )
    gone = commands.add_parser("purge", help="delete dead letters", parents=[common])
    for command, verb in ((again, "replay"), (gone, "delete")):
        command.add_argument(
            "entries", nargs="*", help="entries as listed (<execution id>:<generation>)"
        )
        command.add_argument("--all", action="store_true", help=f"{verb} every dead letter")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    parser = build_parser()
    options = parser.parse_args(argv)
    if options.command != "list" and not (options.entries or options.all):
        parser.error(f"{options.command} needs entries, or --all")
    return asyncio.run(_run(options))
