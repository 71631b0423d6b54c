"""Our relay as the only peer relay of a tailnet of unmodified tailscaled clients.

``relayfleet relay --tailnet-login-server ...`` runs in a namespace of the
bed that reaches both clients; Headscale's policy grants clients
``tailscale.com/cap/relay`` toward it. The clients must find it among their
peer relays, ask it for endpoints over DERP (disco 0x08, answered 0x09 by
relay/tailnet/peer_relay.py), bind to it over UDP and ping each other through
it: ``tailscale ping`` says ``via peer-relay(<our address>:<port>:vni:N)``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from relay.protocol import disco
from relay.protocol.keys import DiscoPrivateKey
from relay.resource.definition import ORIGIN_LABEL, TAILNET_ORIGIN
from relay.tailnet.control import ControlClient, Hostinfo, NodeIdentity
from relay.tailnet.derp_client import DerpConnection
from relay.tailnet.identity_file import load_or_create_identity
from relay.tailnet.netmap import Node as MapNode
from tests.support import netns
from tests.support.tailnet import (
    CONTROL_IP,
    CONTROL_PORT,
    LOGIN_SERVER,
    Host,
    Node,
    Process,
    Tailnet,
    TailnetError,
    send_over_the_tailnet,
)
from tests.tailnet.test_bed import RELAY_PATH_TIMEOUT, ping_saying, relay_servers

# Clients take up to a minute to move to a relay path, and some tests wait for two moves.
pytestmark = pytest.mark.timeout(400)

RELAY_PORT = 40001
METRICS_PORT = 9109
TRANSFER_BYTES = 100 * 1000 * 1000
TRANSFER_TIMEOUT = 120.0


def start_our_relay(
    tailnet: Tailnet,
    host: Host,
    directory: Path,
    *,
    with_auth_key: bool = True,
    fast_path: str = "off",
    workers: int = 1,
    store: str = "memory",
    fleet: tuple[str, ...] | list[str] = (),
) -> Process:
    """Our relay in ``host``'s namespace, its keys (relay and tailnet node) in ``directory``,
    so that a relay started again there is the same relay and the same node; a node the
    control server knows needs no pre-auth key (``with_auth_key=False``). ``fleet``: more
    flags (its name, reporting to Kubernetes)."""
    auth_key = directory / "auth-key"
    auth = ["--tailnet-auth-key-file", str(auth_key)] if with_auth_key else []
    if with_auth_key:
        auth_key.write_text(tailnet.preauth_key("tag:relay") + "\n")
    addrs = [arg for address in host.addresses.values() for arg in ("--addr", address)]
    relay = tailnet.spawn(
        f"our-relay-{len(tailnet.processes)}",
        host.namespace,
        [
            str(Path(sys.executable).parent / "relayfleet"), "relay",
            "--listen", "0.0.0.0", "--port", str(RELAY_PORT), *addrs,
            "--api-listen", "off", "--metrics-listen", f"127.0.0.1:{METRICS_PORT}",
            "--fast-path", fast_path, "--workers", str(workers), "--store", store,
            "--key-file", str(directory / "relay-keys"),
            "--tailnet-login-server", LOGIN_SERVER,
            *auth,
            "--tailnet-key-file", str(directory / "tailnet-keys"),
            "--tailnet-hostname", "our-relay", "--log-level", "debug", *fleet,
        ],
    )  # fmt: skip
    tailnet.wait_for(lambda: ready(relay), "our relay to start", timeout=60)
    return relay


def ready(relay: Process) -> bool:
    """Whether our relay printed its ready line; its log in the error if it exited."""
    if not relay.running():
        raise TailnetError(f"our relay exited\n{relay.tail()}")
    return '"ready": true' in relay.log.read_text()


def metrics_text(host: Host) -> str:
    """Our relay's /metrics, read inside its namespace."""
    with netns.inside(host.namespace):
        url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()


