"""The allocation API's limits: per client address, and per pair of keys.

The rules are tested on :class:`AllocationLimits` with a fake clock; then over
a real relay (in this process, its clock held still so that no token refills
behind the test's back), from two client addresses on loopback.
"""

from __future__ import annotations

import json
import time

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.config import RelayConfig
from relay.protocol.allocation import Allocation
from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, raw_pair
from relay.protocol.server_endpoint import ServerEndpoint
from relay.server import RelayServer
from relay.shells.api_limits import AllocationLimits, TooManyRequests
from relay.shells.keyfile import RelaySecrets
from relay.shells.peer import UdpPeer
from relay.store import MemoryStore
from tests.support.waiting import wait_until

# -- the rules, with a fake clock ------------------------------------------------------------


def new_pair() -> bytes:
    return raw_pair((DiscoPrivateKey.generate().public, DiscoPrivateKey.generate().public))


def handed(pair: bytes, vni: int, lamport_id: int) -> Allocation:
    """The allocation the store made for ``pair``: its raw keys a copy of the request's."""
    return Allocation("relay-1", vni, lamport_id, bytes(bytearray(pair)), 0.0)


def refusal(call) -> TooManyRequests | None:
    try:
        call()
    except TooManyRequests as exc:
        return exc
    return None


def test_a_client_gets_its_burst_then_its_rate_and_others_are_apart():
    limits = AllocationLimits(rate=10, burst=20)
    for _ in range(20):
        limits.admit_client("192.0.2.1", 0.0)
    refused = refusal(lambda: limits.admit_client("192.0.2.1", 0.0))
    assert refused is not None and refused.reason == "rate_limited"
    assert refused.retry_after == pytest.approx(0.1)
    assert refused.retry_after_header == "1"
    assert str(refused) == (
        "too many allocation requests from 192.0.2.1: at most 10 a second, 20 at once"
    )
    limits.admit_client("192.0.2.2", 0.0)
    limits.admit_client("192.0.2.1", 0.1)


def never_unbound(vni: int, lamport_id: int) -> bool:
    """No allocation handed out is still unbound: each got bound before the next request."""
    return False


def test_a_pair_may_be_allocated_afresh_max_per_pair_times_then_one_per_share_of_the_period():
    limits = AllocationLimits(max_per_pair=4, pair_period=300.0)
    pair = new_pair()
    for lamport_id in range(1, 5):
        limits.admit_pair(pair, 0.0, never_unbound)
        limits.handed_out(handed(pair, lamport_id, lamport_id))
    refused = refusal(lambda: limits.admit_pair(pair, 10.0, never_unbound))
    assert refused is not None and refused.reason == "pair_limited"
    assert refused.retry_after == pytest.approx(65.0)
    assert refused.retry_after_header == "65"
    assert "at most 4 at once, then one per 1m15s" in str(refused)
    limits.admit_pair(new_pair(), 10.0, never_unbound)
    limits.admit_pair(pair, 75.0, never_unbound)


def test_asking_again_for_the_pairs_unbound_allocation_costs_the_pair_nothing():
    """The store hands such a request the same allocation (docs/protocol.md "Allocation"):
    it makes nothing, and both clients of a pair may ask."""
    limits = AllocationLimits(max_per_pair=1)
    pair = new_pair()
    served_unbound = {(7, 1)}
    limits.admit_pair(pair, 0.0, never_unbound)
    limits.handed_out(handed(pair, 7, 1))
    for _ in range(10):
        limits.admit_pair(pair, 0.0, lambda vni, lamport_id: (vni, lamport_id) in served_unbound)
    served_unbound.clear()  # it got bound: the next request would allocate afresh
    refused = refusal(lambda: limits.admit_pair(pair, 0.0, never_unbound))
    assert refused is not None and refused.reason == "pair_limited"


def test_the_table_of_pairs_handed_out_is_bounded():
    limits = AllocationLimits(max_keys=50)
    for vni in range(1, 500):
        limits.handed_out(handed(new_pair(), vni, vni))
    assert len(limits._handed_out) <= 50


def test_both_tables_hold_a_pair_under_the_allocations_own_bytes_not_the_requests():
    """Up to ``max_keys`` pairs are held: a copy of each would cost 112 B a pair."""
    limits = AllocationLimits()
    request = new_pair()
    limits.admit_pair(request, 0.0, never_unbound)
    allocation = handed(request, 7, 1)
    limits.handed_out(allocation)
    assert limits.last_handed_out(request) is allocation
    (held,) = limits._handed_out
    (bucket,) = limits._pairs._levels
    assert held is allocation.raw_keys and bucket is allocation.raw_keys
    limits.admit_pair(request, 1.0, never_unbound)  # a fresh allocation takes the pair's token
    (bucket,) = limits._pairs._levels
    assert bucket is allocation.raw_keys


