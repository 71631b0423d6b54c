"""``relayfleet relay --workers 2`` over real UDP and a real Redis: endpoints on every worker
relay, one /metrics and one registry entry sum the workers, a worker killed with kill -9
comes back with its endpoints, SIGTERM writes every worker's pending state."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from relay.config import RelayConfig, usable_cpus, workers_count
from relay.protocol.core import RelayCore
from relay.protocol.keys import DiscoPrivateKey, raw_pair, sorted_pair
from relay.shells.peer import UdpPeer
from relay.shells.reuseport import worker_for_vni
from relay.store import Allocation
from relay.store.redis import RedisStore
from relay.workers import EndpointChanges, WorkersView
from tests.relay.relay_process import RelayProcess
from tests.relay.test_relay_redis import Pair
from tests.support.paths import RELAYFLEET
from tests.support.waiting import wait_until

WORKERS = 2
NAME = "multi"


async def start_relay(redis_server, tmp_path) -> RelayProcess:
    return await RelayProcess.start(
        "--workers", str(WORKERS), "--store", redis_server.url(), "--name", NAME,
        "--key-file", str(tmp_path / "relay.key"), "--addr", "127.0.0.1",
        "--report-status", "off", "--heartbeat-interval", "200ms", "--resync-interval", "1s",
        log=tmp_path / "relay.log",
    )  # fmt: skip


def metrics(relay: RelayProcess) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://{relay.ready['api']}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def endpoints(relay: RelayProcess, state: str) -> float:
    return metrics(relay).get(("relayfleet_relay_endpoints", (("state", state),)), 0.0)


def worker_pids(relay: RelayProcess) -> dict[int, int]:
    """Each worker's latest pid, from the relay's log."""
    started = re.findall(r"worker (\d+) of \d+ started \(pid (\d+)\)", relay.log.read_text())
    return {int(index): int(pid) for index, pid in started}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def pairs_on_every_worker(store: RedisStore, relay: RelayProcess, each: int) -> list[Pair]:
    """Allocations made in the store (as the operator makes them) until every worker owns
    ``each`` of them, and their clients."""
    pairs: list[Pair] = []
    owned = dict.fromkeys(range(WORKERS), 0)
    while min(owned.values()) < each:
        keys = [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
        pair_keys = sorted_pair((keys[0].public, keys[1].public))
        allocation = (await store.allocate(NAME, pair_keys, time.time())).allocation
        worker = worker_for_vni(allocation.vni, WORKERS)
        if owned[worker] == each:
            await store.free(NAME, [(allocation.vni, allocation.lamport_id)])
            continue
        owned[worker] += 1
        body = {"ServerDisco": relay.ready["server_disco"], "VNI": allocation.vni}
        pairs.append(Pair(body, keys, [await UdpPeer.open(), await UdpPeer.open()]))
    return pairs


async def bind_once_installed(
    relay: RelayProcess, pairs: list[Pair], payload: bytes | None = None
) -> None:
    """Once the workers serve every pair's endpoint, both clients of each bind; with a
    ``payload``, each pair then relays it both ways."""
    count = len(pairs)
    await wait_until(lambda: endpoints(relay, "allocated") == count, f"{count} endpoints installed")
    for pair in pairs:
        await pair.bind(relay)
        if payload is not None:
            assert await pair.relays(relay, payload)


async def test_endpoints_on_every_worker_relay_and_the_relay_sums_them(
    redis_server, store, tmp_path
):
    relay = await start_relay(redis_server, tmp_path)
    pairs = await pairs_on_every_worker(store, relay, each=3)
    try:
        await bind_once_installed(relay, pairs, b"through a worker")
        sums = await wait_until(
            lambda: (
                (m := metrics(relay))[("relayfleet_relay_forwarded_packets_total", ())] == 12 and m
            ),
            "the relay's /metrics summing both workers' packets",
        )
        assert sums[("relayfleet_relay_endpoints", (("state", "bound"),))] == 6
        assert sum(1 for name, _ in sums if name == "relayfleet_relay_info") == 1

        records = await wait_until(
            lambda: _one_record_with_load(store, 6), "one registry entry with the load of both"
        )
        assert str(records[0].server_disco) == relay.ready["server_disco"]
    finally:
        await relay.stop()
        for pair in pairs:
            pair.close()


async def test_the_api_allocates_on_every_worker_and_lists_every_workers_endpoints(
    redis_server, tmp_path
):
    relay = await start_relay(redis_server, tmp_path)
    pairs = [await Pair.allocate(relay) for _ in range(6)]
    try:
        assert {worker_for_vni(p.body["VNI"], WORKERS) for p in pairs} == {0, 1}
        for _ in range(5):  # the same unbound endpoint back, past the pair's limit of 4
            status, same = await relay.allocate([str(k.public) for k in reversed(pairs[1].keys)])
            assert status == 200 and same == pairs[1].body
        for pair in pairs:  # answered once served: the first bind never races the store
            await pair.bind(relay)
            assert await pair.relays(relay, b"allocated through the parent")
        status, again = await relay.allocate([str(k.public) for k in pairs[0].keys])
        assert status == 200 and again["VNI"] != pairs[0].body["VNI"]  # bound: allocated afresh
        with urllib.request.urlopen(
            f"http://{relay.ready['api']}/v0/relay/endpoints", timeout=5
        ) as response:
            listed = json.load(response)
        assert listed["ServerDisco"] == relay.ready["server_disco"]
        vnis = {e["VNI"] for e in listed["Endpoints"]}
        assert vnis == {p.body["VNI"] for p in pairs[1:]} | {again["VNI"]}
    finally:
        await relay.stop()
        for pair in pairs:
            pair.close()


async def _one_record_with_load(store: RedisStore, load: int):
    records = [r for r in await store.relays() if r.name == NAME]
    return len(records) == 1 and records[0].load == load and records


async def test_a_worker_killed_comes_back_with_its_endpoints(redis_server, store, tmp_path):
    relay = await start_relay(redis_server, tmp_path)
    pairs = await pairs_on_every_worker(store, relay, each=2)
    try:
        await bind_once_installed(relay, pairs, b"hello")
        victim = worker_pids(relay)[1]
        os.kill(victim, signal.SIGKILL)
        await wait_until(
            lambda: worker_pids(relay)[1] != victim, "worker 1 started again", log=relay.log
        )
        for pair in pairs:
            if worker_for_vni(pair.body["VNI"], WORKERS) == 0:
                assert await pair.relays(relay, b"worker 0 never stopped")

        async def bound_again(pair: Pair) -> bool:
            try:
                await pair.bind(relay)
            except TimeoutError:
                return False
            return await pair.relays(relay, b"back on worker 1")

        for pair in pairs:
            if worker_for_vni(pair.body["VNI"], WORKERS) == 1:
                await wait_until(lambda p=pair: bound_again(p), "an endpoint of worker 1 again")
        assert "worker 1 (pid" in relay.log.read_text()
    finally:
        await relay.stop()
        for pair in pairs:
            pair.close()


async def test_sigterm_writes_every_workers_pending_state_and_leaves_no_worker(
    redis_server, store, tmp_path
):
    relay = await start_relay(redis_server, tmp_path)
    pairs = await pairs_on_every_worker(store, relay, each=2)
    try:
        await bind_once_installed(relay, pairs)
        pids = worker_pids(relay)
        code, log = await relay.stop(signal.SIGTERM)
        assert code == 0, log
        assert not any(alive(pid) for pid in pids.values())
        for pair in pairs:
            allocation = await store.allocation(NAME, pair.body["VNI"])
            assert allocation is not None and allocation.bound, pair.body
    finally:
        for pair in pairs:
            pair.close()


async def test_workers_die_with_a_parent_killed_by_sigkill(redis_server, tmp_path):
    relay = await start_relay(redis_server, tmp_path)
    pids = worker_pids(relay)
    assert len(pids) == WORKERS
    await relay.stop(signal.SIGKILL)
    await wait_until(lambda: not any(alive(pid) for pid in pids.values()), "no worker left")


def test_workers_without_a_shared_store_are_refused_with_a_message():
    done = subprocess.run(
        [RELAYFLEET, "relay", "--workers", "2"],
        capture_output=True, text=True, timeout=30,
        env={k: v for k, v in os.environ.items() if not k.startswith(("RELAYFLEET", "KUBE"))},
    )  # fmt: skip
    assert done.returncode == 2 and "needs a Redis store" in done.stderr, done.stderr


def test_auto_is_the_cpus_this_process_may_use_and_one_with_the_memory_store():
    assert workers_count("auto") is None and workers_count("3") == 3
    assert RelayConfig().workers is None
    assert RelayConfig().worker_count() == 1
    shared = RelayConfig(store="redis://127.0.0.1")
    assert shared.worker_count() == min(usable_cpus(), 64) <= len(os.sched_getaffinity(0))
    assert RelayConfig(store="redis://127.0.0.1", workers=1).worker_count() == 1


def _core_with(vnis: list[int]) -> RelayCore:
    core = RelayCore(DiscoPrivateKey.generate(), bytes(32))
    for vni in vnis:
        keys = sorted_pair((DiscoPrivateKey.generate().public, DiscoPrivateKey.generate().public))
        core.install(Allocation(NAME, vni, vni, raw_pair(keys), 1000.0), 1000.0)
    return core


def test_a_worker_sends_its_endpoints_once_then_only_what_changed():
    core = _core_with([2, 4, 6])
    changes = EndpointChanges(core)
    first = changes.take()
    assert first["full"] and {e.allocation.vni for e in first["changed"]} == {2, 4, 6}
    assert changes.take() == {"full": False, "changed": [], "removed": [], "expired": []}
    core.endpoint(4).touch()[0].packets = 7
    core.remove(6, 6)
    expired = [core.endpoint(2)]
    changes.note_expired(expired)
    later = pickle.loads(pickle.dumps(changes.take()))  # as it travels to the parent
    assert [e.allocation.vni for e in later["changed"]] == [4]
    assert later["changed"][0].clients[0].packets == 7
    assert later["removed"] == [6]
    assert [e.allocation.vni for e in later["expired"]] == [2]


class FakePool:
    count = 2

    def __init__(self) -> None:
        self.answers: dict[int, dict | None] = {}

    async def changes(self, index: int) -> dict | None:
        return self.answers.get(index)


async def test_the_parents_copy_follows_each_worker_and_a_restarted_one_replaces_its_own():
    pool = FakePool()
    view = WorkersView(pool)
    worker_0, worker_1 = EndpointChanges(_core_with([2, 4])), EndpointChanges(_core_with([1, 3]))
    pool.answers = {0: worker_0.take(), 1: worker_1.take()}
    expired: list = []
    await view.refresh(expired.extend)
    assert all(view.endpoint(vni) is not None for vni in (1, 2, 3, 4))

    restarted = EndpointChanges(_core_with([3]))  # worker 1 again: VNI 1 is gone
    pool.answers = {0: None, 1: restarted.take()}
    await view.refresh(expired.extend)
    assert view.endpoint(1) is None and view.endpoint(3) is not None
    assert view.endpoint(2) is not None  # worker 0 did not answer: what was known stays
    assert expired == []
