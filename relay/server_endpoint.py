"""ServerEndpoint: what an allocation tells the two clients, in the reference's JSON shape.

The names and forms are the reference implementation's: ``ServerDisco`` as
``discokey:…``, ``AddrPorts`` as ``ip:port`` strings, lifetimes as Go duration
strings (``30s``, ``5m0s``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from relay.durations import format_duration, parse_duration
from relay.keys import DiscoPublicKey


@dataclass(frozen=True, slots=True)
class ServerEndpoint:
    server_disco: DiscoPublicKey
    lamport_id: int
    addr_ports: tuple[str, ...]
    vni: int
    bind_lifetime: float
    steady_state_lifetime: float

    def to_json(self) -> dict[str, Any]:
        return {
            "ServerDisco": str(self.server_disco),
            "LamportID": self.lamport_id,
            "AddrPorts": list(self.addr_ports),
            "VNI": self.vni,
            "BindLifetime": format_duration(self.bind_lifetime),
            "SteadyStateLifetime": format_duration(self.steady_state_lifetime),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ServerEndpoint:
        """Read an allocation response; raises ValueError (or KeyError) if it is malformed."""
        return cls(
            server_disco=DiscoPublicKey.parse(data["ServerDisco"]),
            lamport_id=int(data["LamportID"]),
            addr_ports=tuple(data["AddrPorts"]),
            vni=int(data["VNI"]),
            bind_lifetime=parse_duration(data["BindLifetime"]),
            steady_state_lifetime=parse_duration(data["SteadyStateLifetime"]),
        )
