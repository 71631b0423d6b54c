"""The RelayEndpoint a relay makes for an allocation a peer of its tailnet asked for.

Tailscale clients ask a peer relay for an endpoint over DERP (relay/tailnet),
not with a RelayEndpoint; the relay makes one for each pair it serves that
way, so that ``kubectl get rep`` and ``relayfleet status`` show tailnet
allocations beside the others. Such a resource is the relay's: labelled with
its origin (the operator neither places nor re-places it), pinned to the relay,
its status written by the relay's reporter, deleted by it when the endpoint
expires; deleting it frees the allocation (the operator's finalizer), as for any.

One resource per relay and pair, named from both: a pair that asks again, or
is allocated afresh after binding, finds its resource by name. Pure functions.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from relay.protocol.keys import DiscoPublicKey
from relay.resource.definition import (
    GROUP,
    KIND,
    ORIGIN_LABEL,
    RELAY_LABEL,
    TAILNET_ORIGIN,
    VERSION,
)

NAME_PREFIX = "tailnet-"
RELAY_PART = 40
"""At most this many characters of the relay's name in the resource's name."""
DIGEST_HEX = 12
PINNABLE = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
"""What the CRD accepts in ``spec.relay``; a relay named otherwise is named by the label only."""


def tailnet_endpoint_name(relay: str, disco_keys: tuple[DiscoPublicKey, DiscoPublicKey]) -> str:
    """``tailnet-<relay>-<digest of relay and pair>``: a DNS subdomain name, the same for the
    pair in either order. The digest tells apart relays whose names read alike once made
    DNS-safe."""
    pair = " ".join(sorted(str(key) for key in disco_keys))
    digest = hashlib.blake2s(f"{relay} {pair}".encode(), digest_size=DIGEST_HEX // 2).hexdigest()
    readable = re.sub(r"[^a-z0-9-]+", "-", relay.lower()).strip("-")[:RELAY_PART].strip("-")
    return f"{NAME_PREFIX}{readable}-{digest}" if readable else f"{NAME_PREFIX}{digest}"


def tailnet_endpoint(
    namespace: str, relay: str, disco_keys: tuple[DiscoPublicKey, DiscoPublicKey]
) -> dict[str, Any]:
    """The resource to create (its status is written next, by the reporter)."""
    spec: dict[str, Any] = {"discoKeys": [str(key) for key in disco_keys]}
    if PINNABLE.match(relay):
        spec["relay"] = relay
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {
            "name": tailnet_endpoint_name(relay, disco_keys),
            "namespace": namespace,
            "labels": {RELAY_LABEL: relay, ORIGIN_LABEL: TAILNET_ORIGIN},
        },
        "spec": spec,
    }


def from_tailnet(resource: dict[str, Any]) -> bool:
    """Whether a RelayEndpoint is one a relay made for its tailnet's peers."""
    labels = (resource.get("metadata") or {}).get("labels") or {}
    return labels.get(ORIGIN_LABEL) == TAILNET_ORIGIN
