"""Disco keys: Curve25519 key pairs, their text forms, ordering and shared secrets.

The key classes of every kind (disco here; node and machine keys in relay/tailnet)
share one body, :class:`Curve25519PublicKey` and :class:`Curve25519PrivateKey`.

A disco public key is written ``discokey:`` + 64 lower-case hex digits and is
ordered by its 32 raw bytes (docs/protocol.md "Keys"). A private key's text form, used
only in key files, is ``privkey:`` + 64 hex digits.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import total_ordering
from typing import Any, ClassVar, Self

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


@dataclass(frozen=True, slots=True)
class Curve25519PublicKey:
    """A public key of one kind (32 raw bytes), written :attr:`PREFIX` and 64 hex digits.

    Each kind is a subclass: disco keys here, node and machine keys in relay/tailnet. Keys of
    different kinds never compare equal, whatever their bytes."""

    raw: bytes
    PREFIX: ClassVar[str]
    KIND: ClassVar[str]
    """What the key is, for errors: "disco", "node", "machine"."""

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_LEN:
            raise InvalidKey(f"a {self.KIND} public key is {KEY_LEN} bytes")

    @classmethod
    def parse(cls, text: str) -> Self:
        return cls(parse_hex_key(text, cls.PREFIX))

    def __str__(self) -> str:
        return self.PREFIX + self.raw.hex()

    def short(self) -> str:
        """A short form for logs: the kind's initial, ``:`` and the first 16 hex digits."""
        return f"{self.KIND[0]}:{self.raw.hex()[:16]}"


@dataclass(frozen=True, slots=True)
class Curve25519PrivateKey:
    """A private key of one kind, written ``privkey:`` and 64 hex digits in key files only.
    Its repr and str never show the key."""

    raw: bytes
    PUBLIC: ClassVar[type[Curve25519PublicKey]]

    def __post_init__(self) -> None:
        if not isinstance(self.raw, bytes) or len(self.raw) != KEY_LEN:
            raise InvalidKey(f"a {self.PUBLIC.KIND} private key is {KEY_LEN} bytes")

    @classmethod
    def generate(cls) -> Self:
        return cls(bytes(PrivateKey.generate()))

    @classmethod
    def parse(cls, text: str) -> Self:
        return cls(parse_hex_key(text, PRIVATE_PREFIX))

    def text(self) -> str:
        """The secret text form; write it only where secrets belong."""
        return PRIVATE_PREFIX + self.raw.hex()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<redacted>)"

    __str__ = __repr__

    @property
    def public(self) -> Any:
        """The public half, of the kind's :attr:`PUBLIC` class."""
        return self.PUBLIC(bindings.crypto_scalarmult_base(self.raw))


# Subclasses add no field and no dataclass decorator (which would write a repr showing the
# key): their empty __slots__ keep them as small as the base.


@total_ordering
class DiscoPublicKey(Curve25519PublicKey):
    """A client's or server's disco public key, ordered by its raw bytes."""

    __slots__ = ()
    PREFIX = PUBLIC_PREFIX
    KIND = "disco"

    def __lt__(self, other: DiscoPublicKey) -> bool:
        return self.raw < other.raw


class DiscoPrivateKey(Curve25519PrivateKey):
    """A disco private key."""

    __slots__ = ()
    PUBLIC = DiscoPublicKey

    def shared(self, peer: DiscoPublicKey) -> bytes:
        """The NaCl box precomputed key (``crypto_box_beforenm``) with a peer."""
        return bindings.crypto_box_beforenm(peer.raw, self.raw)


def sorted_pair(
    pair: tuple[DiscoPublicKey, DiscoPublicKey],
) -> tuple[DiscoPublicKey, DiscoPublicKey]:
    """The pair in raw-byte order, so that (A, B) and (B, A) name the same endpoint (the same
    tuple if it is in order already)."""
    a, b = pair
    return pair if a.raw <= b.raw else (b, a)


def raw_pair(pair: tuple[DiscoPublicKey, DiscoPublicKey]) -> bytes:
    """The pair's 64 raw bytes in raw-byte order (:func:`sorted_pair`): how an allocation
    holds its clients' keys, and a key for tables of pairs."""
    a, b = pair
    return a.raw + b.raw if a.raw <= b.raw else b.raw + a.raw
