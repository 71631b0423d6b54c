"""ServerEndpoint: what an allocation tells the two clients, in the reference's JSON shape.

The names and forms are the reference implementation's: ``ServerDisco`` as
``discokey:…``, ``AddrPorts`` as ``ip:port`` strings, lifetimes as Go duration
strings (``30s``, ``5m0s``). ``ClientDisco``, the two clients' keys in sorted
order, came with protocol version 1; readers take answers with or without it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from relay.protocol import disco
from relay.protocol.addresses import parse_host_port
from relay.protocol.durations import format_duration, parse_duration
from relay.protocol.keys import DiscoPublicKey, sorted_pair

NANOSECONDS = 1_000_000_000

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class ServerEndpoint:
    server_disco: DiscoPublicKey
    lamport_id: int
    addr_ports: tuple[str, ...]
    vni: int
    bind_lifetime: float
    steady_state_lifetime: float
    client_disco: tuple[DiscoPublicKey, DiscoPublicKey] | None = None

    def to_json(self) -> dict[str, Any]:
        clients = (
            {} if self.client_disco is None else {"ClientDisco": list(map(str, self.client_disco))}
        )
        return {
            "ServerDisco": str(self.server_disco),
            **clients,
            "LamportID": self.lamport_id,
            "AddrPorts": list(self.addr_ports),
            "VNI": self.vni,
            "BindLifetime": format_duration(self.bind_lifetime),
            "SteadyStateLifetime": format_duration(self.steady_state_lifetime),
        }

    def to_disco(self) -> disco.UDPRelayEndpoint:
        """The binary form that disco 0x07 and 0x09 carry; needs ``client_disco``."""
        if self.client_disco is None:
            raise ValueError("a disco endpoint names its two clients")
        addr_ports = []
        for text in self.addr_ports:
            host, port = parse_host_port(text)
            addr_ports.append((ipaddress.ip_address(host), port))
        return disco.UDPRelayEndpoint(
            server_disco=self.server_disco.raw,
            client_disco=tuple(key.raw for key in sorted_pair(self.client_disco)),
            lamport_id=self.lamport_id,
            vni=self.vni,
            bind_lifetime_ns=round(self.bind_lifetime * NANOSECONDS),
            steady_state_lifetime_ns=round(self.steady_state_lifetime * NANOSECONDS),
            addr_ports=tuple(addr_ports),
        )

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerEndpoint:
        """Read an allocation response; raises KeyError for a missing field, ValueError naming
        a malformed one."""
        return cls(
            server_disco=_field(data, "ServerDisco", DiscoPublicKey.parse),
            lamport_id=_field(data, "LamportID", _integer),
            addr_ports=_field(data, "AddrPorts", _strings),
            vni=_field(data, "VNI", _integer),
            bind_lifetime=_field(data, "BindLifetime", _duration),
            steady_state_lifetime=_field(data, "SteadyStateLifetime", _duration),
            client_disco=_field(data, "ClientDisco", _key_pair) if "ClientDisco" in data else None,
        )


def _field(data: dict[str, Any], name: str, parse: Callable[[Any], _T]) -> _T:
    try:
        return parse(data[name])
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _integer(value: Any) -> int:
    if type(value) is not int:
        raise ValueError(f"expected an integer, not {_json_type(value)}")
    return value


def _strings(value: Any) -> tuple[str, ...]:
    if type(value) is not list:
        raise ValueError(f"expected a list of strings, not {_json_type(value)}")
    for item in value:
        if type(item) is not str:
            raise ValueError(f"expected a list of strings, not one holding {_json_type(item)}")
    return tuple(value)


def _key_pair(value: Any) -> tuple[DiscoPublicKey, DiscoPublicKey]:
    keys = _strings(value)
    if len(keys) != 2:
        raise ValueError(f"expected two keys, not {len(keys)}")
    return DiscoPublicKey.parse(keys[0]), DiscoPublicKey.parse(keys[1])


def _duration(value: Any) -> float:
    if type(value) is not str:
        raise ValueError(f"expected a duration such as '30s', not {_json_type(value)}")
    return parse_duration(value)


_JSON_TYPES = {
    type(None): "null",
    bool: "a boolean",
    int: "an integer",
    str: "a string",
    list: "a list",
    dict: "an object",
}


def _json_type(value: Any) -> str:
    if type(value) is float:
        return f"the number {value!r}"
    return _JSON_TYPES.get(type(value), type(value).__name__)
