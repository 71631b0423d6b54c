"""Text forms of socket addresses: the kernel's sockaddr bytes and Python's tuples."""

import socket
import struct
import sys

import pytest

from relay.protocol.addresses import format_address, parse_host_port, sockaddr_host_port

ORDER = "<" if sys.byteorder == "little" else ">"


def sockaddr_in(host: str, port: int) -> bytes:
    return struct.pack(ORDER + "H", socket.AF_INET) + struct.pack(
        ">H4s8x", port, socket.inet_pton(socket.AF_INET, host)
    )


def sockaddr_in6(host: str, port: int, scope: int = 0) -> bytes:
    return (
        struct.pack(ORDER + "H", socket.AF_INET6)
        + struct.pack(">HI16s", port, 0, socket.inet_pton(socket.AF_INET6, host))
        + struct.pack(ORDER + "I", scope)
    )


@pytest.mark.parametrize(
    ("address", "text"),
    [
        (sockaddr_in("192.0.2.1", 7000), "192.0.2.1:7000"),
        (sockaddr_in6("2001:db8::1", 443), "[2001:db8::1]:443"),
        (sockaddr_in6("::ffff:192.0.2.1", 65535), "192.0.2.1:65535"),
        (sockaddr_in6("fe80::1", 1, scope=3), "[fe80::1%3]:1"),
        (("192.0.2.1", 7000), "192.0.2.1:7000"),
        (("::ffff:192.0.2.1", 7000, 0, 0), "192.0.2.1:7000"),
        (None, None),
    ],
)
def test_format_address(address, text):
    assert format_address(address) == text


def test_sockaddr_text_parses_back():
    assert parse_host_port(format_address(sockaddr_in6("2001:db8::2", 9))) == ("2001:db8::2", 9)


@pytest.mark.parametrize("raw", [b"", b"\x02", bytes(8)[:6], b"\xff\xff" + bytes(26)])
def test_anything_else_is_a_clear_error(raw):
    with pytest.raises(ValueError, match="not an IPv4 or IPv6 socket address"):
        sockaddr_host_port(raw)


def test_an_empty_host_is_refused_in_brackets_too():
    with pytest.raises(ValueError, match="is not HOST:PORT"):
        parse_host_port(":8080")
    with pytest.raises(ValueError, match="no host between the brackets"):
        parse_host_port("[]:8080")


@pytest.mark.parametrize("text", ["[:8080", "]:8080", "a]:1", "host:\u0663", "host:"])
def test_malformed_host_port_is_refused(text):
    with pytest.raises(ValueError):
        parse_host_port(text)
