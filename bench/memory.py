"""Memory per endpoint: Redis bytes and relay resident bytes, ours beside the reference's.

    .venv/bin/python -m bench.memory [--endpoints 100000]

Starts a throw-away redis-server and the processes it measures on loopback,
allocates N endpoints, and prints:
  - Redis: MEMORY USAGE of one relay's keys per endpoint, and the growth of
    INFO used_memory per endpoint;
  - relay resident memory (VmRSS) per endpoint, for `relayfleet relay` on the
    Redis store (endpoints installed by the agent from Redis announcements)
    and on the memory store (endpoints allocated through its HTTP API), beside
    the reference Go server (.dev/bin/refserver, built by scripts/build-go-helpers),
    measured the same way through the same API.
Each server runs pinned to one CPU, as in every bench (bench/processes.py).
Our relays run with --bind-lifetime 6h, so that no allocation expires
unbound while a million are made. The reference's bind lifetime is fixed at
30 s, so it is measured only up to 100 000 endpoints (allocated within that).
Bounded: N allocations per measurement, every process stopped at the end.

    .venv/bin/python -m bench.memory --bound-core 10000 [--by-line]

measures the sans-I/O core alone, in this process, with tracemalloc: N
endpoints installed (their allocations and keys made fresh, as a store would),
then bound by version 1 clients (relay/protocol/client.py) from sockaddr
bytes made fresh per datagram, as the UDP transport passes them, and one data
datagram relayed each way. It prints the bytes per allocated endpoint, the
bytes per bound endpoint right after the handshakes, and once the bind
deadlines have passed (their heap entries gone). The per-source rate-limit
buckets (capped, not per endpoint) and the clients' own objects are left out.
One fake clock reading serves every datagram, so the clients' last-seen times
share one float: a real clock gives each wake-up its own (24 B). No process,
socket or Redis.

    .venv/bin/python -m bench.memory --bound-rss 100000

measures resident memory per bound endpoint in real processes: ours
(`relayfleet relay`, one worker, handshake limits raised, --bind-lifetime and
--steady-state-lifetime 6h) on the memory store, which holds its allocations
in the relay's process, and on a throw-away redis-server as in a fleet, beside
the v1.102.5 reference (.dev/bin/refserver-v1, GOMAXPROCS=1). Each is started, its RSS
settled, then N endpoints are allocated through its HTTP API and bound by
both clients in protocol version 1 over loopback (bench/binder.py, a data
packet relayed through each), 10 000 at a time, so that none waits unbound
past the reference's fixed 30 s; then its RSS settled again. Per bound
endpoint = RSS growth / N. The clients come from a pool of 256 sockets, as a
relay sees them only by their address: each endpoint still holds its own.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import socket
import struct
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

from bench.binder import Binder
from bench.clients import KeySet, allocate, random_pair, request_body
from bench.processes import (
    RAISED_LIMITS,
    REFERENCE_V1,
    REFSERVER,
    REFSERVER_MISSING,
    Forwarder,
    ours_command,
    reference_command,
    rss_bytes,
    stop_all,
    stop_on_sigterm,
)
from bench.report import Progress, ratio
from bench.sockets import POOL_BUFFER, client_socket
from relay.protocol.allocation import Allocation
from relay.protocol.client import RelayClient
from relay.protocol.core import RelayCore
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.protocol.ratelimit import HandshakeLimits
from relay.store.redis import RedisStore
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until_sync

CONCURRENCY = 50
BIND_LIFETIME = "6h"  # allocations stay unbound for the whole measurement
REFERENCE_MAX = 100_000
BIND_CHUNK = 10_000
"""Endpoints allocated and then bound at a time (--bound-rss): well within 30 s."""
BIND_POOL = 256
Pairs = list[tuple[DiscoPublicKey, DiscoPublicKey]]


def key_pairs(count: int) -> Pairs:
    return [random_pair() for _ in range(count)]


def settle_rss(pid: int) -> int:
    """RSS once it stops moving for a second (allocations done, garbage collected)."""
    previous, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 1.0:
        current = rss_bytes(pid)
        if current != previous:
            previous, stable_since = current, time.monotonic()
        time.sleep(0.1)
    return previous


async def allocate_in_store(url: str, prefix: str, pairs: Pairs) -> float:
    """Allocate ``pairs`` for relay "bench" in the store, ``CONCURRENCY`` at once; the seconds."""
    store = RedisStore.from_url(url, prefix=prefix)
    queue = iter(pairs)

    async def worker() -> None:
        for pair in queue:
            await store.allocate("bench", pair, time.time())

    try:
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return time.perf_counter() - started
    finally:
        await store.close()


async def redis_figures(server: RedisServer, pairs: Pairs) -> dict:
    with server.client() as client:
        used_before = client.info("memory")["used_memory"]
        elapsed = await allocate_in_store(server.url(), "bench:", pairs)
        used_after = client.info("memory")["used_memory"]
    store = RedisStore.from_url(server.url(), prefix="bench:")
    try:
        memory_usage = await store.memory_per_endpoint("bench")
    finally:
        await store.close()
    return {
        "memory_usage": memory_usage,
        "used_memory": (used_after - used_before) / len(pairs),
        "allocations_per_second": len(pairs) / elapsed,
    }


def rss_growth(
    name: str,
    command: list[str],
    count: int,
    fill: Callable[[Forwarder], None],
    env: dict[str, str] | None = None,
) -> tuple[float, int, int]:
    """A server's RSS growth per endpoint while ``fill`` gives it ``count`` endpoints: (per
    endpoint, RSS before, RSS after), each RSS settled."""
    started: list[Forwarder] = []
    try:
        server = Forwarder.start(name, command, started, env)
        before = settle_rss(server.process.pid)
        fill(server)
        after = settle_rss(server.process.pid)
        return (after - before) / count, before, after
    finally:
        stop_all(started)


def relay_rss_per_endpoint(command: list[str], pairs: Pairs) -> tuple[float, int, int]:
    """A server's RSS growth per endpoint allocated through its HTTP API."""

    def fill(server: Forwarder) -> None:
        allocate(server.api, [request_body(pair) for pair in pairs])

    return rss_growth(command[0], command, len(pairs), fill)


