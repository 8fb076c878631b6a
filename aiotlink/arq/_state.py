"""What durable following keeps in Redis, and the scripts that change it atomically.

Each followed execution is one hash, ``aiotlink:follow:<id>``: its generation (a
counter per execution, so that a later follow of the same id is told apart from an
earlier one), its phase (``poll`` while it is looked up, ``deliver`` once it ended and
its outcome waits for ``on_terminal``), its schedule and deadline, and the claim token
of the sweep that holds it. When it is next due lives in a sorted set of the
follow's queue, sharded by a stable hash of the id: ``aiotlink:due:<queue>:<shard>``
(member: the id, score: the due time).

Work is done by one kind of arq job, the sweep of one shard (``aiotlink_sweep``): it
claims a batch of due members at once (a new token in each hash, its score pushed to
the end of a lease, so that a killed worker's claims come due again by themselves),
looks them up or runs their handlers concurrently, and writes the outcomes back a few
at a time in one script, which does nothing for a member whose token is no longer the
sweep's (a stale claim: the fence). Within a time budget it claims again while members
are due, and stays for those due within a fraction of a second (taking over the job
armed for them). The number of arq jobs so grows with the batches, not the executions
(benchmarks/NOTES.md, "Durable following").

Each shard has at most one sweep armed (queued, not yet started) at a time, named in
``aiotlink:armed:<queue>:<shard>``: every script that makes a member due sooner arms
it no later than that (arq's job id de-duplication is not enough: a running sweep's
job id is taken while it runs), and arms it again when the job was lost (Redis lost
it, or its worker died before it claimed). A shard whose set is empty has no sweep
armed: nothing is left behind once everything is done.

The keys are computed inside the scripts, so this needs one Redis, not a cluster.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from arq.constants import expires_extra_ms, job_key_prefix, result_key_prefix
from arq.jobs import serialize_job

if TYPE_CHECKING:
    from arq.connections import ArqRedis
    from redis.commands.core import AsyncScript

SWEEP_FUNCTION = "aiotlink_sweep"
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
# Shards per queue: each has its own due set and sweeps, so that several workers
# share the load (and the sweeps of a backlog run side by side).
SHARDS = 16
# Members one claim takes at most: the lookups (or handlers) a sweep runs at once.
BATCH = 100
# A sweep claims again while members are due, for this long at most (seconds): a huge
# backlog is worked off by many jobs, never held by one.
SWEEP_BUDGET = 2.0
# Within that budget, a sweep stays for members due within this long (seconds) rather
# than end (a dense shard is then one job for its budget, not one per due time).
STAY_SECONDS = 0.25
# A claim outlives its lookup's or handler's own limit by this much (seconds): then it
# is due again, for another worker (its own was killed, or lost Redis).
LEASE_MARGIN = 10.0
# An armed sweep still not started this long (seconds) after it was due is taken as
# lost (its worker died between taking the job and its first claim): another is armed.
ARM_STALE_SECONDS = 10.0
# How long a shard's armed pointer (and its job counter) is kept once idle.
ARM_TTL_SECONDS = GENERATION_TTL_SECONDS
FOLLOW_PREFIX = "aiotlink:follow:"
# A dead letter replayed is delivered as a member of its own: the execution may be
# followed again meanwhile, and that follow's hash is not to be touched.
REPLAY_PREFIX = "replay:"


def follow_key(member: str) -> str:
    """The hash of a due member: the follow of an execution id, or a replayed delivery."""
    return f"{FOLLOW_PREFIX}{member}"


def generation_key(execution_id: str) -> str:
    """The counter of the follows of ``execution_id``, one per follow."""
    return f"aiotlink:generation:{execution_id}"


def shard_of(member: str) -> int:
    """The shard of a member: a hash that every process computes alike (not ``hash()``)."""
    return zlib.crc32(member.encode()) % SHARDS


def due_key(queue: str, shard: int) -> str:
    """The sorted set of the members of ``shard`` on ``queue``, scored by due time."""
    return f"aiotlink:due:{queue}:{shard}"


def armed_key(queue: str, shard: int) -> str:
    """The hash that names the sweep armed for ``shard`` on ``queue``, and counts them."""
    return f"aiotlink:armed:{queue}:{shard}"


def parse_due_key(key: str) -> tuple[str, int] | None:
    """The queue and shard of a due set's key, or ``None`` for another key."""
    prefix = "aiotlink:due:"
    queue, _, shard = key[len(prefix) :].rpartition(":")
    if not key.startswith(prefix) or not queue or not shard.isdigit():
        return None
    return queue, int(shard)


