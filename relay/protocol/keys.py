"""Disco keys: Curve25519 key pairs, their text forms, ordering and shared secrets.

A disco public key is written ``discokey:`` + 64 lower-case hex digits and is
ordered by its 32 raw bytes (docs/protocol.md "Keys"). A private key's text form, used
only in key files, is ``privkey:`` + 64 hex digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering

from nacl import bindings
from nacl.public import PrivateKey

KEY_LEN = 32
PUBLIC_PREFIX = "discokey:"
PRIVATE_PREFIX = "privkey:"
_HEX64 = re.compile(r"[0-9a-f]{64}")


class InvalidKey(ValueError):
    """A key's text or raw form is malformed."""


def parse_hex_key(text: str, prefix: str) -> bytes:
    """The 32 raw bytes of ``prefix`` + 64 lower-case hex digits (any key's text form:
    ``discokey:``, ``nodekey:``, ``mkey:``, ``privkey:``); :class:`InvalidKey` otherwise."""
    if not isinstance(text, str):
        raise InvalidKey(f"key must be a string, not {type(text).__name__}")
    if not text.startswith(prefix):
        raise InvalidKey(f"key must start with {prefix!r}")
    digits = text[len(prefix) :]
    if not _HEX64.fullmatch(digits):
        raise InvalidKey(f"key must be {prefix!r} followed by 64 lower-case hex digits")
    return bytes.fromhex(digits)


@total_ordering
@dataclass(frozen=True, slots=True)
class DiscoPublicKey:
    """A client's or server's disco public key (32 raw bytes)."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_LEN:
            raise InvalidKey(f"a disco public key is {KEY_LEN} bytes")

    @classmethod
    def parse(cls, text: str) -> DiscoPublicKey:
        return cls(parse_hex_key(text, PUBLIC_PREFIX))

    def __str__(self) -> str:
        return PUBLIC_PREFIX + self.raw.hex()

    def short(self) -> str:
        """A short form for logs: ``d:`` and the first 16 hex digits."""
        return "d:" + self.raw.hex()[:16]

    def __lt__(self, other: DiscoPublicKey) -> bool:
        return self.raw < other.raw


@dataclass(frozen=True, slots=True)
class DiscoPrivateKey:
    """A disco private key. Its repr never shows the key."""

    raw: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_LEN:
            raise InvalidKey(f"a disco private key is {KEY_LEN} bytes")

    @classmethod
    def generate(cls) -> DiscoPrivateKey:
        return cls(bytes(PrivateKey.generate()))

    @classmethod
    def parse(cls, text: str) -> DiscoPrivateKey:
        return cls(parse_hex_key(text, PRIVATE_PREFIX))

    def text(self) -> str:
        """The secret text form; write it only where secrets belong."""
        return PRIVATE_PREFIX + self.raw.hex()

    def __repr__(self) -> str:
        return "DiscoPrivateKey(<redacted>)"

    __str__ = __repr__

    @property
    def public(self) -> DiscoPublicKey:
        return DiscoPublicKey(bindings.crypto_scalarmult_base(self.raw))

    def shared(self, peer: DiscoPublicKey) -> bytes:
        """The NaCl box precomputed key (``crypto_box_beforenm``) with a peer."""
        return bindings.crypto_box_beforenm(peer.raw, self.raw)


def sorted_pair(a: DiscoPublicKey, b: DiscoPublicKey) -> tuple[DiscoPublicKey, DiscoPublicKey]:
    """The pair in raw-byte order, so that (A, B) and (B, A) name the same endpoint."""
    return (a, b) if a.raw <= b.raw else (b, a)
