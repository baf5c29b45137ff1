"""The Lua scripts behind shared breaker, bucket, cooldown and drain state.

Every change to a provider's shared state is one script: Redis runs it atomically,
so two replicas can never both take the last token or the last half-open probe slot.

Keys per provider (``P`` is the configured prefix, ``N`` the provider name; the
``{N}`` hash tag keeps one provider's keys in one Redis Cluster slot)::

    P p:{N}:br      hash: state (closed|open|forced_open), open_until, failures,
                    window_start, cooldown_until, drained, drain_reason
    P p:{N}:probes  sorted set: half-open probe ids scored by their expiry
    P p:{N}:tat     GCRA theoretical arrival time

Time: every script reads Redis ``TIME`` (microseconds), so all replicas share one
clock and a replica's skew never matters. ``ARGV[1]`` may carry an explicit
``now`` instead; only tests use it, to drive the arithmetic exactly.

Every script returns a *snapshot* of the provider as JSON and a state-changing one
also ``PUBLISH``\\es it, so replicas update their local view without a read. The
snapshot carries durations relative to the script's ``now`` (``open_in``,
``cooldown_in``, ``tat_in``), never absolute timestamps: cjson encodes numbers with
14 significant digits, too few for microsecond Unix times, and relative values
need no clock agreement on the receiving side.

Numbers written back with ``redis.call`` are formatted with ``%.0f`` for the same
reason (Lua would print them with 14 significant digits).

Common arguments: ``ARGV[1]`` now override (``""`` for Redis ``TIME``), ``ARGV[2]``
provider name, ``ARGV[3]`` pub/sub channel; script arguments follow.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "ADMIT",
    "COOLDOWN",
    "DRAIN",
    "FORCE",
    "RECORD_FAILURE",
    "RECORD_SUCCESS",
    "RELEASE_PROBE",
    "SNAPSHOT",
]

_PRELUDE: Final = r"""
local br, probes, bucket = KEYS[1], KEYS[2], KEYS[3]
local function now_us()
  if ARGV[1] ~= '' then return tonumber(ARGV[1]) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end
local function fmt(x) return string.format('%.0f', x) end
local function num(x) return tonumber(x) or 0 end
local function snap(now)
  local h = redis.call('HMGET', br, 'state', 'open_until', 'failures', 'cooldown_until',
                       'drained', 'drain_reason')
  local tat = num(redis.call('GET', bucket))
  local cd = num(h[4]) - now
  if cd < 0 then cd = 0 end
  local ti = tat - now
  if ti < 0 then ti = 0 end
  return cjson.encode({
    p = ARGV[2],
    state = h[1] or 'closed',
    open_in = num(h[2]) - now,
    failures = num(h[3]),
    cooldown_in = cd,
    drained = h[5] == '1',
    reason = h[6] or '',
    tat_in = ti,
    probes = redis.call('ZCOUNT', probes, now, '+inf'),
  })
end
local function publish(s) redis.call('PUBLISH', ARGV[3], s) end
"""

#: Admission: breaker, cooldown, half-open probe slot and one GCRA token, atomically.
#: ARGV[4] max probes, ARGV[5] probe TTL (µs), ARGV[6] emission interval T (µs),
#: ARGV[7] burst (tokens), ARGV[8] probe id. Returns ``{admitted, reason, snapshot}``;
#: ``reason`` is ``probe`` for an admitted half-open trial call.
ADMIT: Final = (
    _PRELUDE
    + r"""
local now = now_us()
local h = redis.call('HMGET', br, 'state', 'open_until', 'cooldown_until', 'drained')
local state = h[1] or 'closed'
if state == 'forced_open' then return {0, 'breaker_open', snap(now)} end
local probe = 0
if state == 'open' then
  if num(h[2]) > now then return {0, 'breaker_open', snap(now)} end
  redis.call('ZREMRANGEBYSCORE', probes, '-inf', fmt(now))
  if redis.call('ZCARD', probes) >= tonumber(ARGV[4]) then
    return {0, 'probe_busy', snap(now)}
  end
  probe = 1
end
if num(h[3]) > now then return {0, 'cooling_down', snap(now)} end
-- GCRA: a request is allowed while the theoretical arrival time stays within
-- burst * T of now; each request pushes it T further.
local T = tonumber(ARGV[6])
local tat = num(redis.call('GET', bucket))
if tat < now then tat = now end
local new_tat = tat + T
if new_tat - now > T * tonumber(ARGV[7]) then return {0, 'rate_limited', snap(now)} end
redis.call('SET', bucket, fmt(new_tat), 'PX', math.ceil((new_tat - now) / 1000) + 1000)
if probe == 1 then
  local ttl = tonumber(ARGV[5])
  redis.call('ZADD', probes, fmt(now + ttl), ARGV[8])
  redis.call('PEXPIRE', probes, math.ceil(ttl / 1000) + 1000)
  return {1, 'probe', snap(now)}
