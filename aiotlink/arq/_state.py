"""What durable following keeps in Redis, and the scripts that change it atomically.

Each followed execution is one hash, ``aiotlink:follow:<id>``: its generation (a
counter per execution, so that a later follow of the same id is told apart from an
earlier one), the arq job id of its one scheduled poll, its schedule and its
deadline. Every change to it happens in a Lua script together with the arq job it
implies (the next poll, the delivery of the outcome), so that no crash between two
commands can leave a follow without a poll or with two. A poll job acts only while it
is the job the hash names: a poll that arq runs a second time (a worker killed, a
job that overran) finds another job named and does nothing (the fence).

The keys are computed inside the scripts, so this needs one Redis, not a cluster.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from arq.constants import expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

if TYPE_CHECKING:
    from arq.connections import ArqRedis
    from redis.commands.core import AsyncScript

POLL_FUNCTION = "aiotlink_poll"
DELIVER_FUNCTION = "aiotlink_deliver"
DEAD_LETTERS_KEY = "aiotlink:dead-letters"
# The dead letters in the order they came (scored by time): the oldest go first when
# there are more than MAX_DEAD_LETTERS (README, "Durable following").
DEAD_LETTER_ORDER_KEY = "aiotlink:dead-letters:order"
MAX_DEAD_LETTERS = 10_000
# Every state key outlives its next due poll by this long, as arq's own job keys do
# (arq.constants.expires_extra_ms): a fleet that is down for longer than that loses
# its follows, and nothing is kept forever by a follow that a bug orphaned.
STATE_GRACE_SECONDS = expires_extra_ms // 1000
# The generation counter of an execution: long after any follow of it has ended.
GENERATION_TTL_SECONDS = 30 * 86400


def follow_key(execution_id: str) -> str:
    """The hash of the follow of ``execution_id``."""
    return f"aiotlink:follow:{execution_id}"


def generation_key(execution_id: str) -> str:
    """The counter of the follows of ``execution_id``, one per follow."""
    return f"aiotlink:generation:{execution_id}"


def outcome_job_id(execution_id: str, generation: int, attempt: int) -> str:
    """The arq job id of a delivery: the generation in it, so a later follow delivers too."""
    return f"aiotlink:outcome:{execution_id}:{generation}:{attempt}"


def job_payload(redis: ArqRedis, function: str, *args: Any) -> bytes:
    """A job as arq stores it, in the pool's serializer (pickle by default)."""
    return serialize_job(
        function, args, {}, None, int(time.time() * 1000), serializer=redis.job_serializer
    )


_ENQUEUE = """
local function enqueue(job_id, payload, queue, score_ms, ttl_ms)
  local key = '@JOB@' .. job_id
  if redis.call('EXISTS', key, '@RESULT@' .. job_id) > 0 then return 0 end
  redis.call('SET', key, payload, 'PX', math.max(1, math.floor(ttl_ms)))
  redis.call('ZADD', queue, math.floor(score_ms), job_id)
  return 1
end
-- A follow whose poll job is gone (neither stored nor queued: a Redis failure lost it)
-- gets it back, due now, under the same job id: the fence and the generation stay.
local function heal(follow, payload, now, grace)
  local f = redis.call('HMGET', follow, 'job', 'queue')
  if redis.call('EXISTS', '@JOB@' .. f[1]) == 1 or redis.call('ZSCORE', f[2], f[1]) then
    return 0
  end
  enqueue(f[1], payload, f[2], now * 1000, grace * 1000)
  redis.call('HSET', follow, 'due', tostring(now), 'running', 0, 'nudged', 0)
  redis.call('EXPIRE', follow, grace)
  return 1
end
""".replace("@JOB@", job_key_prefix).replace("@RESULT@", result_key_prefix)

