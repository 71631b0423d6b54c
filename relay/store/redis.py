"""The Redis store: allocations that outlive every process of the fleet.

The operator allocates, the relay pods serve and free, and any of them may die
at any moment; Redis keeps what must survive them. This module implements the
store interface (:mod:`relay.store.interface`) over Redis with exactly the
rules of :class:`relay.store.memory.MemoryStore`. Allocation, freeing and
binding are each one Lua script, so concurrent callers never hand out a VNI
twice and LamportIDs never repeat or go backwards.

Every key of one relay carries the relay's name as its hash tag, so each
script touches one slot and runs unchanged on Redis Cluster::

    <prefix>{<relay>}:lamport    string  the last LamportID issued
    <prefix>{<relay>}:cursor     string  where the search for a free VNI starts
    <prefix>{<relay>}:endpoints  hash    VNI (3 bytes) -> endpoint record (81 bytes)
    <prefix>{<relay>}:pairs      hash    both raw keys, sorted (64 bytes) -> VNI (3 bytes)
    <prefix>{<relay>}:changes    channel "alloc|free|bound <vni> <lamport>" per change
    <prefix>registry             hash    relay name -> "<expiry ms> <JSON record>"

VNIs and integers in records are big-endian. An endpoint record is the
LamportID (8 bytes), the two raw disco keys in sorted order (32 + 32), the
allocation time in milliseconds since the epoch (8, signed) and a bound flag
(1). Memory grows with allocated endpoints only: nothing is stored per free VNI.
Heartbeats expire by Redis's clock (``TIME``), so the clocks of the relays
and the operator need not agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import struct
from collections.abc import AsyncIterator, Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from relay.geneve import MAX_VNI
from relay.keys import DiscoPublicKey, sorted_pair
from relay.store.interface import (
    SUBSCRIBED,
    Allocation,
    AllocationResult,
    Change,
    RelayRecord,
    StoreError,
    StoreUnavailable,
    VNIExhausted,
)

_VNI = struct.Struct(">I")
_LAMPORT = struct.Struct(">Q")
_RECORD = struct.Struct(">Q32s32sq?")
_T = TypeVar("_T")

_UNAVAILABLE = (
    redis_errors.ConnectionError,  # also refused, reset, LOADING, bad password
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
)

# KEYS: lamport, endpoints, pairs, cursor
# ARGV: sorted raw pair (64 bytes), allocation time (8 bytes), max VNI, channel
# Returns {0, vni, record} for the pair's unbound allocation, {1, vni, record}
# or {1, vni, record, replaced vni, replaced record} for a new one, {2} when full.
_ALLOCATE = """
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
# ARGV: VNI (3 bytes), LamportID (8 bytes), channel, change message
_FREE = """
local endpoints, pairs = KEYS[1], KEYS[2]
local record = redis.call('HGET', endpoints, ARGV[1])
if not record or string.sub(record, 1, 8) ~= ARGV[2] then
    return 0
end
redis.call('HDEL', endpoints, ARGV[1])
redis.call('HDEL', pairs, string.sub(record, 9, 72))
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# KEYS: endpoints
# ARGV: VNI (3 bytes), LamportID (8 bytes), channel, change message
_MARK_BOUND = """
local endpoints = KEYS[1]
local record = redis.call('HGET', endpoints, ARGV[1])
if not record or string.sub(record, 1, 8) ~= ARGV[2] then
    return 0
end
if string.byte(record, 81) == 0 then
    redis.call('HSET', endpoints, ARGV[1], string.sub(record, 1, 80) .. '\\1')