def job_payload(redis: ArqRedis, function: str, *args: Any) -> bytes:
    """A job as arq stores it, in the pool's serializer (pickle by default)."""
    return serialize_job(
        function, args, {}, None, int(time.time() * 1000), serializer=redis.job_serializer
    )


def shard_args(redis: ArqRedis, queue: str, shard: int) -> list[Any]:
    """The arguments every script that arms a sweep takes first: see _ARM."""
    return [queue, shard, job_payload(redis, SWEEP_FUNCTION, queue, shard), STATE_GRACE_SECONDS]


# Lua functions the scripts share. `arm` and `settle` take the arguments of shard_args
# as `s` = {queue, shard, sweep job payload, grace seconds}.
_ARM = (
    """
local function enqueue(job_id, payload, queue, score_ms, ttl_ms)
  local key = '@JOB@' .. job_id
  if redis.call('EXISTS', key, '@RESULT@' .. job_id) > 0 then return 0 end
  redis.call('SET', key, payload, 'PX', math.max(1, math.floor(ttl_ms)))
  redis.call('ZADD', queue, math.floor(score_ms), job_id)
  return 1
end
-- Arms the shard's sweep to run at `at` or sooner: the one armed already if it is
-- alive, due by then and not stale; moved up if it is alive but later; else a new one.
local function arm(armed, s, at, now)
  local queue = s[1]
  local a = redis.call('HMGET', armed, 'job', 'at')
  if a[1] and redis.call('EXISTS', '@JOB@' .. a[1]) == 1 and redis.call('ZSCORE', queue, a[1]) then
    local armed_at = tonumber(a[2])
    if armed_at <= at and armed_at > now - @STALE@ then return 0 end
    if armed_at > at then
      redis.call('ZADD', queue, 'XX', math.floor(at * 1000), a[1])
      redis.call('HSET', armed, 'at', tostring(at))
      return 1
    end
  end
  local seq = redis.call('HINCRBY', armed, 'seq', 1)
  local job = 'aiotlink:sweep:' .. queue .. ':' .. s[2] .. ':' .. seq
  enqueue(job, s[3], queue, at * 1000, (math.max(at - now, 0) + tonumber(s[4])) * 1000)
  redis.call('HSET', armed, 'job', job, 'at', tostring(at))
  redis.call('EXPIRE', armed, @ARM_TTL@)
  return 1
end
-- Arms the sweep for the earliest member due, or disarms it when the set is empty.
-- Returns the earliest due time ('' for none).
local function settle(due, armed, s, now)
  local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
  if #first == 0 then
    local job = redis.call('HGET', armed, 'job')
    if job then
      redis.call('ZREM', s[1], job)
      redis.call('DEL', '@JOB@' .. job)
      redis.call('HDEL', armed, 'job', 'at')
    end
    return ''
  end
  arm(armed, s, tonumber(first[2]), now)
  return first[2]
end
-- A member whose hash is there but not its due entry (a Redis failure lost it) is due
-- again now, unclaimed: the generation and the rest of its state stay.
local function heal(key, due, member, now, grace)
  if redis.call('ZSCORE', due, member) then return 0 end
  redis.call('ZADD', due, now, member)
  redis.call('HSET', key, 'claim', '', 'running', 0, 'nudged', 0, 'due', tostring(now))
  redis.call('EXPIRE', key, grace)
  return 1
end
""".replace("@JOB@", job_key_prefix)
    .replace("@RESULT@", result_key_prefix)
    .replace("@STALE@", repr(ARM_STALE_SECONDS))
    .replace("@ARM_TTL@", str(ARM_TTL_SECONDS))
)

# What the scripts of a sweep (CLAIM, WRITE_BACK) begin with: shard_args, then now.
_SWEEP = (
    _ARM
    + """
local s = {ARGV[1], ARGV[2], ARGV[3], ARGV[4]}
local now = tonumber(ARGV[5])
local grace = tonumber(s[4])
"""
)

