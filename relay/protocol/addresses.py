"""Socket addresses and their text forms: ``1.2.3.4:7000``, ``[2001:db8::1]:7000``.

UDP sources arrive as the kernel's ``sockaddr_in``/``sockaddr_in6`` bytes (the
batched transport) or as ``(host, port)`` tuples (Python's socket module); a
dual-stack socket reports IPv4 peers as ``::ffff:a.b.c.d``. These helpers turn
them into the ip:port text of the API and parse HOST:PORT flags.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from typing import Any


def format_host_port(host: str, port: int) -> str:
    """``host:port``, with IPv6 hosts in brackets and IPv4-mapped addresses unmapped."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return f"{host}:{port}"
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return f"{ip.ipv4_mapped}:{port}"
    if ip.version == 6:
        return f"[{host}]:{port}"
    return f"{host}:{port}"


def sockaddr_host_port(sockaddr: bytes) -> tuple[str, int]:
    """``(host, port)`` of a raw ``sockaddr_in`` or ``sockaddr_in6``; ValueError otherwise."""
    family = int.from_bytes(sockaddr[:2], sys.byteorder) if len(sockaddr) >= 2 else None
    port = int.from_bytes(sockaddr[2:4], "big")
    if family == socket.AF_INET and len(sockaddr) >= 8:
        return socket.inet_ntop(socket.AF_INET, sockaddr[4:8]), port
    if family == socket.AF_INET6 and len(sockaddr) >= 28:
        host = socket.inet_ntop(socket.AF_INET6, sockaddr[8:24])
        scope = int.from_bytes(sockaddr[24:28], sys.byteorder)
        return (f"{host}%{scope}" if scope else host), port
    raise ValueError(f"not an IPv4 or IPv6 socket address: {sockaddr.hex()}")


def format_address(address: Any) -> str | None:
    """The text form of a UDP source (sockaddr bytes or a tuple); None for None."""
    if address is None:
        return None
    if isinstance(address, bytes):
        return format_host_port(*sockaddr_host_port(address))
    return format_host_port(address[0], address[1])


def parse_host_port(text: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` or ``[V6HOST]:PORT``; raises ValueError naming the problem."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        if not host:
            raise ValueError(f"{text!r}: no host between the brackets")
    elif ":" in host:
        raise ValueError(f"{text!r}: put an IPv6 host in brackets, as [::1]:8080")
    elif "[" in host or "]" in host:
        raise ValueError(f"{text!r}: unbalanced brackets around the host")
    if not (port_text.isascii() and port_text.isdigit()) or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{text!r}: port must be a number from 0 to 65535")
    return host, int(port_text)


def parse_ip(text: str) -> str:
    """A normalised IP address; raises ValueError for anything else."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address") from None