end
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
"""

# KEYS: registry
# ARGV: relay name, time to live (ms), JSON record
_REGISTER = """
local now = redis.call('TIME')
local expires = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d ', expires) .. ARGV[3])
"""

_CHANGE_KINDS = frozenset({"alloc", "bound", "free"})


def _vni_field(vni: int) -> bytes:
    return _VNI.pack(vni)[1:]


def _check_options(prefix: str, max_vni: int) -> None:
    if not 1 <= max_vni <= MAX_VNI:
        raise ValueError(f"max_vni must be between 1 and {MAX_VNI}")
    if "{" in prefix or "}" in prefix:
        raise ValueError("the key prefix must not contain '{' or '}'")


def _parse_change(data: bytes) -> Change | None:
    kind, _, rest = data.decode(errors="replace").partition(" ")
    vni, _, lamport_id = rest.partition(" ")
    if kind not in _CHANGE_KINDS or not vni.isdigit() or not lamport_id.isdigit():
        return None
    return Change(kind, int(vni), int(lamport_id))


def _encode_relay(record: RelayRecord) -> str:
    return json.dumps(
        {
            "server_disco": str(record.server_disco),
            "addr_ports": list(record.addr_ports),
            "load": record.load,
            "capacity": record.capacity,
            "version": record.version,
            "heartbeat_at": record.heartbeat_at,
        },
        separators=(",", ":"),
    )


def _decode_relay(name: bytes, value: bytes, now_ms: int) -> RelayRecord:
    expires, _, text = value.partition(b" ")
    fields = json.loads(text)
    return RelayRecord(
        name=name.decode(),
        server_disco=DiscoPublicKey.parse(fields["server_disco"]),
        addr_ports=tuple(fields["addr_ports"]),
        load=fields["load"],
        capacity=fields["capacity"],
        version=fields["version"],
        heartbeat_at=fields["heartbeat_at"],
        alive=now_ms < int(expires),
    )


def _describe(pool: aioredis.ConnectionPool) -> str:
    """Where the pool connects, without credentials."""
    kwargs = pool.connection_kwargs
    if "path" in kwargs:
        return f"Redis at unix:{kwargs['path']}"
    return f"Redis at {kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}"


class RedisStore:
    """The store interface over Redis; one connection pool, closed by ``close``.

    Relay names must be non-empty and free of ``{`` and ``}``, as they are the
    keys' hash tag; ``max_vni`` caps VNIs at 1..max_vni per relay. A
    subscription (``changes``) idle for ``keepalive`` seconds is checked with a
    PING, so that a connection gone silent ends it rather than hanging it.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str = "relayfleet:",
        max_vni: int = MAX_VNI,
        keepalive: float = 10.0,
    ) -> None:
        _check_options(prefix, max_vni)
        self._client = client
        self._prefix = prefix
        self._max_vni = max_vni
        self._keepalive = keepalive
        self._reply_timeout = client.connection_pool.connection_kwargs.get("socket_timeout") or 2.0
        self._where = _describe(client.connection_pool)
        self._allocate = client.register_script(_ALLOCATE)
        self._free = client.register_script(_FREE)
        self._mark_bound = client.register_script(_MARK_BOUND)
        self._register = client.register_script(_REGISTER)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = "relayfleet:",
        max_vni: int = MAX_VNI,
        connect_timeout: float = 1.0,
        timeout: float = 2.0,
        keepalive: float = 10.0,
    ) -> RedisStore:
        """A store for ``redis://``, ``rediss://`` or ``unix://`` URLs, as redis-py reads them.

        Password, user and database come from the URL (``redis://:pw@host:6379/2``);
        so do TLS files (``rediss://host?ssl_ca_certs=/ca.pem``) and timeouts,
        which override ``connect_timeout`` and ``timeout`` (seconds). Nothing
        connects until the first call.
        """
        _check_options(prefix, max_vni)
        client = aioredis.Redis.from_url(
            url,
            socket_connect_timeout=connect_timeout,
            socket_timeout=timeout,
            retry=Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,)),
        )
        return cls(client, prefix=prefix, max_vni=max_vni, keepalive=keepalive)

    def _key(self, relay: str, name: str) -> str:
        if not relay or "{" in relay or "}" in relay:
            raise ValueError(f"relay name {relay!r} must be non-empty and free of '{{' and '}}'")
        return f"{self._prefix}{{{relay}}}:{name}"

    def channel(self, relay: str) -> str:
        """The pub/sub channel carrying "alloc|free|bound <vni> <lamport>" for a relay."""
        return self._key(relay, "changes")

    async def _call(self, what: str, request: Awaitable[_T]) -> _T:
        task = asyncio.current_task()
        cancelling = task.cancelling() if task else 0
        try:
            result = await request
        except _UNAVAILABLE as exc:
            raise StoreUnavailable(f"{self._where} is unavailable ({what}): {exc}") from exc
        except redis_errors.ResponseError as exc:
            if str(exc).startswith("MISCONF"):
                raise StoreUnavailable(f"{self._where} refuses writes ({what}): {exc}") from exc
            raise StoreError(f"{self._where} failed ({what}): {exc}") from exc
        except redis_errors.RedisError as exc:
            raise StoreError(f"{self._where} failed ({what}): {exc}") from exc
        if task is not None and task.cancelling() > cancelling:
            # Python 3.11's asyncio.wait_for, which redis-py sends with, returns
            # instead of raising when a cancellation meets a finished send.
            raise asyncio.CancelledError
        return result

    def _decode(self, relay: str, vni: int, record: bytes) -> Allocation:
        lamport_id, a, b, allocated_ms, bound = _RECORD.unpack(record)
        keys = (DiscoPublicKey(a), DiscoPublicKey(b))
        return Allocation(relay, vni, lamport_id, keys, allocated_ms / 1000, bound)

    async def allocate(
        self, relay: str, disco_keys: tuple[DiscoPublicKey, DiscoPublicKey], now: float
    ) -> AllocationResult:
        a, b = sorted_pair(*disco_keys)
        keys = [self._key(relay, name) for name in ("lamport", "endpoints", "pairs", "cursor")]
        args = [a.raw + b.raw, struct.pack(">q", round(now * 1000)), self._max_vni]
        args.append(self.channel(relay))
        reply: list[Any] = await self._call(
            f"allocate on relay {relay!r}", self._allocate(keys=keys, args=args)
        )
        status = reply[0]
        if status == 2:
            raise VNIExhausted(f"all {self._max_vni} VNIs of relay {relay!r} are in use")
        allocation = self._decode(relay, reply[1], reply[2])
        if status == 0:
            return AllocationResult(allocation, created=False)
        replaced = self._decode(relay, reply[3], reply[4]) if len(reply) > 3 else None
        return AllocationResult(allocation, created=True, replaced=replaced)

    def _identity(self, vni: int, lamport_id: int) -> list[bytes] | None:
        if not 1 <= vni <= MAX_VNI or not 0 <= lamport_id < 1 << 64:
            return None
        return [_vni_field(vni), _LAMPORT.pack(lamport_id)]

    async def mark_bound(self, relay: str, vni: int, lamport_id: int) -> bool:
        keys = [self._key(relay, "endpoints")]
        identity = self._identity(vni, lamport_id)
        if identity is None:
            return False
        args = [*identity, self.channel(relay), f"bound {vni} {lamport_id}"]
        done = await self._call(
            f"mark_bound on relay {relay!r}", self._mark_bound(keys=keys, args=args)
        )
        return bool(done)

    async def free(self, relay: str, vni: int, lamport_id: int) -> bool:
        keys = [self._key(relay, "endpoints"), self._key(relay, "pairs")]
        identity = self._identity(vni, lamport_id)
        if identity is None:
            return False
        args = [*identity, self.channel(relay), f"free {vni} {lamport_id}"]
        done = await self._call(f"free on relay {relay!r}", self._free(keys=keys, args=args))
        return bool(done)

    async def allocations(self, relay: str) -> list[Allocation]:
        """Every live allocation of a relay, oldest (lowest LamportID) first."""
        key = self._key(relay, "endpoints")
        records: dict[bytes, bytes] = await self._call(
            f"allocations of relay {relay!r}", self._client.hgetall(key)
        )
        found = [
            self._decode(relay, _VNI.unpack(b"\0" + field)[0], record)
            for field, record in records.items()
        ]
        return sorted(found, key=lambda allocation: allocation.lamport_id)

    async def allocation(self, relay: str, vni: int) -> Allocation | None:
        key = self._key(relay, "endpoints")
        if not 1 <= vni <= MAX_VNI:
            return None
        record = await self._call(
            f"allocation of relay {relay!r}", self._client.hget(key, _vni_field(vni))
        )
        return None if record is None else self._decode(relay, vni, record)

    async def changes(self, relay: str) -> AsyncIterator[Change]:
        """Changes published by this module's scripts; SUBSCRIBED again after a reconnection."""
        channel = self.channel(relay)
        what = f"changes of relay {relay!r}"
        loop = asyncio.get_running_loop()
        pubsub = self._client.pubsub()
        try:
            await self._call(what, pubsub.subscribe(channel))
            pong_due: float | None = None
            while True:
                wait = self._keepalive if pong_due is None else max(0.0, pong_due - loop.time())
                message = await self._call(what, pubsub.get_message(timeout=wait))
                if message is None:
                    if pong_due is not None and loop.time() >= pong_due:
                        raise StoreUnavailable(f"{self._where} stopped answering ({what})")
                    if pong_due is None:
                        await self._call(what, pubsub.ping())
                        pong_due = loop.time() + self._reply_timeout
                elif message["type"] == "pong":
                    pong_due = None
                elif message["type"] == "subscribe":
                    yield SUBSCRIBED
                elif message["type"] == "message":
                    change = _parse_change(message["data"])
                    if change is not None:
                        yield change
        finally:
            with contextlib.suppress(redis_errors.RedisError, OSError):
                await pubsub.aclose()

    async def register(self, record: RelayRecord, ttl: float) -> None:
        keys = [self._prefix + "registry"]
        args = [record.name, round(ttl * 1000), _encode_relay(record)]
        await self._call(f"register relay {record.name!r}", self._register(keys=keys, args=args))

    async def relays(self) -> list[RelayRecord]:
        """Every registered relay, by name; alive by Redis's clock."""
        key = self._prefix + "registry"

        async def read() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.time()
                pipe.hgetall(key)
                return await pipe.execute()

        (seconds, micros), entries = await self._call("list relays", read())
        now_ms = seconds * 1000 + micros // 1000
        found = [_decode_relay(name, value, now_ms) for name, value in entries.items()]
        return sorted(found, key=lambda record: record.name)

    async def memory_per_endpoint(self, relay: str) -> float:
        """Bytes of Redis memory (``MEMORY USAGE``) per allocated endpoint of a relay; 0 if none."""
        keys = [self._key(relay, name) for name in ("lamport", "endpoints", "pairs", "cursor")]

        async def measure() -> list[Any]:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hlen(keys[1])
                for key in keys:
                    pipe.memory_usage(key, samples=0)
                return await pipe.execute()

        count, *usages = await self._call(f"memory of relay {relay!r}", measure())
        if not count:
            return 0.0
        return sum(usage or 0 for usage in usages) / count

    async def close(self) -> None:
        await self._client.aclose()