def agent_rss_per_endpoint(url: str, pairs: Pairs) -> tuple[float, int, int]:
    """A relay on Redis whose endpoints arrive by announcement, as the operator's would."""
    command = ours_command(
        "--store", url, "--store-prefix", "agent:", "--name", "bench",
        "--log-level", "error", "--bind-lifetime", BIND_LIFETIME,
    )  # fmt: skip
    started: list[Forwarder] = []
    try:
        relay = Forwarder.start("relay on Redis", command, started)
        before = settle_rss(relay.process.pid)
        asyncio.run(allocate_in_store(url, "agent:", pairs))

        def served() -> bool:
            metrics = relay.metrics()
            installed = sum(
                v for k, v in metrics.items() if k.startswith("relayfleet_relay_endpoints{")
            )
            return installed >= len(pairs)

        wait_until_sync(
            served, f"the relay to install {len(pairs):,} endpoints", timeout=300, interval=0.2
        )
        after = settle_rss(relay.process.pid)
        return (after - before) / len(pairs), before, after
    finally:
        stop_all(started)


def _sockaddr(index: int) -> bytes:
    """A fresh ``sockaddr_in`` for client ``index`` (10.0.0.0/8, port 40000 + index % 20000)."""
    family = socket.AF_INET.to_bytes(2, sys.byteorder)
    return family + struct.pack(">HI8x", 40_000 + index % 20_000, 0x0A00_0000 + index)


def _traced(snapshot: tracemalloc.Snapshot) -> tracemalloc.Snapshot:
    """Leave out the clients' objects and the capped per-source buckets."""
    return snapshot.filter_traces(
        (
            tracemalloc.Filter(False, "*/relay/protocol/client.py"),
            tracemalloc.Filter(False, "*/relay/protocol/ratelimit.py"),
            tracemalloc.Filter(False, tracemalloc.__file__),
        )
    )


def _grown(
    before: tracemalloc.Snapshot, after: tracemalloc.Snapshot, by_line: bool, count: int
) -> float:
    stats = _traced(after).compare_to(_traced(before), "lineno")
    if by_line:
        for stat in stats[:12]:
            if stat.size_diff:
                frame = stat.traceback[0]
                name = frame.filename.rsplit("/", 2)[-2:]
                print(
                    f"      {stat.size_diff / count:7.1f} B  {stat.count_diff / count:5.2f} "
                    f"objects  {'/'.join(name)}:{frame.lineno}"
                )
    return sum(stat.size_diff for stat in stats) / count