def metric(host: Host, name: str, labels: str) -> float:
    """One sample of our relay's /metrics (0 when absent)."""
    text = metrics_text(host)
    sample = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(sample):
            return float(line.split()[-1])
    return 0.0


def our_relay_path(tailnet: Tailnet, source: Node, target: Node, host: Host) -> str:
    out = tailnet.wait_for(
        lambda: ping_saying(tailnet, source, target, "via peer-relay("),
        f"{source.name}'s ping to {target.name} to go via a peer relay",
        timeout=RELAY_PATH_TIMEOUT, interval=2,
    )  # fmt: skip
    assert any(
        f"via peer-relay({address}:{RELAY_PORT}:vni:" in out for address in host.addresses.values()
    ), out
    return out


def test_clients_ping_each_other_through_our_relay_until_the_grant_goes(
    tailnet: Tailnet, tmp_path: Path
) -> None:
    a = tailnet.start_node("a", tailnet.hosts["a"], ["tag:client"])
    b = tailnet.start_node("b", tailnet.hosts["b"], ["tag:client"])
    host = tailnet.add_relay_host("r1")
    relay = start_our_relay(tailnet, host, tmp_path)
    tailnet.grant_relay("tag:relay")

    tailnet.wait_for(lambda: relay_servers(tailnet, a), "a to list our relay as a peer relay")
    our_relay_path(tailnet, a, b, host)
    our_relay_path(tailnet, b, a, host)
    answered = metric(host, "relayfleet_relay_tailnet_allocation_requests_total",
                      'result="answered"')  # fmt: skip
    assert answered >= 1
    assert metric(host, "relayfleet_relay_tailnet_connected", 'part="derp"') == 1
    assert metric(host, "relayfleet_relay_tailnet_relay_clients", "") == 2

    tailnet.ungrant_relay("tag:relay")
    tailnet.wait_for(lambda: metric(host, "relayfleet_relay_tailnet_relay_clients", "") == 0,
                     "our relay to see the grant gone")  # fmt: skip
    tailnet.wait_for(lambda: not relay_servers(tailnet, a), "a to forget our relay")
    tailnet.stop_node(a)  # a new client in a's place: its paths are all new
    c = tailnet.start_node("c", tailnet.hosts["a"], ["tag:client"])
    assert relay_servers(tailnet, c) == []
    tailnet.wait_for(lambda: ping_saying(tailnet, c, b, "via DERP("), "c's ping to b via DERP",
                     timeout=RELAY_PATH_TIMEOUT, interval=2)  # fmt: skip

    # The node's keys and the pre-auth key stay in their files: in no log line (debug
    # level) and no metric.
    keys = load_or_create_identity(tmp_path / "tailnet-keys")[0]
    secrets = [k.raw.hex() for k in (keys.machine_key, keys.node_key, keys.disco_key)]
    secrets.append((tmp_path / "auth-key").read_text().strip())
    shown = relay.log.read_text() + metrics_text(host)
    assert "DEBUG" in shown
    assert [secret for secret in secrets if secret in shown] == []


@pytest.mark.parametrize("fast_path", ["off", "auto"])
def test_100_mb_through_our_relay_and_its_counter_agrees(
    tailnet: Tailnet, tmp_path: Path, fast_path: str
) -> None:
    """With the kernel fast path on, the bound endpoint's packets are relayed by nftables
    and counted there; the relay's counter includes them."""
    a = tailnet.start_node("a", tailnet.hosts["a"], ["tag:client"])
    b = tailnet.start_node("b", tailnet.hosts["b"], ["tag:client"])
    host = tailnet.add_relay_host("r1")
    start_our_relay(tailnet, host, tmp_path, fast_path=fast_path)
    tailnet.grant_relay("tag:relay")
    our_relay_path(tailnet, a, b, host)
    our_relay_path(tailnet, b, a, host)

    if fast_path == "auto":
        tailnet.wait_for(lambda: metric(host, "relayfleet_relay_fast_path_endpoints", "") >= 1,
                         "the kernel to relay the bound endpoint")  # fmt: skip
    before = metric(host, "relayfleet_relay_forwarded_bytes_total", "")
    assert send_over_the_tailnet(a, b, TRANSFER_BYTES) == TRANSFER_BYTES
    # The kernel's counts reach the metric at the fast path's next poll.
    relayed = tailnet.wait_for(
        lambda: (n := metric(host, "relayfleet_relay_forwarded_bytes_total", "") - before)
        >= TRANSFER_BYTES and n,
        "the relay's byte counter to count the transfer",
    )  # fmt: skip
    # WireGuard and TCP add headers and b's acks come back through the relay too.
    assert relayed <= TRANSFER_BYTES * 1.2, relayed