# KEYS: follow hash, generation counter, due set, armed. ARGV: shard_args (4), execution
# id, now, handler, download dir, poll_interval, max_poll_interval, factor, deadline
# ('' none), timeout ('' none), generation ttl, the follower's trace context (JSON, ''
# without tracing). Returns the generation, or 0 when the execution is followed already
# (nothing changes), -1 when it is but had lost its due entry (due again now).
FOLLOW = (
    _ARM
    + """
local s = {ARGV[1], ARGV[2], ARGV[3], ARGV[4]}
local member = ARGV[5]
local now = tonumber(ARGV[6])
if redis.call('EXISTS', KEYS[1]) == 1 then
  local healed = heal(KEYS[1], KEYS[3], member, now, tonumber(s[4]))
  arm(KEYS[4], s, tonumber(redis.call('ZSCORE', KEYS[3], member)), now)
  return -healed
end
local generation = redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[14])
redis.call('HSET', KEYS[1], 'gen', generation, 'phase', 'poll', 'claim', '', 'queue', s[1],
  'handler', ARGV[7], 'download', ARGV[8], 'pi', ARGV[9], 'mpi', ARGV[10], 'factor', ARGV[11],
  'deadline', ARGV[12], 'timeout', ARGV[13], 'interval', ARGV[9], 'due', ARGV[6],
  'nudge_at', 0, 'started', 0, 'running', 0, 'nudged', 0, 'status', '', 'polls', 0,
  'trace', ARGV[15])
redis.call('EXPIRE', KEYS[1], s[4])
redis.call('ZADD', KEYS[3], now, member)
arm(KEYS[4], s, now, now)
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
# KEYS: due set, armed. ARGV: shard_args (4), now, the most members to claim, the claim
# token, the lease of a poll and of a delivery (seconds), this sweep's job id, '1' when
# the sweep stayed on for what came due. Claims the members due (a poll: marked in
# flight), and returns {the earliest due time left ('' none), the claimed}, each
# {member, 'poll', BEGIN_FIELDS (and the last body seen, once the deadline has
# passed)} or {member, 'deliver', payload}. A sweep's first claim takes its own job off
# the armed pointer: from then on a new one is armed for what stays due (at once if the
# batch was full, so that other workers share a backlog).
CLAIM = (
    _SWEEP
    + """
local a = redis.call('HMGET', KEYS[2], 'job', 'at')
if a[1] == ARGV[10] then
  redis.call('HDEL', KEYS[2], 'job', 'at')
elseif a[1] and ARGV[11] == '1' and tonumber(a[2]) <= now then
  -- A sweep that stayed for what comes due takes over the job armed for it: arq
  -- skips a job no longer queued. (A sweep working off a backlog leaves it: it is
  -- the help of another worker.)
  redis.call('ZREM', s[1], a[1])
  redis.call('DEL', '@JOB@' .. a[1])
  redis.call('HDEL', KEYS[2], 'job', 'at')
end
local claimed = {}
for _, member in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, ARGV[6])) do
  local key = '@PREFIX@' .. member
  local phase = redis.call('HGET', key, 'phase')
  if not phase then
    redis.call('ZREM', KEYS[1], member)  -- its state expired: nothing is left to do
  else
    local lease = tonumber(ARGV[8])
    if phase == 'deliver' then lease = tonumber(ARGV[9]) end
    redis.call('ZADD', KEYS[1], now + lease, member)
    redis.call('HSET', key, 'claim', ARGV[7])
    redis.call('EXPIRE', key, math.ceil(lease + grace))
    if phase == 'deliver' then
      table.insert(claimed, {member, phase, redis.call('HGET', key, 'payload')})
    else
      redis.call('HSET', key, 'running', 1, 'started', ARGV[5], 'nudged', 0)
      redis.call('HINCRBY', key, 'polls', 1)
      local row = redis.call('HMGET', key, @FIELDS@)
      -- tonumber(x or ''): nil for a field missing or '' (no deadline), never an error
      -- that would stop the claim of the whole shard.
      local deadline = tonumber(row[9] or '')
      if deadline and now >= deadline then
        table.insert(row, redis.call('HGET', key, 'body') or '')
      end
      table.insert(claimed, {member, phase, row})
    end
  end
