"""A scripted conversation with a relay over real UDP, observed the same way for any server.

Every step sends one datagram from one socket; then one socket of a bound
sentinel endpoint sends data and waits for it at the other. The server
handles datagrams in order on one socket, so once the sentinel's data is
through, every reply the step caused has already reached its socket: what
each socket holds then is the step's observable outcome, with no sleep and no
timeout guesswork.
Outcomes are normalised (endpoint labels instead of VNIs, challenge numbers
instead of bytes) so that two servers with different keys compare equal.
"""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field

from relay.protocol import disco, geneve
from relay.protocol.client import RelayClient
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey

REPLY_TIMEOUT = 5.0


def post_allocation(url: str, keys: list[str]) -> tuple[int, dict | str]:
    request = urllib.request.Request(
        f"{url}/v0/relay/endpoint",
        data=json.dumps({"DiscoKeys": keys}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=REPLY_TIMEOUT) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


class Socket:
    def __init__(self, name: str) -> None:
        self.name = name
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))

    def send(self, datagram: bytes, to: tuple[str, int]) -> None:
        self.sock.sendto(datagram, to)

    def receive(self, timeout: float = REPLY_TIMEOUT) -> bytes:
        self.sock.settimeout(timeout)
        return self.sock.recv(65535)

    def drain(self) -> list[bytes]:
        self.sock.setblocking(False)
        out = []
        try:
            while True:
                out.append(self.sock.recv(65535))
        except BlockingIOError:
            return out
        finally:
            self.sock.setblocking(True)

    def close(self) -> None:
        self.sock.close()


@dataclass
class Endpoint:
    label: str
    response: dict
    clients: dict[str, RelayClient]


@dataclass
class Conversation:
    """One server, its endpoints and client sockets, and the trace of what was seen."""

    url: str
    relay: tuple[str, int]
    sockets: dict[str, Socket] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    owners: dict[str, RelayClient] = field(default_factory=dict)
    challenges: dict[tuple[str, bytes], int] = field(default_factory=dict)
    trace: list[tuple] = field(default_factory=list)

    def socket(self, name: str) -> Socket:
        if name not in self.sockets:
            self.sockets[name] = Socket(name)
        return self.sockets[name]

    def allocate(self, label: str, names: tuple[str, str], keys=None) -> Endpoint:
        keys = keys or [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
        status, response = post_allocation(self.url, [str(k.public) for k in keys])
        assert status == 200, response
        server = DiscoPublicKey.parse(response["ServerDisco"])
        clients = {
            n: RelayClient(k, server, response["VNI"]) for n, k in zip(names, keys, strict=True)
        }
        endpoint = Endpoint(label, response, clients)
        self.endpoints[label] = endpoint
        return endpoint

    def client(self, name: str) -> RelayClient:
        for endpoint in self.endpoints.values():
            if name in endpoint.clients:
                return endpoint.clients[name]
        raise KeyError(name)

    def open_sentinel(self) -> None:
        """A bound endpoint of two sentinel sockets, whose data marks "all handled"."""
        self.allocate("sentinel", ("S", "T"))
        self._sentinels = (Socket("S"), Socket("T"))
        for name, sock in zip(("S", "T"), self._sentinels, strict=True):
            client = self.client(name)
            sock.send(client.bind(), self.relay)
            sock.send(client.answer(sock.receive()), self.relay)
        self.sync()

    def sync(self) -> None:
        """Return once the server has handled every datagram sent before this call."""
        s, t = self._sentinels
        s.send(self.client("S").data(b"sync"), self.relay)
        assert self.client("T").read_data(t.receive()) == b"sync"

    def step(self, name: str, sender: str, datagram: bytes, owner: str | None = None) -> None:
        """Send ``datagram`` from socket ``sender``, then record what every socket got."""
        if owner is not None:
            self.owners[sender] = self.client(owner)
        self.socket(sender).send(datagram, self.relay)
        self.sync()
        seen = []
        for socket_name, sock in sorted(self.sockets.items()):
            for received in sock.drain():
                seen.append((socket_name, self._describe(socket_name, received)))
        self.trace.append((name, tuple(seen)))

    def _label(self, vni: int) -> str:
        for endpoint in self.endpoints.values():
            if endpoint.response["VNI"] == vni:
                return endpoint.label
        return f"vni-{vni}"

    def _describe(self, socket_name: str, datagram: bytes) -> tuple:
        header = geneve.decode(datagram)
        if not header.control:
            return ("data", self._label(header.vni), datagram[geneve.HEADER_LEN :])
        owner = self.owners.get(socket_name)
        try:
            message = owner.read_control(datagram)
        except (ValueError, AttributeError) as exc:
            return ("unreadable-control", self._label(header.vni), str(exc))
        if isinstance(message, disco.BindUDPRelayEndpointChallenge):
            number = self.challenges.setdefault(
                (socket_name, message.challenge), len(self.challenges) + 1
            )
            return ("challenge", self._label(header.vni), number)
        return ("control", self._label(header.vni), type(message).__name__)

    def challenge_of(self, socket_name: str) -> bytes:
        """The last challenge that socket received."""
        return [c for (s, c) in self.challenges if s == socket_name][-1]

    def close(self) -> None:
        for sock in [*self.sockets.values(), *getattr(self, "_sentinels", ())]:
            sock.close()
