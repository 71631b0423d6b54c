"""A deadline and a VNI as one int, ordered as the deadline: the core's expiry heap entries.

The core keeps one heap entry per endpoint (and stale ones until they surface).
A ``(deadline, vni)`` tuple with its float takes 88 B in pymalloc's steps; one
int of 88 bits takes 48 B, and the endpoint keeps the same int as its deadline,
so no float is kept at all: 40 B less per endpoint, a tenth of an idle one.

The deadline is kept exactly, as its IEEE 754 bits mapped so that integer order
is numeric order (negative floats have every bit flipped, others only the sign
bit), above the 24 bits of the VNI. Two keys compare as their deadlines do, and
as their VNIs where the deadlines are equal, as the tuples did.
"""

from __future__ import annotations

import struct

from relay.protocol.geneve import MAX_VNI

_DOUBLE = struct.Struct("<d")
_VNI_BITS = MAX_VNI.bit_length()
_SIGN = 1 << 63
_ALL = (1 << 64) - 1


def deadline_key(deadline: float, vni: int) -> int:
    """``deadline`` and ``vni`` as one int that orders as ``(deadline, vni)`` would."""
    bits = int.from_bytes(_DOUBLE.pack(deadline), "little")
    ordered = bits ^ _ALL if bits & _SIGN else bits | _SIGN
    return ordered << _VNI_BITS | vni


def key_deadline(key: int) -> float:
    """The deadline of a :func:`deadline_key`, exactly as it was given."""
    ordered = key >> _VNI_BITS
    bits = ordered ^ _SIGN if ordered & _SIGN else ordered ^ _ALL
    return _DOUBLE.unpack(bits.to_bytes(8, "little"))[0]


def key_vni(key: int) -> int:
    """The VNI of a :func:`deadline_key`."""
    return key & MAX_VNI
