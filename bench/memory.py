"""Memory per endpoint: Redis bytes and relay resident bytes, ours beside the reference's.

    .venv/bin/python bench/memory.py [--endpoints 100000]

Starts a throw-away redis-server and the processes it measures on loopback,
allocates N endpoints, and prints:
  - Redis: MEMORY USAGE of one relay's keys per endpoint, and the growth of
    INFO used_memory per endpoint;
  - relay resident memory (VmRSS) per endpoint, for `relayfleet relay` on the
    Redis store (endpoints installed by the agent from Redis announcements)
    and on the memory store (endpoints allocated through its HTTP API), beside
    the reference Go server (.dev/bin/refserver, built by scripts/setup),
    measured the same way through the same API.
Our relays run with --bind-lifetime 6h, so that no allocation expires
unbound while a million are made. The reference's bind lifetime is fixed at
30 s, so it is measured only up to 100 000 endpoints (allocated within that).
Bounded: N allocations per measurement, every process stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

from relay.protocol.keys import DiscoPublicKey
from relay.store.redis import RedisStore

ROOT = Path(__file__).resolve().parents[1]
RELAYFLEET = str(Path(sys.executable).parent / "relayfleet")
REFSERVER = ROOT / ".dev" / "bin" / "refserver"
CONCURRENCY = 50
BIND_LIFETIME = "6h"  # allocations stay unbound for the whole measurement
REFERENCE_MAX = 100_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def key_pairs(count: int) -> list[tuple]:
    """Distinct public keys without the cost of X25519: random bytes are valid keys here."""
    return [(DiscoPublicKey(os.urandom(32)), DiscoPublicKey(os.urandom(32))) for _ in range(count)]


async def start_process(command: list[str]) -> tuple[asyncio.subprocess.Process, dict]:
    process = await asyncio.create_subprocess_exec(
        *command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL
    )
    line = await asyncio.wait_for(process.stdout.readline(), 30)
    return process, json.loads(line)


async def stop(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        await process.wait()


async def settle_rss(pid: int) -> int:
    """RSS once it stops moving (allocations done, garbage collected)."""
    previous, stable_since = -1, time.monotonic()
    while time.monotonic() - stable_since < 1.0:
        current = rss_bytes(pid)
        if current != previous:
            previous, stable_since = current, time.monotonic()
        await asyncio.sleep(0.1)
    return previous


async def allocate_over_http(api: str, pairs: list[tuple]) -> None:
    queue = iter(pairs)

    async def worker(session: aiohttp.ClientSession) -> None:
        for a, b in queue:
            body = {"DiscoKeys": [str(a), str(b)]}
            async with session.post(f"http://{api}/v0/relay/endpoint", json=body) as response:
                if response.status != 200:
                    raise RuntimeError(f"allocation failed: {await response.text()}")

    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(worker(session) for _ in range(CONCURRENCY)))


async def relay_rss_per_endpoint(command: list[str], pairs: list[tuple]) -> tuple[float, int, int]:
    process, ready = await start_process(command)
    try:
        before = await settle_rss(process.pid)
        await allocate_over_http(ready["api"], pairs)
        after = await settle_rss(process.pid)
        return (after - before) / len(pairs), before, after
    finally:
        await stop(process)


async def redis_figures(url: str, pairs: list[tuple]) -> dict:
    store = RedisStore.from_url(url, prefix="bench:")
    client = aioredis.Redis.from_url(url)
    try:
        used_before = (await client.info("memory"))["used_memory"]
        queue = iter(pairs)

        async def worker() -> None:
            for pair in queue:
                await store.allocate("bench", pair, time.time())

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - started
        used_after = (await client.info("memory"))["used_memory"]
        return {
            "memory_usage": await store.memory_per_endpoint("bench"),
            "used_memory": (used_after - used_before) / len(pairs),
            "allocations_per_second": len(pairs) / elapsed,
        }
    finally:
        await client.aclose()
        await store.close()


async def agent_rss_per_endpoint(url: str, pairs: list[tuple]) -> tuple[float, int, int]:
    """A relay on Redis whose endpoints arrive by announcement, as the operator's would."""
    command = [
        RELAYFLEET, "relay", "--store", url, "--store-prefix", "agent:", "--name", "bench",
        "--port", "0", "--api-listen", "127.0.0.1:0", "--log-level", "error",
        "--bind-lifetime", BIND_LIFETIME,
    ]  # fmt: skip
    process, ready = await start_process(command)
    store = RedisStore.from_url(url, prefix="agent:")
    try:
        before = await settle_rss(process.pid)
        queue = iter(pairs)

        async def worker() -> None:
            for pair in queue:
                await store.allocate("bench", pair, time.time())

        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        async with aiohttp.ClientSession() as session:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                async with session.get(f"http://{ready['api']}/metrics") as response:
                    text = await response.text()
                served = sum(
                    float(line.split()[-1])
                    for line in text.splitlines()
                    if line.startswith("relayfleet_relay_endpoints{")
                )
                if served >= len(pairs):
                    break
                await asyncio.sleep(0.2)
            else:
                raise RuntimeError(f"the relay installed only {served} endpoints")
        after = await settle_rss(process.pid)
        return (after - before) / len(pairs), before, after
    finally:
        await store.close()
        await stop(process)


