"""A relay process on a real redis-server: restarts, kills and outages lose nothing.

The relay runs as ``relayfleet relay --store redis://…`` exactly as a pod
would; the tests kill it, stop Redis under it and bring both back.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey
from relay.shells.peer import UdpPeer
from relay.store.redis import RedisStore
from tests.relay.relay_process import RelayProcess
from tests.support.ports import free_port
from tests.support.redis_server import RedisServer
from tests.support.waiting import wait_until

AOF = ("--save", "", "--appendonly", "yes", "--appendfsync", "always")


@pytest.fixture
def redis_server(tmp_path):
    with RedisServer(tmp_path, args=AOF) as server:
        yield server


def relay_args(server: RedisServer, key_file, port: int, name: str = "relay-a") -> list[str]:
    return [
        "--store", server.url(),
        "--name", name,
        "--key-file", str(key_file),
        "--port", str(port),
        "--addr", "127.0.0.1",
        "--heartbeat-interval", "200ms",
        "--resync-interval", "1s",
    ]  # fmt: skip


class Pair:
    """Two clients of one allocation, with their sockets."""

    def __init__(self, body: dict, keys: list[DiscoPrivateKey], peers: list[UdpPeer]) -> None:
        self.body = body
        self.keys = keys
        server = DiscoPublicKey.parse(body["ServerDisco"])
        self.clients = [RelayClient(k, server, body["VNI"], protocol=0) for k in keys]
        self.peers = peers

    @classmethod
    async def allocate(cls, relay: RelayProcess) -> Pair:
        keys = [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
        status, body = await relay.allocate([str(k.public) for k in keys])
        assert status == 200, body
        return cls(body, keys, [await UdpPeer.open(), await UdpPeer.open()])

    async def bind(self, relay: RelayProcess) -> None:
        for client, peer in zip(self.clients, self.peers, strict=True):
            peer.send(client.bind(), relay.relay)
            peer.send(client.answer(await peer.receive()), relay.relay)

    async def relays(self, relay: RelayProcess, payload: bytes = b"hello") -> bool:
        """Whether data goes both ways now (one packet each way)."""
        for sender in (0, 1):
            self.peers[sender].send(self.clients[sender].data(payload), relay.relay)
            try:
                received = await self.peers[1 - sender].receive(timeout=2.0)
            except TimeoutError:
                return False
            assert self.clients[1 - sender].read_data(received) == payload
        return True

    def close(self) -> None:
        for peer in self.peers:
            peer.close()


async def bound_in_redis(store: RedisStore, name: str, vni: int) -> bool:
    allocation = await store.allocation(name, vni)
    return allocation is not None and allocation.bound


async def test_kill_9_and_restart_loses_nothing(redis_server, tmp_path):
    key_file, port = tmp_path / "relay.key", free_port(socket.SOCK_DGRAM)
    store = RedisStore.from_url(redis_server.url())
    relay = await RelayProcess.start(*relay_args(redis_server, key_file, port))
    pairs = [await Pair.allocate(relay) for _ in range(3)]
    try:
        bound, unbound = pairs[0], pairs[1:]
        await bound.bind(relay)
        assert await bound.relays(relay)
        await wait_until(lambda: bound_in_redis(store, "relay-a", bound.body["VNI"]), "bound")
        lamports = [p.body["LamportID"] for p in pairs]

        await relay.stop(signal.SIGKILL)
        relay = await RelayProcess.start(*relay_args(redis_server, key_file, port))

        assert relay.ready["server_disco"] == pairs[0].body["ServerDisco"]
        for pair in unbound:
            status, again = await relay.allocate([str(k.public) for k in pair.keys])
            assert (status, again) == (200, pair.body)
        fresh = await Pair.allocate(relay)
        pairs.append(fresh)
        assert fresh.body["LamportID"] > max(lamports)
        await bound.bind(relay)
        assert await bound.relays(relay, b"after the restart")
    finally:
        await relay.stop()
        await store.close()
        for pair in pairs:
            pair.close()


async def test_redis_outage_answers_503_keeps_relaying_and_recovers(redis_server, tmp_path):
    key_file, port = tmp_path / "relay.key", free_port(socket.SOCK_DGRAM)
    relay = await RelayProcess.start(*relay_args(redis_server, key_file, port))
    pair = await Pair.allocate(relay)
    try:
        await pair.bind(relay)
        assert await pair.relays(relay)

        redis_server.stop()
        keys = [str(DiscoPrivateKey.generate().public) for _ in range(2)]
        status, reason = await relay.allocate(keys)
        assert status == 503
        assert "store unavailable" in reason
        assert await pair.relays(relay, b"during the outage")

        redis_server.start()

        async def allocates() -> bool:
            return (await relay.allocate(keys))[0] == 200

        await wait_until(allocates, "allocation after Redis is back", timeout=15)
        store = RedisStore.from_url(redis_server.url())
        try:
            await wait_until(
                lambda: _alive(store, "relay-a"), "heartbeat after Redis is back", timeout=15
            )
            assert (await store.allocation("relay-a", pair.body["VNI"])) is not None
        finally:
            await store.close()
        assert await pair.relays(relay, b"after the outage")
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"http://{relay.ready['api']}/metrics").read().decode()
        )
        store_errors = {
            sample.labels["operation"]: sample.value
            for family in text_string_to_metric_families(metrics)
            for sample in family.samples
            if sample.name == "relayfleet_relay_store_errors_total"
        }
        assert store_errors["allocate"] >= 1
        code, log = await relay.stop()
        assert code == 0
        assert "Traceback" not in log
    finally:
        pair.close()
        if relay.process.returncode is None:
            await relay.stop()


async def _alive(store: RedisStore, name: str) -> bool:
    return any(r.name == name and r.alive for r in await store.relays())
