"""Event-loop stalls of a relay holding many endpoints: mass expiry and full resync.

    .venv/bin/python -m bench.stalls [--endpoints 1000000] [--store memory|redis]

Why: the relay's data plane, API and agent share one event loop, so any step
that runs long without yielding stops relaying for that long. Issue 7 asks
that expiry never scan all endpoints in one go and that no stall exceed 10 ms
at 1 000 000 endpoints. The reference Go server's GC scans every endpoint
under its one lock each tick instead; it has no event loop to measure.

How: one process runs the relay's own core and agent (relay/protocol/core.py,
relay/shells/agent.py) over a memory store or a private redis-server, with a clock
the bench moves. `--endpoints` allocations are made through the store and
installed; a monitor task sleeps 1 ms in a loop and records how late each
wake-up is (the stall). Then:
  1. resync: the agent re-reads and re-installs every allocation;
  2. mass expiry: the clock jumps past the bind lifetime, so every endpoint
     expires at once; the agent expires them in slices and frees each in the
     store, until the store holds none.
For each phase it prints its duration and the worst and 99th-percentile
stall. Bounded: one pass of each phase, a deadline on each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import tempfile
import time
from pathlib import Path

from bench.report import Progress, percentile
from relay.protocol.core import RelayCore
from relay.protocol.keys import DiscoPrivateKey, sorted_pair
from relay.shells.agent import RelayAgent
from relay.shells.keyfile import RelaySecrets
from relay.store import MemoryStore, RelayRecord, Store
from relay.store.redis import RedisStore
from tests.support.redis_server import RedisServer

BIND_LIFETIME = 30.0
PHASE_DEADLINE = 1800.0
TICK = 0.001
NAME = "bench"


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


class StallMonitor:
    """Wakes every millisecond and records how late each wake-up was."""

    def __init__(self) -> None:
        self.late: list[float] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.late = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            before = time.perf_counter()
            await asyncio.sleep(TICK)
            self.late.append(time.perf_counter() - before - TICK)

    async def stop(self) -> tuple[float, float]:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        late = self.late or [0.0]
        return max(late), percentile(late, 0.99)


async def fill(store: Store, count: int, clock: Clock) -> None:
    keys = [DiscoPrivateKey.generate().public for _ in range(2000)]
    began = time.perf_counter()
    for i in range(count):
        pair = sorted_pair((keys[i % 1000], keys[1000 + (i // 1000) % 1000]))
        await store.allocate(NAME, pair, clock())
        if i and i % 100_000 == 0:
            print(f"  {i:,} allocated ({i / (time.perf_counter() - began):,.0f}/s)")


async def run(args: argparse.Namespace, store: Store) -> None:
    clock = Clock()
    secrets = RelaySecrets.generate()
    core = RelayCore(secrets.private_key, secrets.challenge_secret, BIND_LIFETIME, 300.0)

    def record() -> RelayRecord:
        return RelayRecord(
            NAME, core.server_key, ("127.0.0.1:7000",), len(core), 1 << 24, "bench", clock()
        )

    agent = RelayAgent(core, store, record, clock, heartbeat_interval=5.0, resync_interval=3600.0)
    progress = Progress("bench.stalls", 3)
    progress.cell(f"allocating {args.endpoints:,} endpoints in the {args.store} store")
    began = time.perf_counter()
    await fill(store, args.endpoints, clock)
    print(f"  allocated {args.endpoints:,} in {time.perf_counter() - began:.1f} s")
    monitor = StallMonitor()
    rows = []

    progress.cell("resync: read and install every endpoint")
    monitor.start()
    began = time.perf_counter()
    await agent.resync()
    rows.append(
        ("resync (read and install all)", time.perf_counter() - began, *await monitor.stop())
    )
    assert len(core) == args.endpoints, len(core)

    progress.cell("mass expiry: expire and free every endpoint")
    agent.start()
    monitor.start()
    began = time.perf_counter()
    clock.offset += BIND_LIFETIME + 1
    deadline = began + PHASE_DEADLINE
    while len(core) or agent.pending_writes:
        if time.perf_counter() > deadline:
            raise SystemExit("mass expiry did not finish in time")
        await asyncio.sleep(0.5)
    rows.append(
        ("mass expiry (expire and free all)", time.perf_counter() - began, *await monitor.stop())
    )
    await agent.close()

    print()
    print(f"  {'phase':<36}{'seconds':>9}{'worst stall ms':>16}{'p99 stall ms':>14}")
    for phase, seconds, worst, p99 in rows:
        print(f"  {phase:<36}{seconds:>9.1f}{worst * 1000:>16.1f}{p99 * 1000:>14.2f}")
    print("  (target: no stall above 10 ms at 1 000 000 endpoints)")


async def main(args: argparse.Namespace) -> None:
    print(
        f"event-loop stalls: {args.endpoints:,} endpoints, {args.store} store; "
        f"monitor wakes every {TICK * 1000:.0f} ms"
    )
    if args.store == "memory":
        await run(args, MemoryStore())
        return
    with tempfile.TemporaryDirectory() as directory, RedisServer(Path(directory)) as server:
        store = RedisStore.from_url(server.url())
        try:
            await run(args, store)
        finally:
            await store.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--endpoints", type=int, default=1_000_000)
    parser.add_argument("--store", choices=["memory", "redis"], default="memory")
    options = parser.parse_args()
    if options.endpoints < 1:
        parser.error("--endpoints >= 1")
    asyncio.run(main(options))
