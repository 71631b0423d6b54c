"""A relay's tailnet identity on disk: the machine, node and disco keys that make it one node.

A relay that joins a tailnet (``--tailnet-login-server``) is a node the
control server knows by its machine and node keys, and its peers by its disco
key. Kept in a key file of their own (``--tailnet-key-file``; in Kubernetes,
a Secret), a restarted relay is the same node: it needs no new pre-auth key
and its peers' paths through it survive. The format and creation are the
relay key file's (:mod:`relay.shells.keyfile`).
"""

from __future__ import annotations

import os

from relay.protocol.keys import DiscoPrivateKey, InvalidKey
from relay.shells.keyfile import KeyFileError, load_or_create_secret, read_values
from relay.tailnet.control import NodeIdentity
from relay.tailnet.nodekeys import NodePrivateKey
from relay.tailnet.noise import MachinePrivateKey

_MACHINE = "machine-private-key"
_NODE = "node-private-key"
_DISCO = "node-disco-private-key"


def identity_text(identity: NodeIdentity) -> str:
    return (
        "# relay-fleet tailnet node keys: keep private\n"
        f"{_MACHINE}: {identity.machine_key.text()}\n"
        f"{_NODE}: {identity.node_key.text()}\n"
        f"{_DISCO}: {identity.disco_key.text()}\n"
    )


class _IdentityText:
    """A NodeIdentity that writes itself as key file text."""

    def __init__(self, identity: NodeIdentity) -> None:
        self.identity = identity

    def to_text(self) -> str:
        return identity_text(self.identity)


def _from_text(text: str, origin: str) -> _IdentityText:
    values = read_values(text, origin, (_MACHINE, _NODE, _DISCO))
    try:
        return _IdentityText(
            NodeIdentity(
                MachinePrivateKey.parse(values[_MACHINE]),
                NodePrivateKey.parse(values[_NODE]),
                DiscoPrivateKey.parse(values[_DISCO]),
            )
        )
    except InvalidKey as exc:
        raise KeyFileError(f"{origin}: {exc}") from None


def load_or_create_identity(path: str | os.PathLike[str]) -> tuple[NodeIdentity, bool]:
    """The identity in ``path``, created there (mode 0600) when missing; and whether it was."""
    loaded, created = load_or_create_secret(
        path, _from_text, lambda: _IdentityText(NodeIdentity.generate())
    )
    return loaded.identity, created