# -- over a real relay --------------------------------------------------------------------


class StillClock:
    """A wall clock that moves only when the test moves it."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def still_relay():
    """A relay with the default limits whose clock stands still, and that clock."""
    clock = StillClock()
    config = RelayConfig(listen="127.0.0.1", port=0, api_listen=("127.0.0.1", 0))
    server = RelayServer(config, MemoryStore(), RelaySecrets.generate(), clock=clock)
    await server.start()
    yield server, clock
    await server.close()


def client_from(address: str) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(local_addr=(address, 0)))


async def post(session: aiohttp.ClientSession, server: RelayServer, keys: list[str]):
    url = f"http://{server.api_address}/v0/relay/endpoint"
    async with session.post(url, json={"DiscoKeys": keys}) as response:
        return response.status, await response.text(), response.headers


def new_keys() -> list[str]:
    return [str(DiscoPrivateKey.generate().public) for _ in range(2)]


async def refused_metrics(session: aiohttp.ClientSession, server: RelayServer) -> dict:
    async with session.get(f"http://{server.api_address}/metrics") as response:
        text = await response.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if family.name in ("relayfleet_relay_allocations_refused", "relayfleet_relay_api_errors")
    }


async def test_past_its_burst_one_address_gets_429_with_retry_after_and_another_does_not(
    still_relay,
):
    server, clock = still_relay
    async with client_from("127.0.0.1") as first, client_from("127.0.0.2") as second:
        for _ in range(20):
            status, text, _ = await post(first, server, new_keys())
            assert status == 200, text
        status, text, headers = await post(first, server, new_keys())
        assert status == 429
        assert headers["Retry-After"] == "1"
        assert text == (
            "too many allocation requests from 127.0.0.1: at most 10 a second, 20 at once\n"
        )
        status, text, _ = await post(second, server, new_keys())
        assert status == 200, text
        clock.now += 0.15
        assert (await post(first, server, new_keys()))[0] == 200
        assert (await post(first, server, new_keys()))[0] == 429
        metrics = await refused_metrics(second, server)
    refused = "relayfleet_relay_allocations_refused_total"
    assert metrics[(refused, (("reason", "rate_limited"),))] == 2
    assert metrics[(refused, (("reason", "pair_limited"),))] == 0
    assert metrics[(refused, (("reason", "allocations_off"),))] == 0
    assert metrics[("relayfleet_relay_api_errors_total", (("code", "429"),))] == 2


async def bind_both(server: RelayServer, endpoint: ServerEndpoint, keys) -> None:
    relay = ("127.0.0.1", server.udp_port)
    peers = [await UdpPeer.open("127.0.0.1") for _ in keys]
    try:
        for key, peer in zip(keys, peers, strict=True):
            client = RelayClient(key, endpoint.server_disco, endpoint.vni, protocol=0)
            peer.send(client.bind(), relay)
            peer.send(client.answer(await peer.receive()), relay)
        await wait_until(lambda: server.core.endpoint(endpoint.vni).bound, "bound")
    finally:
        for peer in peers:
            peer.close()


async def test_a_pair_that_binds_and_asks_again_is_refused_its_fifth_fresh_allocation(
    still_relay,
):
    """Each time the pair binds and asks again, the store replaces its endpoint (it never
    holds two); the fifth fresh one within the steady-state lifetime is refused, while
    asking again for the unbound one is not."""
    server, clock = still_relay
    keys = [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
    body = [str(k.public) for k in keys]
    lamport_ids = []
    async with client_from("127.0.0.1") as session:
        for _ in range(4):
            status, text, _ = await post(session, server, body)
            assert status == 200, text
            endpoint = ServerEndpoint.from_json(json.loads(text))
            status, text, _ = await post(session, server, list(reversed(body)))
            assert status == 200 and ServerEndpoint.from_json(json.loads(text)) == endpoint
            lamport_ids.append(endpoint.lamport_id)
            await bind_both(server, endpoint, keys)
        status, text, headers = await post(session, server, body)
        assert status == 429
        assert headers["Retry-After"] == "75"
        assert text == (
            "this pair of keys is allocated afresh too often: at most 4 at once, "
            "then one per 1m15s\n"
        )
        other = await post(session, server, new_keys())
        assert other[0] == 200
        metrics = await refused_metrics(session, server)
        clock.now += 75
        status, text, _ = await post(session, server, body)
        assert status == 200, text
    assert lamport_ids == sorted(set(lamport_ids))
    pair = {k.public for k in keys}
    assert sum(set(e.allocation.disco_keys) == pair for e in server.core.endpoints()) == 1
    refused = "relayfleet_relay_allocations_refused_total"
    assert metrics[(refused, (("reason", "pair_limited"),))] == 1
    assert metrics[(refused, (("reason", "rate_limited"),))] == 0