async def main(endpoints: int) -> None:
    redis_server = shutil.which("redis-server")
    if redis_server is None:
        sys.exit("bench/memory.py: redis-server is missing: run scripts/setup")
    port = free_port()
    with tempfile.TemporaryDirectory() as directory:
        server = subprocess.Popen(
            [redis_server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", directory],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        url = f"redis://127.0.0.1:{port}/0"
        try:
            await wait_for_redis(url)
            print(f"memory per endpoint at {endpoints:,} endpoints (loopback, this machine)")
            figures = await redis_figures(url, key_pairs(endpoints))
            print(f"  Redis MEMORY USAGE        {figures['memory_usage']:8.1f} B/endpoint")
            print(f"  Redis used_memory growth  {figures['used_memory']:8.1f} B/endpoint")
            print(
                f"  (store allocations: {figures['allocations_per_second']:,.0f}/s, "
                f"{CONCURRENCY} concurrent)"
            )
            agent, a0, a1 = await agent_rss_per_endpoint(url, key_pairs(endpoints))
            print(
                f"  relay on Redis (agent)    {agent:8.1f} B/endpoint RSS "
                f"({a0 / 2**20:.0f} -> {a1 / 2**20:.0f} MiB)"
            )
        finally:
            server.terminate()
            server.wait()
    ours_command = [
        RELAYFLEET, "relay", "--listen", "127.0.0.1", "--port", "0",
        "--api-listen", "127.0.0.1:0", "--addr", "127.0.0.1", "--log-level", "error",
        "--bind-lifetime", BIND_LIFETIME,
    ]  # fmt: skip
    ours, o0, o1 = await relay_rss_per_endpoint(ours_command, key_pairs(endpoints))
    print(
        f"  relay, memory store       {ours:8.1f} B/endpoint RSS "
        f"({o0 / 2**20:.0f} -> {o1 / 2**20:.0f} MiB)"
    )
    if not REFSERVER.exists():
        print("  reference: .dev/bin/refserver missing (run scripts/setup)")
        return
    if endpoints > REFERENCE_MAX:
        print(
            f"  reference: not measured above {REFERENCE_MAX:,} endpoints: its bind lifetime is "
            "fixed at 30 s, and it collects unbound endpoints before that many are allocated"
        )
        return
    reference_command = [str(REFSERVER), "--port", "0", "--api-listen", "127.0.0.1:0"]
    ref, r0, r1 = await relay_rss_per_endpoint(reference_command, key_pairs(endpoints))
    print(
        f"  reference Go server       {ref:8.1f} B/endpoint RSS "
        f"({r0 / 2**20:.0f} -> {r1 / 2**20:.0f} MiB, VNI pool included in the start)"
    )
    print(
        f"  ratio ours/reference      {ours / ref:8.2f} (per endpoint), "
        f"{o1 / r1:.2f} (total RSS at {endpoints:,})"
    )


async def wait_for_redis(url: str) -> None:
    client = aioredis.Redis.from_url(url)
    deadline = time.monotonic() + 10
    try:
        while True:
            try:
                await client.ping()
                return
            except (ConnectionError, OSError, aioredis.ConnectionError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.02)
    finally:
        await client.aclose()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=100_000)
    asyncio.run(main(parser.parse_args().endpoints))
