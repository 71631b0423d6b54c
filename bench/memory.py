"""Memory per endpoint: Redis bytes and relay resident bytes, ours beside the reference's.

    .venv/bin/python -m bench.memory [--endpoints 100000]

Starts a throw-away redis-server and the processes it measures on loopback,
allocates N endpoints, and prints:
  - Redis: MEMORY USAGE of one relay's keys per endpoint, and the growth of
    INFO used_memory per endpoint;
  - relay resident memory (VmRSS) per endpoint, for `relayfleet relay` on the
    Redis store (endpoints installed by the agent from Redis announcements)
    and on the memory store (endpoints allocated through its HTTP API), beside
    the reference Go server (.dev/bin/refserver, built by scripts/setup),
    measured the same way through the same API.
Each server runs pinned to one CPU, as in every bench (bench/processes.py).
Our relays run with --bind-lifetime 6h, so that no allocation expires
unbound while a million are made. The reference's bind lifetime is fixed at
30 s, so it is measured only up to 100 000 endpoints (allocated within that).
Bounded: N allocations per measurement, every process stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from bench.clients import allocate, random_pair, request_body
from bench.processes import (
    REFSERVER,
    REFSERVER_MISSING,
    Forwarder,
    ours_command,
    reference_command,
    rss_bytes,
    stop_all,
    stop_on_sigterm,
)
from bench.report import ratio
from relay.protocol.keys import DiscoPublicKey
from relay.store.redis import RedisStore
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until_sync

CONCURRENCY = 50
BIND_LIFETIME = "6h"  # allocations stay unbound for the whole measurement
REFERENCE_MAX = 100_000
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


def relay_rss_per_endpoint(command: list[str], pairs: Pairs) -> tuple[float, int, int]:
    """A server's RSS growth per endpoint allocated through its HTTP API."""
    started: list[Forwarder] = []
    try:
        relay = Forwarder.start(command[0], command, started)
        before = settle_rss(relay.process.pid)
        allocate(relay.api, [request_body(pair) for pair in pairs])
        after = settle_rss(relay.process.pid)
        return (after - before) / len(pairs), before, after
    finally:
        stop_all(started)


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


def main(endpoints: int) -> None:
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory)) as server:
        print(f"memory per endpoint at {endpoints:,} endpoints (loopback, this machine)")
        figures = asyncio.run(redis_figures(server, key_pairs(endpoints)))
        print(f"  Redis MEMORY USAGE        {figures['memory_usage']:8.1f} B/endpoint")
        print(f"  Redis used_memory growth  {figures['used_memory']:8.1f} B/endpoint")
        print(
            f"  (store allocations: {figures['allocations_per_second']:,.0f}/s, "
            f"{CONCURRENCY} concurrent)"
        )
        agent, a0, a1 = agent_rss_per_endpoint(server.url(), key_pairs(endpoints))
        print(
            f"  relay on Redis (agent)    {agent:8.1f} B/endpoint RSS "
            f"({a0 / 2**20:.0f} -> {a1 / 2**20:.0f} MiB)"
        )
    ours_flags = ("--log-level", "error", "--bind-lifetime", BIND_LIFETIME)
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
    stop_on_sigterm()
    main(parser.parse_args().endpoints)