end
return {settle(KEYS[1], KEYS[2], s, now), claimed}
""".replace("@FIELDS@", ", ".join(f"'{field}'" for field in BEGIN_FIELDS))
    .replace("@PREFIX@", FOLLOW_PREFIX)
    .replace("@JOB@", job_key_prefix)
)

# KEYS: due set, armed, dead letters, their order. ARGV: shard_args (4), now, the claim
# token, the outcomes (JSON, one list per member, see below), generation ttl, the most
# dead letters kept. Writes back every outcome of a sweep's batch at once, each only
# while the member's claim is still this token (a stale claimer's outcome is dropped),
# then arms the sweep for what is due next. Outcomes:
#   {member, 'poll', interval, due, nudge floor, new status ('' unchanged), its body}:
#       the next poll (as soon as the nudge floor allows if nudged during the lookup;
#       never past the deadline); the generation's TTL is refreshed (a follow may
#       outlive it);
#   {member, 'end', payload}: the follow ended; its outcome is due for delivery now;
#   {member, 'retry', payload, due}: a failed delivery, to be run again at `due`;
#   {member, 'release'}: given back unfinished (a shutdown), due again now;
#   {member, 'done'}: delivered; {member, 'dead', entry, letter}: a dead letter.
# Returns {the earliest due time left ('' none), the dead letters dropped, oldest first}.
WRITE_BACK = (
    _SWEEP
    + """
local dropped = {}
for _, o in ipairs(cjson.decode(ARGV[7])) do
  local member = o[1]
  local key = '@PREFIX@' .. member
  if redis.call('HGET', key, 'claim') == ARGV[6] then
    local kind = o[2]
    if kind == 'poll' then
      local f = redis.call('HMGET', key, 'nudged', 'deadline')
      local due = tonumber(o[4])
      if f[1] == '1' then due = tonumber(o[5]) end
      local deadline = tonumber(f[2] or '')
      if deadline and due > deadline then due = deadline end
      redis.call('HSET', key, 'claim', '', 'interval', o[3], 'due', tostring(due),
        'nudge_at', o[5], 'running', 0, 'nudged', 0)
      if o[6] ~= '' then redis.call('HSET', key, 'status', o[6], 'body', o[7]) end
      redis.call('ZADD', KEYS[1], due, member)
      redis.call('EXPIRE', key, math.ceil(math.max(due - now, 0) + grace))
      redis.call('EXPIRE', 'aiotlink:generation:' .. member, ARGV[8])
    elseif kind == 'end' then
      redis.call('HSET', key, 'claim', '', 'phase', 'deliver', 'payload', o[3], 'running', 0)
      redis.call('HDEL', key, 'body')
      redis.call('ZADD', KEYS[1], now, member)
      redis.call('EXPIRE', key, grace)
    elseif kind == 'retry' then
      local due = tonumber(o[4])
      redis.call('HSET', key, 'claim', '', 'payload', o[3])
      redis.call('ZADD', KEYS[1], due, member)
      redis.call('EXPIRE', key, math.ceil(math.max(due - now, 0) + grace))
    elseif kind == 'release' then
      redis.call('HSET', key, 'claim', '', 'running', 0)
      redis.call('ZADD', KEYS[1], now, member)
      redis.call('EXPIRE', key, grace)
    else
      if kind == 'dead' then
        for _, entry in ipairs(dead_letter(KEYS[3], KEYS[4], o[3], o[4], now, ARGV[9])) do
          table.insert(dropped, entry)
        end
      end
      redis.call('DEL', key)
      redis.call('ZREM', KEYS[1], member)
    end
  end
end
return {settle(KEYS[1], KEYS[2], s, now), dropped}
""".replace("@PREFIX@", FOLLOW_PREFIX)
)

# KEYS: follow hash, due set, armed. ARGV: shard_args (4), execution id, now, '1' when
# the signal may mean the end (a terminal status or none), '0' for a status that is not
# terminal. Returns 0 when nobody follows the execution. A lost due entry (or sweep) is
# made due (armed) again. A follow waits for the end only, so a non-terminal status
# costs nothing, and so does a nudge while its outcome waits for delivery; otherwise the
# next poll is brought forward to the nudge floor (never before the last Retry-After,
# nor within NUDGE_MIN_GAP of the last lookup), or, with a lookup in flight, the next
# poll will follow it as soon as that floor allows.
NUDGE = (
    _ARM
    + """
local s = {ARGV[1], ARGV[2], ARGV[3], ARGV[4]}
local member = ARGV[5]
local now = tonumber(ARGV[6])
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
-- Followed again meanwhile, on another queue (at once: it needs no nudge).
if redis.call('HGET', KEYS[1], 'queue') ~= s[1] then return 1 end
heal(KEYS[1], KEYS[2], member, now, tonumber(s[4]))
local f = redis.call('HMGET', KEYS[1], 'phase', 'running', 'nudge_at')
local due = tonumber(redis.call('ZSCORE', KEYS[2], member))
if ARGV[7] == '1' and f[1] == 'poll' then
  if f[2] == '1' then
    redis.call('HSET', KEYS[1], 'nudged', 1)
  else
    local sooner = math.max(now, tonumber(f[3] or '') or 0)
    if sooner < due then
      due = sooner
      redis.call('ZADD', KEYS[2], due, member)
      redis.call('HSET', KEYS[1], 'due', tostring(due))
    end
  end