def core_bytes_per_endpoint(count: int, by_line: bool = False) -> tuple[float, float, float]:
    """tracemalloc bytes per endpoint in the core alone: (allocated, bound, bound once the
    bind deadlines have passed)."""
    keys = KeySet(count)
    private = [DiscoPrivateKey(raw) for raw in keys.private]
    server = DiscoPrivateKey.generate()
    limits = HandshakeLimits(1e12, 1e12, 1e12, max_sources=1)  # no per-source buckets kept
    core = RelayCore(server, bytes(32), handshake_limits=limits)
    now = 1_000_000.0
    pairs = [keys.pair(i) for i in range(count)]
    clients = []
    for vni, (a, b) in enumerate(pairs, start=1):
        if keys.public[a] > keys.public[b]:
            a, b = b, a
        ka, kb = DiscoPublicKey(keys.public[a]), DiscoPublicKey(keys.public[b])
        clients.append(
            (
                RelayClient(private[a], core.server_key, vni, remote_key=kb),
                RelayClient(private[b], core.server_key, vni, remote_key=ka),
                (a, b),
            )
        )
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    for vni, (_, _, (a, b)) in enumerate(clients, start=1):
        fresh = bytes.fromhex(b"".join(sorted((keys.public[a], keys.public[b]))).hex())
        core.install(Allocation("bench", vni, vni, fresh, now))
    gc.collect()
    installed = tracemalloc.take_snapshot()
    print(f"  core, {count:,} endpoints allocated (tracemalloc)")
    allocated = _grown(before, installed, by_line, count)
    print(f"    {allocated:8.1f} B/endpoint allocated")
    payload = bytes(1200)
    for index, (client_a, client_b, _) in enumerate(clients):
        for side, client in enumerate((client_a, client_b)):
            source = 2 * index + side
            reply = core.handle(client.bind(), _sockaddr(source), now)
            assert reply is not None, "bind got no challenge"
            assert core.handle(client.answer(reply[0]), _sockaddr(source), now) is None
        for side, client in enumerate((client_a, client_b)):
            assert core.handle(client.data(payload), _sockaddr(2 * index + side), now)
    core.take_bound()
    assert core.bound_count == count, core.drops
    gc.collect()
    bound_snapshot = tracemalloc.take_snapshot()
    print("  bound by both clients, one data datagram each way")
    bound = _grown(before, bound_snapshot, by_line, count)
    print(f"    {bound:8.1f} B/endpoint bound ({bound - allocated:+.1f} B)")
    assert not core.expire(now + core.bind_lifetime + 1, budget=2 * count + 1)
    gc.collect()
    settled_snapshot = tracemalloc.take_snapshot()
    settled = _grown(before, settled_snapshot, False, count)
    print(f"    {settled:8.1f} B/endpoint bound, once the bind deadlines have passed")
    tracemalloc.stop()
    return allocated, bound, settled


def bound_rss_per_endpoint(
    name: str, command: list[str], count: int, env: dict[str, str] | None = None
) -> tuple[float, int, int]:
    """A server's RSS growth per endpoint allocated through its HTTP API and bound by both
    clients in protocol version 1, :data:`BIND_CHUNK` at a time."""
    keys = KeySet(count)

    def fill(server: Forwarder) -> None:
        pool = [client_socket(POOL_BUFFER) for _ in range(BIND_POOL)]
        try:
            for first in range(0, count, BIND_CHUNK):
                stop = min(count, first + BIND_CHUNK)
                vnis = allocate(server.api, keys.request_bodies(first, stop))
                endpoints = list(zip(range(first, stop), vnis, strict=True))
                binder = Binder(server.udp, server.server_key, keys, endpoints, pool, protocol=1)
                outcome = binder.run(window=256, retry=0.5, timeout=60)
                if outcome.done != stop - first:
                    missing = stop - first - outcome.done
                    raise RuntimeError(f"{name}: {missing} endpoints did not bind")
        finally:
            for sock in pool:
                sock.close()

    return rss_growth(name, command, count, fill, env)


def print_bound_rss(name: str, per_endpoint: float, before: int, after: int) -> None:
    print(
        f"  {name:<24}  {per_endpoint:8.1f} B/endpoint RSS "
        f"({before / 2**20:.0f} -> {after / 2**20:.0f} MiB)"
    )


