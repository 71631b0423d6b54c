"""The Redis store: allocations that outlive every process of the fleet.

The operator allocates, the relay pods serve and free, and any of them may die
at any moment; Redis keeps what must survive them. This module implements the
store interface (:mod:`relay.store.interface`) over Redis with exactly the
rules of :class:`relay.store.memory.MemoryStore`. Allocation, freeing and
binding are each one Lua script (:mod:`relay.store.scripts`), so concurrent
callers never hand out a VNI twice and LamportIDs never repeat or go
backwards. Store URLs are parsed and redacted in :mod:`relay.store.urls`.

Every key of one relay carries the relay's name as its hash tag, so each
script touches one slot and runs unchanged on Redis Cluster::

    <prefix>{<relay>}:lamport    string  the last LamportID issued
    <prefix>{<relay>}:cursor     string  where the search for a free VNI starts
    <prefix>{<relay>}:endpoints  hash    VNI (3 bytes) -> endpoint record (81 bytes)
    <prefix>{<relay>}:pairs      hash    both raw keys, sorted (64 bytes) -> VNI (3 bytes)
    <prefix>{<relay>}:changes    channel "alloc|free <vni> <lamport>" per change
    <prefix>registry             hash    relay name -> "<expiry ms> <JSON record>"

VNIs and integers in records are big-endian. An endpoint record is the
LamportID (8 bytes), the two raw disco keys in sorted order (32 + 32), the
allocation time in milliseconds since the epoch (8, signed) and a bound flag
(1). Memory grows with allocated endpoints only: nothing is stored per free VNI.
Heartbeats expire by Redis's clock (``TIME``), so the clocks of the relays
and the operator need not agree.

The same store runs on one Redis, on a Redis Cluster and behind Redis
Sentinel, chosen by the URL (:meth:`RedisStore.from_url`). Every command and
script names keys of a single slot, so none of them needs a MULTI spanning
nodes; change announcements are classic PUBLISH, which a cluster forwards to
every node, so a subscriber may listen on any of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis import exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff

from relay.protocol.allocation import DEFAULT_BIND_LIFETIME, DEFAULT_STEADY_STATE_LIFETIME
from relay.protocol.geneve import MAX_VNI
from relay.protocol.keys import DiscoPublicKey, raw_pair
from relay.store import scripts, urls
from relay.store.interface import (
    SCAN_SLICE,
    SUBSCRIBED,
    Allocation,
    AllocationResult,
    Change,
    RelayRecord,
    StoreError,
    StoreUnavailable,
    VNIExhausted,
)

_CLUSTER_UNREACHABLE: tuple[type[Exception], ...] = tuple(
    getattr(redis_errors, name) for name in ("RedisClusterUnreachableError",)
    if hasattr(redis_errors, name)
)  # fmt: skip
_VNI = struct.Struct(">I")
_LAMPORT = struct.Struct(">Q")
_RECORD = struct.Struct(">Q64sq?")  # LamportID, the raw pair, allocated at (ms), bound
_T = TypeVar("_T")

_UNAVAILABLE = (
    redis_errors.ConnectionError,  # also refused, reset, LOADING, bad password, no master
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.ClusterError,  # CLUSTERDOWN, MASTERDOWN, redirected too often
    redis_errors.TryAgainError,
    redis_errors.SlotNotCoveredError,
)

_CHANGE_KINDS = frozenset({"alloc", "free"})


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
    if (
        kind not in _CHANGE_KINDS
        or not (vni.isascii() and vni.isdigit())
        or not (lamport_id.isascii() and lamport_id.isdigit())
    ):
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
            "bind_lifetime": record.bind_lifetime,
            "steady_state_lifetime": record.steady_state_lifetime,
            "metrics": record.metrics,
            "pod": record.pod,
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
        bind_lifetime=fields.get("bind_lifetime", DEFAULT_BIND_LIFETIME),
        steady_state_lifetime=fields.get("steady_state_lifetime", DEFAULT_STEADY_STATE_LIFETIME),
        metrics=fields.get("metrics"),
        pod=fields.get("pod"),
    )


class RedisStore:
    """The store interface over Redis, Redis Cluster or Redis Sentinel; closed by ``close``.

    Relay names must be non-empty and free of ``{`` and ``}``, as they are the
    keys' hash tag; ``max_vni`` caps VNIs at 1..max_vni per relay. A
    subscription (``changes``) idle for ``keepalive`` seconds is checked with a
    PING, so that a connection gone silent ends it rather than hanging it.
    """

    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
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
        self._reply_timeout = client.get_connection_kwargs().get("socket_timeout") or 2.0
        self._where = urls.describe(client)
        self._allocate = scripts.Script(client, scripts.ALLOCATE)
        self._free = scripts.Script(client, scripts.FREE)
        self._mark_bound = scripts.Script(client, scripts.MARK_BOUND)
        self._register = scripts.Script(client, scripts.REGISTER)
        self._relays = scripts.Script(client, scripts.RELAYS)
        self._memory = scripts.Script(client, scripts.MEMORY)

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
        """A store for a Redis URL; nothing connects until the first call.

        One Redis, as redis-py reads the URL::

            redis://[[user]:password@]host[:port][/db][?option=value...]
            rediss://...  (TLS)
            unix://[[user]:password@]/path/to/socket[?db=N]

        with any redis-py option in the query (``rediss://host?ssl_ca_certs=/ca.pem``,
        ``socket_timeout=0.5``).

        A Redis Cluster, given one or more of its nodes to discover the rest
        from (database 0 only)::

            redis+cluster://[[user]:password@]host:port[,host:port...][?option=value...]
            rediss+cluster://...  (TLS)

        Redis Sentinel: the master of ``service``, asked of one or more
        sentinels; the password is the master's (sentinels are asked without
        one), TLS applies to sentinels and master alike::

            redis+sentinel://[[user]:password@]host:port[,host:port...]/service[/db][?option=value...]
            rediss+sentinel://...  (TLS)

        In these four, a port left out is 6379 (cluster) or 26379 (sentinel),
        IPv6 addresses go in brackets (``[::1]:6379``), the password and the
        service name are percent-encoded, and the options are
        ``socket_connect_timeout`` and ``socket_timeout`` (seconds) and, with
        TLS, ``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
        ``ssl_cert_reqs`` (none, optional, required) and
        ``ssl_check_hostname`` (true, false). A malformed URL raises
        ValueError naming the problem, never the password.

        Timeouts in the URL override ``connect_timeout`` and ``timeout``
        (seconds). A call that fails to connect is retried once; on a
        cluster, that retry follows a refresh of the slot map, and it is also
        made after a timeout, CLUSTERDOWN or an uncovered slot.
        """
        _check_options(prefix, max_vni)
        retry = Retry(NoBackoff(), 1, supported_errors=(redis_errors.ConnectionError,))
        client = urls.connect(url, connect_timeout=connect_timeout, timeout=timeout, retry=retry)
        return cls(client, prefix=prefix, max_vni=max_vni, keepalive=keepalive)

    @property
    def client(self) -> aioredis.Redis | RedisCluster:
        """The redis-py client: a Redis (also for Sentinel's master) or a RedisCluster."""
        return self._client

    def _key(self, relay: str, name: str) -> str:
        if not relay or "{" in relay or "}" in relay:
            raise ValueError(f"relay name {relay!r} must be non-empty and free of '{{' and '}}'")
        return f"{self._prefix}{{{relay}}}:{name}"

    def channel(self, relay: str) -> str:
        """The pub/sub channel carrying "alloc|free <vni> <lamport>" for a relay."""
        return self._key(relay, "changes")

    async def _routed(self, request: Awaitable[_T]) -> _T:
        """Await ``request`` once the cluster client knows the slot map.

        Until then redis-py 8.1 sends a keyed command to a random node, and
        the MOVED answers make it close connections other calls are using.
        """
        assert isinstance(self._client, RedisCluster)
        try:
            await self._client.initialize()
        except BaseException:
            if inspect.iscoroutine(request):
                request.close()
            raise
        return await request

    async def _call(self, what: str, request: Awaitable[_T]) -> _T:
        task = asyncio.current_task()
        cancelling = task.cancelling() if task else 0
        if isinstance(self._client, RedisCluster):
            request = self._routed(request)
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
        except redis_errors.RedisClusterException as exc:
            # The base class itself reports no reachable node or uncovered slots (and
            # from redis-py 8.2, its subclass RedisClusterUnreachableError does); its
            # other subclasses report misuse.
            if type(exc) is redis_errors.RedisClusterException or isinstance(
                exc, _CLUSTER_UNREACHABLE
            ):
                raise StoreUnavailable(f"{self._where} is unavailable ({what}): {exc}") from exc
            raise StoreError(f"{self._where} failed ({what}): {exc}") from exc
        if task is not None and task.cancelling() > cancelling:
            # Python 3.11's asyncio.wait_for, which redis-py sends with, returns
            # instead of raising when a cancellation meets a finished send.
            raise asyncio.CancelledError
        return result

    def _decode(self, relay: str, vni: int, record: bytes) -> Allocation:
        lamport_id, raw_keys, allocated_ms, bound = _RECORD.unpack(record)
        return Allocation(relay, vni, lamport_id, raw_keys, allocated_ms / 1000, bound)

    async def allocate(
        self,
        relay: str,
        disco_keys: tuple[DiscoPublicKey, DiscoPublicKey],
        now: float,
        max_vni: int | None = None,
    ) -> AllocationResult:
        limit = max_vni or self._max_vni
        keys = [self._key(relay, name) for name in ("lamport", "endpoints", "pairs", "cursor")]
        args = [raw_pair(disco_keys), struct.pack(">q", round(now * 1000)), limit]
        args.append(self.channel(relay))
        reply: list[Any] = await self._call(
            f"allocate on relay {relay!r}", self._allocate(keys=keys, args=args)
        )
        status = reply[0]
        if status == 2:
            raise VNIExhausted(f"all {limit} VNIs of relay {relay!r} are in use")
        allocation = self._decode(relay, reply[1], reply[2])
        if status == 0:
            return AllocationResult(allocation, created=False)
        replaced = self._decode(relay, reply[3], reply[4]) if len(reply) > 3 else None
        return AllocationResult(allocation, created=True, replaced=replaced)

    def _identity(self, vni: int, lamport_id: int) -> list[bytes] | None:
        if not 1 <= vni <= MAX_VNI or not 0 <= lamport_id < 1 << 64:
            return None
        return [_vni_field(vni), _LAMPORT.pack(lamport_id)]

    async def mark_bound(self, relay: str, endpoints: Sequence[tuple[int, int]]) -> list[bool]:
        keys = [self._key(relay, "endpoints")]
        return await self._per_slice(
            f"mark_bound on relay {relay!r}", endpoints, keys, [], self._mark_bound
        )

    async def free(self, relay: str, endpoints: Sequence[tuple[int, int]]) -> list[bool]:
        keys = [self._key(relay, "endpoints"), self._key(relay, "pairs")]
        args = [self.channel(relay)]
        return await self._per_slice(f"free on relay {relay!r}", endpoints, keys, args, self._free)

    async def _per_slice(
        self,
        what: str,
        endpoints: Sequence[tuple[int, int]],
        keys: list[str],
        args: list[str | bytes],
        script: scripts.Script,
    ) -> list[bool]:
        """Run ``script`` on ``endpoints`` (VNI, LamportID), a slice of them per call, after
        ``args``: True for each it answered 1 for, False for the others and for an
        identity no allocation can have."""
        done = [False] * len(endpoints)
        for start in range(0, len(endpoints), SCAN_SLICE):
            identities: list[str | bytes] = list(args)
            sent = []  # the positions of this slice's valid endpoints, in identities' order
            for at in range(start, min(start + SCAN_SLICE, len(endpoints))):
                identity = self._identity(*endpoints[at])
                if identity is not None:
                    identities += identity
                    sent.append(at)
            if sent:
                answers = await self._call(what, script(keys=keys, args=identities))
                for at, answer in zip(sent, answers, strict=True):
                    done[at] = bool(answer)
        return done

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

    async def scan_allocations(self, relay: str) -> AsyncIterator[list[Allocation]]:
        key = self._key(relay, "endpoints")
        cursor: int | bytes = 0
        seen: set[int] = set()
        while True:
            cursor, records = await self._call(
                f"allocations of relay {relay!r}",
                self._client.hscan(key, cursor, count=SCAN_SLICE),
            )
            found = []
            for vni_field, record in records.items():
                vni = _VNI.unpack(b"\0" + vni_field)[0]
                if vni not in seen:
                    seen.add(vni)
                    found.append(self._decode(relay, vni, record))
            if found:
                yield found
            if not int(cursor):
                return

    async def allocation(self, relay: str, vni: int) -> Allocation | None:
        key = self._key(relay, "endpoints")
        if not 1 <= vni <= MAX_VNI:
            return None
        record = await self._call(
            f"allocation of relay {relay!r}", self._client.hget(key, _vni_field(vni))
        )
        return None if record is None else self._decode(relay, vni, record)

    async def changes(self, relay: str) -> AsyncIterator[Change]:
        """Changes published by this module's scripts.

        On one Redis, SUBSCRIBED comes again after a dropped connection is
        made anew. Behind Sentinel, the subscription is on the current master,
        found again on reconnection. On a cluster, it is on the node that owns
        the relay's slot, and a dropped connection ends the iteration with
        StoreUnavailable, as cluster connections are never retried in place.
        """
        channel = self.channel(relay)
        what = f"changes of relay {relay!r}"
        loop = asyncio.get_running_loop()
        pubsub = self._client.pubsub()
        try:
            if isinstance(self._client, RedisCluster):
                # A keyed read refreshes a stale slot map, so that the
                # subscription goes to the slot's current owner.
                await self._call(what, self._client.exists(self._key(relay, "lamport")))
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

    async def holding(
        self, relays: list[str], disco_keys: tuple[DiscoPublicKey, DiscoPublicKey]
    ) -> str | None:
        """One round trip whatever the number of relays: a pipeline of one HEXISTS each
        (split by node on a cluster)."""
        if not relays:
            return None
        pair = raw_pair(disco_keys)
        pipeline = self._client.pipeline(transaction=False)
        for relay in relays:
            pipeline.hexists(self._key(relay, "pairs"), pair)
        found = await self._call(f"pairs of {len(relays)} relays", pipeline.execute())
        return next((relay for relay, held in zip(relays, found, strict=True) if held), None)

    async def relays(self) -> list[RelayRecord]:
        """Every registered relay, by name; alive by the clock of the Redis holding the registry."""
        seconds, micros, entries = await self._call(
            "list relays", self._relays([self._prefix + "registry"])
        )
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        found = [
            _decode_relay(name, value, now_ms)
            for name, value in zip(entries[::2], entries[1::2], strict=True)
        ]
        return sorted(found, key=lambda record: record.name)

    async def memory_per_endpoint(self, relay: str) -> float:
        """Bytes of Redis memory (``MEMORY USAGE``) per allocated endpoint of a relay; 0 if none."""
        keys = [self._key(relay, name) for name in ("endpoints", "lamport", "pairs", "cursor")]
        count, used = await self._call(f"memory of relay {relay!r}", self._memory(keys))
        return used / count if count else 0.0

    async def close(self) -> None:
        await self._client.aclose()
        pool = getattr(self._client, "connection_pool", None)
        if isinstance(pool, SentinelConnectionPool):
            await pool.sentinel_manager.aclose()