end
arm(KEYS[3], s, due, now)
return 1
"""
)

# KEYS: due set, armed. ARGV: shard_args (4), now. Arms the shard's sweep for what is
# due (a worker's startup heals a sweep that Redis lost); the earliest due time or ''.
HEAL = (
    _ARM
    + """
return settle(KEYS[1], KEYS[2], {ARGV[1], ARGV[2], ARGV[3], ARGV[4]}, tonumber(ARGV[5]))
"""
)

_DEAD_LETTER = """
local function dead_letter(letters, order, entry, letter, now, most)
  redis.call('HSET', letters, entry, letter)
  redis.call('ZADD', order, now, entry)
  local over = redis.call('ZCARD', order) - tonumber(most)
  local dropped = {}
  if over > 0 then
    local popped = redis.call('ZPOPMIN', order, over)
    for i = 1, #popped, 2 do
      redis.call('HDEL', letters, popped[i])
      table.insert(dropped, popped[i])
    end
  end
  return dropped
end
"""
WRITE_BACK = _DEAD_LETTER + WRITE_BACK

# KEYS: dead letters, their order. ARGV: entry id, the letter, now, the most kept.
# Records it; returns the entries dropped, oldest first, to keep at most that many.
DEAD_LETTER = (
    _DEAD_LETTER
    + """
return dead_letter(KEYS[1], KEYS[2], ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4])
"""
)

# KEYS: dead letters, their order, the replay's hash, due set, armed. ARGV: shard_args
# (4), entry id, the entry as listed, the delivery's payload, now. Takes the entry off
# and makes its delivery due now, in one step: of replays racing for one entry, one
# wins (1), the others find it gone (0).
REPLAY = (
    _ARM
    + """
local s = {ARGV[1], ARGV[2], ARGV[3], ARGV[4]}
local now = tonumber(ARGV[8])
if redis.call('HGET', KEYS[1], ARGV[5]) ~= ARGV[6] then return 0 end
redis.call('HDEL', KEYS[1], ARGV[5])
redis.call('ZREM', KEYS[2], ARGV[5])
redis.call('HSET', KEYS[3], 'phase', 'deliver', 'claim', '', 'queue', s[1], 'payload', ARGV[7])
redis.call('EXPIRE', KEYS[3], s[4])
redis.call('ZADD', KEYS[4], now, '@REPLAY@' .. ARGV[5])
arm(KEYS[5], s, now, now)
return 1
""".replace("@REPLAY@", REPLAY_PREFIX)
)


class Scripts:
    """The scripts, registered on one Redis client (EVALSHA, loaded again if flushed)."""

    def __init__(self, redis: ArqRedis) -> None:
        self.follow: AsyncScript = redis.register_script(FOLLOW)
        self.claim: AsyncScript = redis.register_script(CLAIM)
        self.write_back: AsyncScript = redis.register_script(WRITE_BACK)
        self.nudge: AsyncScript = redis.register_script(NUDGE)
        self.heal: AsyncScript = redis.register_script(HEAL)
        self.replay: AsyncScript = redis.register_script(REPLAY)
        self.dead_letter: AsyncScript = redis.register_script(DEAD_LETTER)


_SCRIPTS: dict[int, tuple[Any, Scripts]] = {}
Made = TypeVar("Made")


def per_client(
    table: dict[int, tuple[Any, Made]], redis: ArqRedis, make: Callable[[ArqRedis], Made]
) -> Made:
    """What ``make(redis)`` makes, made once per client and kept in ``table``."""
    known = table.get(id(redis))
    if known is not None and known[0] is redis:
        return known[1]
    if len(table) > 64:  # clients come and go in tests: keep the table small
        table.clear()
    made = make(redis)
    table[id(redis)] = (redis, made)
    return made


def scripts(redis: ArqRedis) -> Scripts:
    """The scripts for ``redis``, registered once per client."""
    return per_client(_SCRIPTS, redis, Scripts)


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