def bound_main(count: int) -> None:
    """--bound-rss: ours beside v1.102.5, RSS per bound endpoint."""
    print(f"resident memory per bound endpoint at {count:,} endpoints (loopback, this machine)")
    progress = Progress("bench.memory", 3)
    progress.cell(f"ours, memory store: {count:,} endpoints allocated and bound")
    flags = (
        "--log-level", "error", "--workers", "1", "--bind-lifetime", BIND_LIFETIME,
        "--steady-state-lifetime", BIND_LIFETIME, *RAISED_LIMITS,
    )  # fmt: skip
    ours, before, after = bound_rss_per_endpoint("ours", ours_command(*flags), count)
    print_bound_rss("ours (memory store)", ours, before, after)
    progress.cell(f"ours, Redis store: {count:,} endpoints allocated and bound")
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory)) as server:
        on_redis = ours_command(*flags, "--store", server.url(), "--name", "bench")
        in_redis, before, after = bound_rss_per_endpoint("ours on Redis", on_redis, count)
    print_bound_rss("ours (Redis store)", in_redis, before, after)
    if REFERENCE_V1.missing:
        print(f"  {REFERENCE_V1.missing}")
        return
    progress.cell(f"{REFERENCE_V1.name}: {count:,} endpoints allocated and bound")
    ref, before, after = bound_rss_per_endpoint(
        REFERENCE_V1.name, REFERENCE_V1.command(), count, REFERENCE_V1.environment()
    )
    print_bound_rss(REFERENCE_V1.name, ref, before, after)
    print(
        f"  ratio ours/reference      {ratio(ours, ref):>8} (memory store), "
        f"{ratio(in_redis, ref)} (Redis store), per bound endpoint"
    )


def main(endpoints: int) -> None:
    reference = REFSERVER.exists() and endpoints <= REFERENCE_MAX
    progress = Progress("bench.memory", 4 if reference else 3)
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory)) as server:
        print(f"memory per endpoint at {endpoints:,} endpoints (loopback, this machine)")
        progress.cell(f"Redis: {endpoints:,} endpoints allocated in the store")
        figures = asyncio.run(redis_figures(server, key_pairs(endpoints)))
        print(f"  Redis MEMORY USAGE        {figures['memory_usage']:8.1f} B/endpoint")
        print(f"  Redis used_memory growth  {figures['used_memory']:8.1f} B/endpoint")
        print(
            f"  (store allocations: {figures['allocations_per_second']:,.0f}/s, "
            f"{CONCURRENCY} concurrent)"
        )
        progress.cell(f"relay on Redis (agent): {endpoints:,} endpoints announced")
        agent, a0, a1 = agent_rss_per_endpoint(server.url(), key_pairs(endpoints))
        print(
            f"  relay on Redis (agent)    {agent:8.1f} B/endpoint RSS "
            f"({a0 / 2**20:.0f} -> {a1 / 2**20:.0f} MiB)"
        )
    ours_flags = ("--log-level", "error", "--bind-lifetime", BIND_LIFETIME)
    progress.cell(f"relay, memory store: {endpoints:,} endpoints allocated through its API")
    ours, o0, o1 = relay_rss_per_endpoint(ours_command(*ours_flags), key_pairs(endpoints))
    print(
        f"  relay, memory store       {ours:8.1f} B/endpoint RSS "
        f"({o0 / 2**20:.0f} -> {o1 / 2**20:.0f} MiB)"
    )
    if not REFSERVER.exists():
        print(f"  {REFSERVER_MISSING}")
        return
    if endpoints > REFERENCE_MAX:
        print(
            f"  reference: not measured above {REFERENCE_MAX:,} endpoints: its bind lifetime is "
            "fixed at 30 s, and it collects unbound endpoints before that many are allocated"
        )
        return
    progress.cell(f"reference Go server: {endpoints:,} endpoints allocated through its API")
    ref, r0, r1 = relay_rss_per_endpoint(reference_command(), key_pairs(endpoints))
    print(
        f"  reference Go server       {ref:8.1f} B/endpoint RSS "
        f"({r0 / 2**20:.0f} -> {r1 / 2**20:.0f} MiB, VNI pool included in the start)"
    )
    print(
        f"  ratio ours/reference      {ratio(ours, ref):>8} (per endpoint), "
        f"{ratio(o1, r1)} (total RSS at {endpoints:,})"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=100_000)
    parser.add_argument(
        "--bound-core",
        type=int,
        metavar="N",
        help="only the core, in this process (tracemalloc): N endpoints allocated, then bound",
    )
    parser.add_argument(
        "--by-line", action="store_true", help="with --bound-core: where the bytes go"
    )
    parser.add_argument(
        "--bound-rss",
        type=int,
        metavar="N",
        help="resident memory of N endpoints allocated and bound over UDP, ours beside v1.102.5",
    )
    stop_on_sigterm()
    args = parser.parse_args()
    if args.bound_rss:
        bound_main(args.bound_rss)
    elif args.bound_core:
        core_bytes_per_endpoint(args.bound_core, args.by_line)
    else:
        main(args.endpoints)
