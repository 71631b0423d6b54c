"""The RelayEndpoint a relay makes for a tailnet allocation: its name, labels and spec."""

import re

from relay.protocol.keys import DiscoPrivateKey
from relay.resource.definition import ORIGIN_LABEL, RELAY_LABEL, TAILNET_ORIGIN
from relay.resource.tailnet_endpoint import from_tailnet, tailnet_endpoint, tailnet_endpoint_name

A, B, C = (DiscoPrivateKey.generate().public for _ in range(3))
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def test_one_name_per_relay_and_pair_in_either_order():
    name = tailnet_endpoint_name("relay-0", (A, B))
    assert name == tailnet_endpoint_name("relay-0", (B, A))
    assert name.startswith("tailnet-relay-0-")
    assert name != tailnet_endpoint_name("relay-1", (A, B))
    assert name != tailnet_endpoint_name("relay-0", (A, C))


def test_a_relay_name_kubernetes_would_refuse_still_makes_a_valid_distinct_name():
    odd = tailnet_endpoint_name("Relay_0", (A, B))
    alike = tailnet_endpoint_name("relay-0", (A, B))
    assert DNS_SUBDOMAIN.match(odd) and odd != alike
    assert DNS_SUBDOMAIN.match(tailnet_endpoint_name("x" * 200, (A, B)))
    assert DNS_SUBDOMAIN.match(tailnet_endpoint_name("___", (A, B)))


def test_the_resource_names_its_origin_relay_and_keys():
    body = tailnet_endpoint("peers", "relay-0", (A, B))
    assert body["metadata"]["namespace"] == "peers"
    assert body["metadata"]["labels"] == {RELAY_LABEL: "relay-0", ORIGIN_LABEL: TAILNET_ORIGIN}
    assert body["spec"] == {"discoKeys": [str(A), str(B)], "relay": "relay-0"}
    assert from_tailnet(body)
    assert not from_tailnet({"metadata": {"labels": {RELAY_LABEL: "relay-0"}}})
    # The CRD's spec.relay is a DNS label: a relay named otherwise is named by its label only.
    assert "relay" not in tailnet_endpoint("peers", "Relay_0", (A, B))["spec"]
