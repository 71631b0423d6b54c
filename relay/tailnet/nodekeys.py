"""Node keys: a tailnet node's WireGuard identity, in the text forms the control protocol uses.

A node has three X25519 key pairs: the machine key (the Noise channel to the
control server, :mod:`relay.tailnet.noise`), the disco key
(:mod:`relay.protocol.keys`) and the node key, which this module adds: the
key peers and DERP know the node by, written ``nodekey:`` and 64 lower-case
hex digits. Its private half is written ``privkey:`` like the others, in key
files only. The raw 32 bytes are what :mod:`relay.tailnet.derp` takes.
"""

from __future__ import annotations

from dataclasses import dataclass

from nacl import bindings
from nacl.public import PrivateKey

from relay.protocol.keys import KEY_LEN, PRIVATE_PREFIX, InvalidKey, parse_hex_key

NODE_PUBLIC_PREFIX = "nodekey:"


@dataclass(frozen=True, slots=True)
class NodePublicKey:
    """A node's public key (32 raw bytes), written ``nodekey:`` and 64 hex digits."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_LEN:
            raise InvalidKey(f"a node public key is {KEY_LEN} bytes")

    @classmethod
    def parse(cls, text: str) -> NodePublicKey:
        return cls(parse_hex_key(text, NODE_PUBLIC_PREFIX))

    def __str__(self) -> str:
        return NODE_PUBLIC_PREFIX + self.raw.hex()

    def short(self) -> str:
        """A short form for logs: ``n:`` and the first 16 hex digits."""
        return "n:" + self.raw.hex()[:16]


@dataclass(frozen=True, slots=True)
class NodePrivateKey:
    """A node's private key. Its repr never shows the key."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_LEN:
            raise InvalidKey(f"a node private key is {KEY_LEN} bytes")

    @classmethod
    def generate(cls) -> NodePrivateKey:
        return cls(bytes(PrivateKey.generate()))

    @classmethod
    def parse(cls, text: str) -> NodePrivateKey:
        return cls(parse_hex_key(text, PRIVATE_PREFIX))

    def text(self) -> str:
        """The secret text form; write it only where secrets belong."""
        return PRIVATE_PREFIX + self.raw.hex()

    def __repr__(self) -> str:
        return "NodePrivateKey(<redacted>)"

    __str__ = __repr__

    @property
    def public(self) -> NodePublicKey:
        return NodePublicKey(bindings.crypto_scalarmult_base(self.raw))
