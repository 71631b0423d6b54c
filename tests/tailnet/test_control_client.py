"""The control client against a real Headscale: registration, the map poll, grants, resuming.

Each test runs Headscale v0.29.3 (.dev/bin/headscale, from
scripts/build-tailnet) on loopback with embedded DERP and registers nodes
with our client (relay/tailnet/control.py) only; what it asserts, it reads
from Headscale's CLI or from what the client exposes. Loopback is enough for
a control client, so these need no root and no namespaces (the ``headscale``
fixture, not ``tailnet``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from relay.tailnet.control import (
    ControlClient,
    ControlTimeouts,
    Hostinfo,
    NodeIdentity,
    RegistrationRefused,
)
from relay.tailnet.netmap import CAP_RELAY, CAP_RELAY_TARGET, NetMap, Node
from relay.tailnet.node import TailnetNode, TailnetSettings
from tests.support.headscale import REGION_ID, Headscale, default_policy
from tests.support.waiting import wait_until
from tests.tailnet.conftest import USER

TIMEOUTS = ControlTimeouts(connect=10, request=15, map_read=120, retry_min=0.2, retry_max=1.0)


class Member:
    """A node of ours in the tailnet: a client that registered, and its map poll in a task."""

    def __init__(self, headscale: Headscale, hostname: str, *, relay: bool = False) -> None:
        self.headscale = headscale
        self.identity = NodeIdentity.generate()
        self.client = ControlClient(
            headscale.url,
            self.identity,
            Hostinfo(hostname=hostname, peer_relay=relay),
            timeouts=TIMEOUTS,
        )
        self.task: asyncio.Task[None] | None = None
        self.error: BaseException | None = None

    async def register(self, auth_key: str | None) -> None:
        await self.client.register(auth_key)

    def follow(self) -> None:
        self.task = asyncio.create_task(self._follow())

    async def _follow(self) -> None:
        try:
            async for _ in self.client.maps():
                pass
        except Exception as error:
            self.error = error
            raise

    async def until(
        self, condition: Callable[[NetMap], Any], what: str, timeout: float = 30
    ) -> Any:
        """Wait until the client's net map satisfies ``condition``; its truthy result."""

        def check() -> Any:
            if self.error is not None:
                raise AssertionError(f"the map poll failed: {self.error!r}")
            netmap = self.client.netmap
            return netmap is not None and condition(netmap)

        return await wait_until(check, what, timeout=timeout, interval=0.05, log=self.headscale.log)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self.client.close()


@pytest.fixture
async def members(headscale: Headscale) -> AsyncIterator[Callable[..., Member]]:
    """Makes :class:`Member` nodes; closes them all after the test."""
    made: list[Member] = []

    def make(hostname: str, *, relay: bool = False) -> Member:
        member = Member(headscale, hostname, relay=relay)
        made.append(member)
        return member

    yield make
    for member in made:
        await member.close()


def key_for(headscale: Headscale, tag: str) -> str:
    return headscale.create_auth_key(headscale.user_id(USER), [tag])


def listed(headscale: Headscale, member: Member) -> dict[str, Any] | None:
    node_key = str(member.client.node_key)
    return next((n for n in headscale.nodes() if n.get("node_key") == node_key), None)


def peer_named(netmap: NetMap, member: Member) -> Node | None:
    return netmap.peer_by_key(member.client.node_key)


async def test_a_tagged_pre_auth_key_registers_the_node(headscale, members):
    relay = members("relay-one", relay=True)
    registration = await relay.client.register(key_for(headscale, "tag:relay"))

    assert registration.machine_authorized
    node = listed(headscale, relay)
    assert node is not None, headscale.nodes()
    assert node["name"] == "relay-one"
    assert "tag:relay" in node.get("tags", [])
    assert node["machine_key"] == str(relay.identity.machine_key.public)


async def test_a_bad_pre_auth_key_is_refused_clearly(headscale, members):
    relay = members("relay-bad")
    with pytest.raises(RegistrationRefused) as refused:
        await relay.client.register("not-a-key-" + "0" * 38)

    assert "refused the registration" in str(refused.value)
    assert refused.value.reason
    assert listed(headscale, relay) is None


async def test_the_map_brings_our_addresses_the_derp_map_and_later_peers(headscale, members):
    relay = members("relay-map", relay=True)
    await relay.register(key_for(headscale, "tag:relay"))
    relay.follow()

    netmap = await relay.until(lambda m: m.self_node and m.derp_map and m, "the first map")
    node = listed(headscale, relay)
    assert {str(a.ip) for a in netmap.self_node.addresses} == set(node["ip_addresses"])
    assert all(ipaddress.ip_address(a) in ipaddress.ip_network("100.64.0.0/10")
               for a in node["ip_addresses"] if ":" not in a)  # fmt: skip
    region = netmap.derp_map.regions[REGION_ID]
    (derp,) = region.nodes
    assert (derp.host_name, derp.ipv4) == (headscale.address, headscale.address)
    assert (derp.derp_port, derp.stun_port) == (headscale.ports.http, headscale.ports.stun)
    assert netmap.peers == {}

    client = members("client-later")
    await client.register(key_for(headscale, "tag:client"))
    client.follow()
    # It appears once registered, and its disco key comes when it polls: both deltas.
    peer = await relay.until(
        lambda m: (p := peer_named(m, client)) and p.disco_key is not None and p,
        "the later node as a peer, with its disco key",
    )
    assert peer.disco_key == client.identity.disco_key.public
    assert peer.addresses and peer.cap >= 121
    assert relay.client.netmap.messages > 1  # it came as a delta on the same poll
    assert relay.client.polls == 1

    # The relay told Headscale its home DERP region and that it relays; peers see both.
    seen = await client.until(
        lambda m: (p := peer_named(m, relay)) and p.home_derp == REGION_ID and p,
        "the relay's home DERP region at the client",
    )
    assert seen.peer_relay
    assert seen.disco_key == relay.identity.disco_key.public


