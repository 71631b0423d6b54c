"""The Geneve fixed header (RFC 8926) that starts every relay datagram.

Eight bytes, no options: version and option length, the control bit, the
protocol type and the 24-bit VNI. See docs/protocol.md "Underlay".
"""

from __future__ import annotations

import struct
from typing import NamedTuple

HEADER_LEN = 8
PROTOCOL_DISCO = 0x7A11
PROTOCOL_WIREGUARD = 0x7A12
CONTROL_BIT = 0x80
MAX_VNI = (1 << 24) - 1
MAX_VERSION = 3
_FIXED = struct.Struct(">BBHI")
"""Version and option length, flags, protocol type, VNI and the reserved byte."""


class GeneveHeader(NamedTuple):
    protocol: int
    vni: int
    control: bool
    version: int = 0


def encode(header: GeneveHeader) -> bytes:
    """Encode a header; a VNI or version out of range raises ValueError."""
    _check_vni(header.vni)
    if not 0 <= header.version <= MAX_VERSION:
        raise ValueError(f"Geneve version {header.version} does not fit in 2 bits")
    if not 0 <= header.protocol <= 0xFFFF:
        raise ValueError(f"protocol type {header.protocol:#x} does not fit in 16 bits")
    flags = CONTROL_BIT if header.control else 0
    return _FIXED.pack(header.version << 6, flags, header.protocol, header.vni << 8)


def _check_vni(vni: int) -> None:
    if not 0 <= vni <= MAX_VNI:
        raise ValueError(f"VNI {vni} does not fit in 24 bits")


def decode(datagram: bytes) -> GeneveHeader:
    """Decode the fixed header; a datagram shorter than 8 bytes raises ValueError."""
    if len(datagram) < HEADER_LEN:
        raise ValueError(f"Geneve header needs {HEADER_LEN} bytes, got {len(datagram)}")
    return GeneveHeader(
        protocol=(datagram[2] << 8) | datagram[3],
        vni=(datagram[4] << 16) | (datagram[5] << 8) | datagram[6],
        control=bool(datagram[1] & CONTROL_BIT),
        version=datagram[0] >> 6,
    )


def control_header(vni: int) -> bytes:
    """The header of every control packet of ``vni`` (written once per challenge: no
    :class:`GeneveHeader` made)."""
    _check_vni(vni)
    return _FIXED.pack(0, CONTROL_BIT, PROTOCOL_DISCO, vni << 8)


def data_header(vni: int) -> bytes:
    _check_vni(vni)
    return _FIXED.pack(0, 0, PROTOCOL_WIREGUARD, vni << 8)