# KEYS: follow hash, generation counter. ARGV: execution id, now, poll job, queue,
# handler, download dir, poll_interval, max_poll_interval, factor, deadline ('' none),
# timeout ('' none), grace seconds, generation ttl, the follower's trace context (JSON,
# '' without tracing). Returns the generation, or 0 when the execution is followed
# already (nothing changes), -1 when it is but its poll job was lost (queued again).
FOLLOW = (
    _ENQUEUE
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return -heal(KEYS[1], ARGV[3], tonumber(ARGV[2]), tonumber(ARGV[12]))
end
local generation = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[13])
local job = 'aiotlink:poll:' .. ARGV[1] .. ':' .. generation .. ':0'
local now = tonumber(ARGV[2])
redis.call('HSET', KEYS[1], 'gen', generation, 'seq', 0, 'job', job, 'queue', ARGV[4],
  'handler', ARGV[5], 'download', ARGV[6], 'pi', ARGV[7], 'mpi', ARGV[8], 'factor', ARGV[9],
  'deadline', ARGV[10], 'timeout', ARGV[11], 'interval', ARGV[7], 'due', ARGV[2],
  'nudge_at', 0, 'started', 0, 'running', 0, 'nudged', 0, 'status', '', 'polls', 0,
  'trace', ARGV[14])
enqueue(job, ARGV[3], ARGV[4], now * 1000, tonumber(ARGV[12]) * 1000)
redis.call('EXPIRE', KEYS[1], ARGV[12])
return generation
"""
)

BEGIN_FIELDS = (
    "gen",
    "queue",
    "handler",
    "download",
    "pi",
    "mpi",
    "factor",
    "interval",
    "deadline",
    "timeout",
    "status",
    "trace",
)
# KEYS: follow hash. ARGV: this poll's job id, now. Marks the lookup in flight and
# returns BEGIN_FIELDS (and the last body seen, once the deadline has passed), or nil
# for a poll that is not the follow's (stale: do nothing).
BEGIN = """
if redis.call('HGET', KEYS[1], 'job') ~= ARGV[1] then return false end
redis.call('HSET', KEYS[1], 'running', 1, 'started', ARGV[2], 'nudged', 0)
redis.call('HINCRBY', KEYS[1], 'polls', 1)
local row = redis.call('HMGET', KEYS[1], @FIELDS@)
if row[9] ~= '' and tonumber(ARGV[2]) >= tonumber(row[9]) then
  table.insert(row, redis.call('HGET', KEYS[1], 'body') or '')
end
return row
""".replace("@FIELDS@", ", ".join(f"'{field}'" for field in BEGIN_FIELDS))

# KEYS: follow hash. ARGV: this poll's job id, now, the next interval, due, the nudge
# floor, a new status ('' unchanged), its body, the next poll job, grace seconds,
# execution id, generation ttl (refreshed here: a follow may outlive it). Schedules
# the next poll (as soon as the nudge floor allows if nudged during the lookup; never
# past the deadline) and returns its due time, or nil when the poll is stale.
RESCHEDULE = (
    _ENQUEUE
    + """
if redis.call('HGET', KEYS[1], 'job') ~= ARGV[1] then return false end
local f = redis.call('HMGET', KEYS[1], 'nudged', 'deadline', 'gen', 'queue')
local due = tonumber(ARGV[4])
if f[1] == '1' then due = tonumber(ARGV[5]) end
if f[2] ~= '' and due > tonumber(f[2]) then due = tonumber(f[2]) end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local job = 'aiotlink:poll:' .. ARGV[10] .. ':' .. f[3] .. ':' .. seq
redis.call('HSET', KEYS[1], 'job', job, 'interval', ARGV[3], 'due', tostring(due),
  'nudge_at', ARGV[5], 'running', 0, 'nudged', 0)
if ARGV[6] ~= '' then redis.call('HSET', KEYS[1], 'status', ARGV[6], 'body', ARGV[7]) end
local now = tonumber(ARGV[2])
local grace = tonumber(ARGV[9])
enqueue(job, ARGV[8], f[4], due * 1000, (math.max(due - now, 0) + grace) * 1000)
redis.call('EXPIRE', KEYS[1], math.ceil(math.max(due - now, 0) + grace))
redis.call('EXPIRE', 'aiotlink:generation:' .. ARGV[10], ARGV[11])
return tostring(due)
"""
)

# KEYS: follow hash. ARGV: this poll's job id, the delivery job id, its payload, now,
# grace seconds. Ends the follow and queues the delivery of its outcome, in one step;
# 0 when the poll is stale.
END = (
    _ENQUEUE
    + """