def test_killed_clients_fall_back_to_derp_and_return_to_it_restarted(
    tailnet: Tailnet, tmp_path: Path
) -> None:
    a = tailnet.start_node("a", tailnet.hosts["a"], ["tag:client"])
    b = tailnet.start_node("b", tailnet.hosts["b"], ["tag:client"])
    host = tailnet.add_relay_host("r1")
    relay = start_our_relay(tailnet, host, tmp_path)
    tailnet.grant_relay("tag:relay")
    our_relay_path(tailnet, a, b, host)

    relay.popen.kill()
    relay.popen.wait()
    tailnet.wait_for(lambda: ping_saying(tailnet, a, b, "via DERP("), "a's ping to go via DERP",
                     timeout=RELAY_PATH_TIMEOUT, interval=2)  # fmt: skip
    start_our_relay(tailnet, host, tmp_path, with_auth_key=False)
    our_relay_path(tailnet, a, b, host)


def in_namespace(namespace: str, coroutine_function) -> None:
    """Run an asyncio program in a thread of its own inside ``namespace`` (its sockets are
    made there), and wait for it; its exception is raised here."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            with netns.inside(namespace):
                asyncio.run(asyncio.wait_for(coroutine_function(), TRANSFER_TIMEOUT))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(TRANSFER_TIMEOUT + 10)
    if failure:
        raise failure[0]


async def our_relay_in_the_map(control: ControlClient) -> MapNode:
    async for netmap in control.maps():
        for peer in netmap.peers.values():
            if peer.hostname == "our-relay" and peer.disco_key is not None:
                return peer
    raise AssertionError("the map poll ended")


def test_what_no_grant_allows_gets_no_endpoint_and_is_counted(tailnet: Tailnet, tmp_path: Path):
    """A tailnet peer that the policy does not grant the relay cap (tagged tag:relay, as
    relays are) asks anyway, as does a request sealed to the wrong key and garbage: our
    relay answers none and counts each by its rule."""
    host = tailnet.add_relay_host("r1")
    start_our_relay(tailnet, host, tmp_path)
    tailnet.grant_relay("tag:relay")
    auth_key = tailnet.preauth_key("tag:relay")
    asker = DiscoPrivateKey.generate()

    identity = dataclasses.replace(NodeIdentity.generate(), disco_key=asker)
    relay: list[MapNode] = []

    async def join_and_find_our_relay() -> None:
        control = ControlClient(LOGIN_SERVER, identity, Hostinfo(hostname="asker"))
        try:
            await control.register(auth_key)
            relay.append(await our_relay_in_the_map(control))
        finally:
            await control.close()

    async def ask_without_the_grant() -> None:
        connection = await DerpConnection.open(CONTROL_IP, CONTROL_PORT, identity.node_key.raw)
        other = DiscoPrivateKey.generate().public.raw
        request = disco.AllocateUDPRelayEndpointRequest((asker.public.raw, other), 1)
        for sealed_to in (relay[0].disco_key, DiscoPrivateKey.generate().public):
            frame = disco.seal(asker.public.raw, asker.shared(sealed_to), request)
            connection.send(relay[0].key.raw, frame)
        connection.send(relay[0].key.raw, b"not a disco frame" * 4)
        await connection.drain()
        await connection.close()

    in_namespace(tailnet.hosts["a"].namespace, join_and_find_our_relay)
    tailnet.wait_for(lambda: metric(host, "relayfleet_relay_tailnet_peers", "") == 1,
                     "our relay to know the asker's disco key")  # fmt: skip
    in_namespace(tailnet.hosts["a"].namespace, ask_without_the_grant)
    requests = "relayfleet_relay_tailnet_allocation_requests_total"
    for rule in ("not_granted", "undecryptable", "not_disco"):
        tailnet.wait_for(lambda rule=rule: metric(host, requests, f'result="{rule}"') == 1,
                         f"our relay to count one {rule} drop")  # fmt: skip
    assert metric(host, requests, 'result="answered"') == 0


def tailnet_endpoints(control_plane, namespace: str) -> list[dict]:
    result = control_plane.kubectl(
        "-n", namespace, "get", "rep", "-l", f"{ORIGIN_LABEL}={TAILNET_ORIGIN}", "-o", "json"
    )  # fmt: skip
    return json.loads(result.stdout)["items"]


def test_a_fleet_relay_of_two_workers_serves_the_tailnet_and_shows_it_bound(
    tailnet: Tailnet, tmp_path: Path, crd, operator, redis_server, kube_namespace
) -> None:
    """A relay of a fleet (Redis store, reporting to Kubernetes, an operator beside it) with
    two workers: the tailnet node runs in the parent, each endpoint it hands out is served
    by the worker its VNI steers to, and a RelayEndpoint labelled with its tailnet origin
    shows it Bound. The relay's namespace reaches the host's Redis and API server through
    forwards (tests/support/netns.py)."""
    control_plane = crd  # the session's API server, with the fleet's CRDs applied
    a = tailnet.start_node("a", tailnet.hosts["a"], ["tag:client"])
    b = tailnet.start_node("b", tailnet.hosts["b"], ["tag:client"])
    host = tailnet.add_relay_host("r1")
    apiserver = ("127.0.0.1", control_plane.ports["apiserver"])
    with (
        netns.forward_into(host.namespace, ("127.0.0.1", redis_server.port)) as redis,
        netns.forward_into(host.namespace, apiserver) as api,
    ):
        kubeconfig = netns.write_forwarded_kubeconfig(
            control_plane.kubeconfig, api.port, tmp_path / "kubeconfig"
        )
        start_our_relay(
            tailnet, host, tmp_path, workers=2,
            store=redis_server.url().replace(f":{redis_server.port}/", f":{redis.port}/"),
            fleet=["--name", "our-relay", "--report-status", "on", "--report-interval", "500ms",
                   "--kubeconfig", str(kubeconfig), "--tailnet-namespace", kube_namespace],
        )  # fmt: skip
        tailnet.grant_relay("tag:relay")
        our_relay_path(tailnet, a, b, host)
        our_relay_path(tailnet, b, a, host)
        requests = "relayfleet_relay_tailnet_allocation_requests_total"
        assert metric(host, requests, 'result="answered"') >= 1
        assert metric(host, "relayfleet_relay_handshakes_completed_total", 'version="1"') >= 2

        def bound() -> list[dict]:
            return [
                item for item in tailnet_endpoints(control_plane, kube_namespace)
                if item.get("status", {}).get("phase") == "Bound"
            ]  # fmt: skip

        shown = tailnet.wait_for(bound, "a RelayEndpoint to show the tailnet endpoint Bound")
    # One pair, one resource: a pair allocated afresh after binding (clients ask again) moves
    # its resource to the new VNI rather than making another.
    assert len(shown) == 1 and len(tailnet_endpoints(control_plane, kube_namespace)) == 1
    status = shown[0]["status"]
    assert status["relay"] == "our-relay" and status["clientsBound"] == "2/2"
