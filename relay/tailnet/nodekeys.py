"""Node keys: a tailnet node's WireGuard identity, in the text forms the control protocol uses.

A node has three X25519 key pairs: the machine key (the Noise channel to the
control server, :mod:`relay.tailnet.noise`), the disco key
(:mod:`relay.protocol.keys`) and the node key, which this module adds: the
key peers and DERP know the node by, written ``nodekey:`` and 64 lower-case
hex digits. Its private half is written ``privkey:`` like the others, in key
files only. The raw 32 bytes are what :mod:`relay.tailnet.derp` takes.
"""

from __future__ import annotations

from relay.protocol.keys import Curve25519PrivateKey, Curve25519PublicKey

NODE_PUBLIC_PREFIX = "nodekey:"


class NodePublicKey(Curve25519PublicKey):
    """A node's public key, written ``nodekey:`` and 64 hex digits."""

    __slots__ = ()
    PREFIX = NODE_PUBLIC_PREFIX
    KIND = "node"


class NodePrivateKey(Curve25519PrivateKey):
    """A node's private key."""

    __slots__ = ()
    PUBLIC = NodePublicKey