if redis.call('HGET', KEYS[1], 'job') ~= ARGV[1] then return 0 end
local queue = redis.call('HGET', KEYS[1], 'queue')
redis.call('DEL', KEYS[1])
enqueue(ARGV[2], ARGV[3], queue, tonumber(ARGV[4]) * 1000, tonumber(ARGV[5]) * 1000)
return 1
"""
)

# KEYS: follow hash. ARGV: now, '1' when the signal may mean the end (a terminal status
# or none), '0' for a status that is not terminal, a poll job's payload, grace seconds.
# Returns 0 when nobody follows the execution. A lost poll job is queued again, due
# now. A follow waits for the end only, so a non-terminal status costs nothing;
# otherwise the scheduled poll is brought forward to the nudge floor (never before the
# last Retry-After, nor within NUDGE_MIN_GAP of the last lookup), or, with a lookup in
# flight, the next poll will follow it as soon as that floor allows.
NUDGE = (
    _ENQUEUE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if heal(KEYS[1], ARGV[3], tonumber(ARGV[1]), tonumber(ARGV[4])) == 1 then return 1 end
if ARGV[2] == '0' then return 1 end
local f = redis.call('HMGET', KEYS[1], 'running', 'nudge_at', 'due', 'job', 'queue')
if f[1] == '1' then
  redis.call('HSET', KEYS[1], 'nudged', 1)
  return 1
end
local sooner = math.max(tonumber(ARGV[1]), tonumber(f[2]))
if sooner < tonumber(f[3]) then
  redis.call('ZADD', f[5], 'XX', math.floor(sooner * 1000), f[4])
  redis.call('HSET', KEYS[1], 'due', tostring(sooner))
end
return 1
"""
)

# KEYS: dead letters, their order. ARGV: entry id, the letter, now, the most kept.
# Records it; returns the entries dropped, oldest first, to keep at most that many.
DEAD_LETTER = """
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], tonumber(ARGV[3]), ARGV[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[4])
local dropped = {}
if over > 0 then
  local popped = redis.call('ZPOPMIN', KEYS[2], over)
  for i = 1, #popped, 2 do
    redis.call('HDEL', KEYS[1], popped[i])
    table.insert(dropped, popped[i])
  end
end
return dropped
"""

# KEYS: dead letters, their order. ARGV: entry id, the entry as listed, job id, payload,
# queue, now, grace seconds. Takes the entry off and queues its delivery again, in one
# step: of replays racing for one entry, one wins (1), the others find it gone (0).
REPLAY = (
    _ENQUEUE
    + """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
enqueue(ARGV[3], ARGV[4], ARGV[5], tonumber(ARGV[6]) * 1000, tonumber(ARGV[7]) * 1000)
return 1
"""
)


class Scripts:
    """The scripts, registered on one Redis client (EVALSHA, loaded again if flushed)."""

    def __init__(self, redis: ArqRedis) -> None:
        self.follow: AsyncScript = redis.register_script(FOLLOW)
        self.begin: AsyncScript = redis.register_script(BEGIN)
        self.reschedule: AsyncScript = redis.register_script(RESCHEDULE)
        self.end: AsyncScript = redis.register_script(END)
        self.nudge: AsyncScript = redis.register_script(NUDGE)
        self.replay: AsyncScript = redis.register_script(REPLAY)
        self.dead_letter: AsyncScript = redis.register_script(DEAD_LETTER)


_SCRIPTS: dict[int, tuple[Any, Scripts]] = {}


def scripts(redis: ArqRedis) -> Scripts:
    """The scripts for ``redis``, registered once per client."""
    known = _SCRIPTS.get(id(redis))
    if known is not None and known[0] is redis:
        return known[1]
    if len(_SCRIPTS) > 64:  # clients come and go in tests: keep the table small
        _SCRIPTS.clear()
    made = Scripts(redis)
    _SCRIPTS[id(redis)] = (redis, made)
    return made


def text(value: bytes | str | None) -> str:
    """A Redis reply as text."""
    if value is None:
        return ""
    return value.decode() if isinstance(value, bytes) else value


def seconds(value: str) -> float | None:
    """A stored number of seconds, or ``None`` for ''."""
    return None if value == "" else float(value)


def encode(data: dict[str, Any]) -> str:
    """A delivery's payload or a dead letter, as stored (JSON).

    The execution's body goes last: arq logs the first 80 characters of a job's
    arguments, and the body holds the execution's token.
    """
    ordered = {key: value for key, value in data.items() if key != "body"}
    if "body" in data:
        ordered["body"] = data["body"]
    return json.dumps(ordered, separators=(",", ":"))
