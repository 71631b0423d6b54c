"""The Geneve fixed header (RFC 8926) that starts every relay datagram.

Eight bytes, no options: version and option length, the control bit, the
protocol type and the 24-bit VNI. See docs/protocol.md "Underlay".
"""

from __future__ import annotations

from typing import NamedTuple

HEADER_LEN = 8
PROTOCOL_DISCO = 0x7A11
PROTOCOL_WIREGUARD = 0x7A12
CONTROL_BIT = 0x80
MAX_VNI = (1 << 24) - 1
MAX_VERSION = 3


class GeneveHeader(NamedTuple):
    protocol: int
    vni: int
    control: bool
    version: int = 0


def encode(header: GeneveHeader) -> bytes:
    """Encode a header; a VNI or version out of range raises ValueError."""
    if not 0 <= header.vni <= MAX_VNI:
        raise ValueError(f"VNI {header.vni} does not fit in 24 bits")
    if not 0 <= header.version <= MAX_VERSION:
        raise ValueError(f"Geneve version {header.version} does not fit in 2 bits")
    if not 0 <= header.protocol <= 0xFFFF:
        raise ValueError(f"protocol type {header.protocol:#x} does not fit in 16 bits")
    return bytes(
        (
            header.version << 6,
            CONTROL_BIT if header.control else 0,
            header.protocol >> 8,
            header.protocol & 0xFF,
            header.vni >> 16,
            (header.vni >> 8) & 0xFF,
            header.vni & 0xFF,
            0,
        )
    )


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
    return encode(GeneveHeader(PROTOCOL_DISCO, vni, control=True))


def data_header(vni: int) -> bytes:
    return encode(GeneveHeader(PROTOCOL_WIREGUARD, vni, control=False))
