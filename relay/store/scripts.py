"""The Lua scripts of the Redis store, and how they are run.

Each change to a relay's allocations (allocate, free, mark bound) is one
script on one slot (the relay's hash tag), so it is atomic however many
relays and operators call at once. The key layout they work on is in
:mod:`relay.store.redis`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

# KEYS: lamport, endpoints, pairs, cursor
# ARGV: sorted raw pair (64 bytes), allocation time (8 bytes), max VNI, channel
# Returns {0, vni, record} for the pair's unbound allocation, {1, vni, record}
# or {1, vni, record, replaced vni, replaced record} for a new one, {2} when full.
ALLOCATE = """
local lamport_key, endpoints, pairs, cursor_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local pair, allocated_at, max_vni, channel = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]

local result = {1}
local old_field = redis.call('HGET', pairs, pair)
if old_field then
    local old = redis.call('HGET', endpoints, old_field)
    local old_vni = struct.unpack('>I3', old_field)
    if string.byte(old, 81) == 0 then
        return {0, old_vni, old}
    end
    redis.call('HDEL', endpoints, old_field)
    redis.call('HDEL', pairs, pair)
    redis.call('PUBLISH', channel,
        string.format('free %d %d', old_vni, struct.unpack('>I8', old)))
    result[4], result[5] = old_vni, old
end

if redis.call('HLEN', endpoints) >= max_vni then
    return {2}
end
local vni = tonumber(redis.call('GET', cursor_key) or '1')
if vni < 1 or vni > max_vni then
    vni = 1
end
local field = struct.pack('>I3', vni)
local tried = 1
while redis.call('HEXISTS', endpoints, field) == 1 do
    if tried >= max_vni then
        return {2}
    end
    vni = vni % max_vni + 1
    field = struct.pack('>I3', vni)
    tried = tried + 1
end
redis.call('SET', cursor_key, vni % max_vni + 1)

local lamport = redis.call('INCR', lamport_key)
local record = struct.pack('>I8', lamport) .. pair .. allocated_at .. '\\0'
redis.call('HSET', endpoints, field, record)
redis.call('HSET', pairs, pair, field)
redis.call('PUBLISH', channel, string.format('alloc %d %d', vni, lamport))
result[2], result[3] = vni, record
return result
"""

# KEYS: endpoints, pairs
# ARGV: channel, then for each endpoint: VNI (3 bytes), LamportID (8 bytes)
# Returns 1 for each endpoint freed, 0 for each already gone or replaced; each
# free is announced on the channel.
FREE = """
local endpoints, pairs, channel = KEYS[1], KEYS[2], ARGV[1]
local done = {}
for i = 2, #ARGV, 2 do
    local record = redis.call('HGET', endpoints, ARGV[i])
    if record and string.sub(record, 1, 8) == ARGV[i + 1] then
        redis.call('HDEL', endpoints, ARGV[i])
        redis.call('HDEL', pairs, string.sub(record, 9, 72))
        redis.call('PUBLISH', channel, string.format('free %d %d',
            struct.unpack('>I3', ARGV[i]), struct.unpack('>I8', ARGV[i + 1])))
        done[#done + 1] = 1
    else
        done[#done + 1] = 0
    end
end
return done
"""

# KEYS: endpoints
# ARGV: for each endpoint: VNI (3 bytes), LamportID (8 bytes)
# Returns 1 for each endpoint marked (or marked already), 0 for each that is gone.
# Announces nothing: no one acts on a bound mark, and every subscribed relay
# process would pay for reading one per endpoint.
MARK_BOUND = """
local endpoints = KEYS[1]
local done = {}
for i = 1, #ARGV, 2 do
    local record = redis.call('HGET', endpoints, ARGV[i])
    if record and string.sub(record, 1, 8) == ARGV[i + 1] then
        if string.byte(record, 81) == 0 then
            redis.call('HSET', endpoints, ARGV[i], string.sub(record, 1, 80) .. '\\1')
        end
        done[#done + 1] = 1
    else
        done[#done + 1] = 0
    end
end
return done
"""

# KEYS: registry
# ARGV: relay name, time to live (ms), JSON record
REGISTER = """
local now = redis.call('TIME')
local expires = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d ', expires) .. ARGV[3])
"""

# KEYS: registry
# Returns {seconds, microseconds, {name, value, ...}}: the registry and the
# clock that judges its heartbeats, read on the one node that holds it.
RELAYS = """
local now = redis.call('TIME')
return {now[1], now[2], redis.call('HGETALL', KEYS[1])}
"""

# KEYS: endpoints, then every other key of the relay
# Returns {endpoint count, bytes used by the keys}.
MEMORY = """
local used = 0
for _, key in ipairs(KEYS) do
    used = used + (redis.call('MEMORY', 'USAGE', key, 'SAMPLES', 0) or 0)
end
return {redis.call('HLEN', KEYS[1]), used}
"""


class Script:
    """A Lua script run by its SHA1, and sent whole (EVAL) to a server that lacks it.

    EVAL goes where the keys are. redis-py's own fallback (SCRIPT LOAD) goes
    to every primary of a cluster instead, and fails while any one is down.
    """

    def __init__(self, client: aioredis.Redis | RedisCluster, source: str) -> None:
        self._client = client
        self._source = source
        self._sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(self, keys: Sequence[str], args: Sequence[Any] = ()) -> Any:
        try:
            return await self._client.evalsha(self._sha, len(keys), *keys, *args)
        except redis_errors.NoScriptError:
            return await self._client.eval(self._source, len(keys), *keys, *args)
