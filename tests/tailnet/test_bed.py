"""The test bed itself: unmodified tailscaled clients and a tailscaled peer relay.

These prove the bed before a relay of ours joins it: clients a and b have no
path to each other but DERP, and a tailscaled relay carries their traffic once
(and only once) the policy grants it the relay capability.
"""

from __future__ import annotations

import json
import socket

import pytest

from tests.support import netns
from tests.support.tailnet import CONTROL_IP, CONTROL_PORT, Node, Tailnet

# Clients take up to a minute to move to a relay path.
pytestmark = pytest.mark.timeout(300)

RELAY_PORT = 40000
# Clients look for relay paths every 30 s and may take a minute to switch.
RELAY_PATH_TIMEOUT = 150.0


def ping(tailnet: Tailnet, source: Node, target: Node) -> str:
    """One ``tailscale ping`` from ``source`` to ``target``: its output, pong or not."""
    return tailnet.tailscale(source, "ping", "--c=1", "--timeout=5s", target.ip,
                             timeout=20, check=False)  # fmt: skip


def ping_saying(tailnet: Tailnet, source: Node, target: Node, text: str) -> str | None:
    """:func:`ping`'s output if it contains ``text``, else None."""
    out = ping(tailnet, source, target)
    return out if text in out else None


def reaches(namespace: str, address: str, port: int) -> bool:
    """Whether a TCP connection from ``namespace`` gets an answer: accepted or refused."""
    with netns.inside(namespace):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(2)
    try:
        sock.connect((address, port))
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        sock.close()
    return True


def relay_servers(tailnet: Tailnet, node: Node) -> list[str]:
    """The tailnet addresses of the peer relays ``node`` may use."""
    return json.loads(tailnet.tailscale(node, "debug", "peer-relay-servers")) or []


def start_bed(tailnet: Tailnet) -> tuple[Node, Node, Node]:
    """Clients a and b and a tailscaled relay serving on RELAY_PORT, all Running."""
    a = tailnet.start_node("a", tailnet.hosts["a"], ["tag:client"])
    b = tailnet.start_node("b", tailnet.hosts["b"], ["tag:client"])
    relay = tailnet.start_node("relay1", tailnet.add_relay_host("r1"), ["tag:relay"])
    tailnet.tailscale(relay, "set", f"--relay-server-port={RELAY_PORT}")
    return a, b, relay


def test_a_granted_tailscaled_relay_carries_a_to_b(tailnet: Tailnet) -> None:
    a, b, relay = start_bed(tailnet)
    tailnet.grant_relay("tag:relay")

    tailnet.wait_for(lambda: relay.ip in relay_servers(tailnet, a),
                     "a to list the relay among its peer relays")  # fmt: skip
    out = tailnet.wait_for(
        lambda: ping_saying(tailnet, a, b, "via peer-relay("),
        "a's ping to b to go via peer-relay(...)",
        timeout=RELAY_PATH_TIMEOUT, interval=2,
    )  # fmt: skip
    relay_addresses = tailnet.hosts["r1"].addresses.values()
    assert any(f"via peer-relay({address}:{RELAY_PORT}:" in out for address in relay_addresses), out


def test_without_the_grant_a_reaches_b_only_via_derp(tailnet: Tailnet) -> None:
    a, b, _relay = start_bed(tailnet)

    out = tailnet.wait_for(lambda: ping_saying(tailnet, a, b, "pong from"), "a pong from b")
    assert "via DERP(" in out, out
    assert relay_servers(tailnet, a) == []


def test_a_and_b_reach_the_control_server_and_a_relay_host_but_not_each_other(
    tailnet: Tailnet,
) -> None:
    a, b = tailnet.hosts["a"], tailnet.hosts["b"]
    relay = tailnet.add_relay_host("r1")
    closed = 9

    for client in (a, b):
        assert reaches(client.namespace, CONTROL_IP, CONTROL_PORT)
        assert reaches(client.namespace, relay.addresses[client.name], closed)
        assert reaches(relay.namespace, client.addresses[client.name], closed)
    assert not reaches(a.namespace, b.addresses["b"], closed)
    assert not reaches(b.namespace, a.addresses["a"], closed)