async def test_a_relay_grant_shows_which_peers_may_ask_the_relay(headscale, members):
    relay = members("relay-granted", relay=True)
    await relay.register(key_for(headscale, "tag:relay"))
    client = members("client-granted")
    await client.register(key_for(headscale, "tag:client"))
    relay.follow()
    client.follow()
    await relay.until(lambda m: peer_named(m, client), "the client as the relay's peer")
    assert relay.client.netmap.relay_clients() == []

    headscale.set_policy(default_policy([USER], relay_grants=[("tag:client", "tag:relay")]))

    clients = await relay.until(lambda m: m.relay_clients(), "the granted client at the relay")
    assert [p.key for p in clients] == [client.client.node_key]
    # The client's side: the companion grant names the relay as a relay it may use.
    await client.until(
        lambda m: (
            (p := peer_named(m, relay)) and CAP_RELAY_TARGET in m.capabilities(p, m.self_node)
        ),
        "the relay-target grant at the client",
    )

    headscale.set_policy(default_policy([USER]))
    await relay.until(lambda m: not m.relay_clients(), "the grant to be withdrawn")
    peer = peer_named(relay.client.netmap, client)
    assert not relay.client.netmap.granted(peer, CAP_RELAY)


async def test_the_map_poll_resumes_after_headscale_restarts(headscale, members):
    relay = members("relay-resume", relay=True)
    await relay.register(key_for(headscale, "tag:relay"))
    relay.follow()
    await relay.until(lambda m: m.self_node, "the first map")
    first = relay.client.netmap

    headscale.restart()

    await relay.until(
        lambda m: m is not first and m.self_node and relay.client.polls >= 2, "a new map poll"
    )
    assert relay.client.netmap.self_node.addresses == first.self_node.addresses
    client = members("client-after-restart")
    await client.register(key_for(headscale, "tag:client"))
    client.follow()
    await relay.until(
        lambda m: (p := peer_named(m, client)) and p.disco_key == client.identity.disco_key.public,
        "a node registered after the restart, with its disco key",
    )


def test_relayfleet_relay_refused_by_the_control_server_says_so(headscale, tmp_path):
    bad_key = tmp_path / "auth-key"
    bad_key.write_text("not-a-key-headscale-knows\n")
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "relayfleet"), "relay", "--port", "0",
            "--api-listen", "off", "--fast-path", "off",
            "--tailnet-login-server", headscale.url,
            "--tailnet-auth-key-file", str(bad_key),
        ],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "cannot join the tailnet" in result.stderr
    assert "not-a-key-headscale-knows" not in result.stderr


async def test_a_known_node_registers_again_after_its_pre_auth_key_expired(headscale, members):
    """A relay pod restarted days later still holds the pre-auth key it first joined with
    (the chart mounts it), long expired: the node the server knows must register anyway."""
    relay = members("relay-restarted", relay=True)
    user = headscale.user_id(USER)
    short_lived = headscale.create_auth_key(user, ["tag:relay"], expiration="2s")
    await relay.register(short_lived)

    async def expired() -> bool:
        stranger = members("stranger")
        try:
            await stranger.register(short_lived)
        except RegistrationRefused:
            return True
        return False

    await wait_until(expired, "the pre-auth key to expire", timeout=30, interval=0.5)
    again = ControlClient(headscale.url, relay.identity, Hostinfo(hostname="relay-restarted"),
                          timeouts=TIMEOUTS)  # fmt: skip
    try:
        registration = await again.register(short_lived)
    finally:
        await again.close()
    assert registration.machine_authorized


async def test_a_node_the_server_forgot_registers_again_and_follows_the_map(headscale):
    """An admin deleted the relay's node (``headscale nodes delete``): its next map poll is
    refused, and the relay's node registers again with its pre-auth key and polls on."""

    async def allocate(a, b):
        raise AssertionError("no allocation is asked for here")

    settings = TailnetSettings(
        headscale.url, "relay-forgotten", key_for(headscale, "tag:relay"), NodeIdentity.generate()
    )
    node = TailnetNode(settings, allocate)
    await node.start()
    try:
        await wait_until(lambda: node.netmap is not None, "the first map")
        node_key = str(settings.identity.node_key.public)
        first = next(n for n in headscale.nodes() if n["node_key"] == node_key)
        headscale.cli("nodes", "delete", "--identifier", str(first["id"]), "--force")
        # Headscale keeps a deleted node's open poll; the next one (after a restart here, a
        # network blip anywhere) is refused.
        headscale.restart()

        def listed_again():
            nodes = [n for n in headscale.nodes() if n["node_key"] == node_key]
            return nodes and nodes[0]["id"] != first["id"] and nodes[0]

        again = await wait_until(listed_again, "the node registered again", interval=0.5)
        await wait_until(lambda: node.registrations == 1, "the node to see itself registered")
        await wait_until(
            lambda: node.netmap.self_node and node.netmap.self_node.id == int(again["id"]),
            "the map of the node as registered again",
        )
        assert again["name"] == "relay-forgotten" and "tag:relay" in again.get("tags", [])
    finally:
        await node.close()