end
return {1, '', snap(now)}
"""
)

#: A provider failure. ARGV[4] fail_max, ARGV[5] reset timeout (µs), ARGV[6] failure
#: window (µs), ARGV[7] probe id or ``""``. Returns ``{transitioned, snapshot}``.
RECORD_FAILURE: Final = (
    _PRELUDE
    + r"""
local now = now_us()
if ARGV[7] ~= '' then redis.call('ZREM', probes, ARGV[7]) end
local h = redis.call('HMGET', br, 'state', 'open_until', 'failures', 'window_start')
local state = h[1] or 'closed'
local reset = tonumber(ARGV[5])
if state == 'forced_open' then return {0, snap(now)} end
if state == 'open' then
  if num(h[2]) > now then return {0, snap(now)} end
  -- half-open: a failed trial reopens the breaker with a fresh timeout
  redis.call('HSET', br, 'state', 'open', 'open_until', fmt(now + reset))
  local s = snap(now)
  publish(s)
  return {1, s}
end
local failures, start = num(h[3]), num(h[4])
if now - start > tonumber(ARGV[6]) then failures = 0; start = now end
failures = failures + 1
if failures >= tonumber(ARGV[4]) then
  redis.call('HSET', br, 'state', 'open', 'open_until', fmt(now + reset),
             'failures', failures, 'window_start', fmt(start))
  local s = snap(now)
  publish(s)
  return {1, s}
end
redis.call('HSET', br, 'failures', failures, 'window_start', fmt(start))
return {0, snap(now)}
"""
)

#: A success. ARGV[4] probe id or ``""``. A success in half-open closes the breaker;
#: one while still open (an attempt admitted before it opened) changes nothing.
RECORD_SUCCESS: Final = (
    _PRELUDE
    + r"""
local now = now_us()
if ARGV[4] ~= '' then redis.call('ZREM', probes, ARGV[4]) end
local h = redis.call('HMGET', br, 'state', 'open_until', 'failures')
local state = h[1] or 'closed'
if state == 'open' and num(h[2]) <= now then
  redis.call('HSET', br, 'state', 'closed', 'failures', 0, 'open_until', 0)
  redis.call('DEL', probes)
  local s = snap(now)
  publish(s)
  return {1, s}
end
if state == 'closed' and num(h[3]) > 0 then redis.call('HSET', br, 'failures', 0) end
return {0, snap(now)}
"""
)

#: A neutral outcome (cancellation, the caller's fault, a 429): give the probe slot back.
RELEASE_PROBE: Final = (
    _PRELUDE
    + r"""
local now = now_us()
redis.call('ZREM', probes, ARGV[4])
return {0, snap(now)}
"""
)

#: Operator control. ARGV[4] ``open`` (hold open) or ``closed`` (close, clear counts).
FORCE: Final = (
    _PRELUDE
    + r"""
local now = now_us()
local state = 'closed'
if ARGV[4] == 'open' then state = 'forced_open' end
redis.call('HSET', br, 'state', state, 'failures', 0, 'open_until', 0)
redis.call('DEL', probes)
local s = snap(now)
publish(s)
return {1, s}
"""
)

#: A ``Retry-After`` cooldown. ARGV[4] seconds as µs, or ``clear``. Extends, never shortens.
COOLDOWN: Final = (
    _PRELUDE
    + r"""
local now = now_us()
if ARGV[4] == 'clear' then
  redis.call('HSET', br, 'cooldown_until', 0)
else
  local until_ = now + tonumber(ARGV[4])
  if until_ <= num(redis.call('HGET', br, 'cooldown_until')) then return {0, snap(now)} end
  redis.call('HSET', br, 'cooldown_until', fmt(until_))
end
local s = snap(now)
publish(s)
return {1, s}
"""
)

#: An operator drain. ARGV[4] ``1`` or ``0``, ARGV[5] reason.
DRAIN: Final = (
    _PRELUDE
    + r"""
local now = now_us()
redis.call('HSET', br, 'drained', ARGV[4], 'drain_reason', ARGV[5])
local s = snap(now)
publish(s)
return {1, s}
"""
)

#: Read-only: the provider's snapshot (the polling backstop and resynchronization).
SNAPSHOT: Final = (
    _PRELUDE
    + r"""
return {0, snap(now_us())}
"""
)
