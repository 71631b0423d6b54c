"""A scripted conversation with a relay over real UDP, observed the same way for any server.

Every step sends one datagram from one socket; then one socket of a bound
sentinel endpoint sends data and waits for it at the other, twice. The server
handles datagrams in order on one socket, so once the sentinel's data is
through, every datagram the step caused has been handled; a server that reads
in batches and sends a batch's replies after handling all of it (the v1.102.5
reference) may still be sending them, but the second round trip can only be
read in a later batch, so once it is through, every reply has reached its
socket too. What each socket holds then is the step's observable outcome,
with no sleep and no timeout guesswork.
Outcomes are normalised (endpoint labels instead of VNIs, client names
instead of keys, challenge numbers instead of bytes) so that two servers with
different keys compare equal. A conversation has a protocol version: its
sentinel binds in it, and so do its clients unless an allocation names theirs.
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
    version: int = 0
    sockets: dict[str, Socket] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    owners: dict[str, RelayClient] = field(default_factory=dict)
    challenges: dict[tuple[str, bytes], int] = field(default_factory=dict)
    trace: list[tuple] = field(default_factory=list)

    def socket(self, name: str) -> Socket:
        if name not in self.sockets:
            self.sockets[name] = Socket(name)
        return self.sockets[name]

    def allocate(
        self,
        label: str,
        names: tuple[str, str],
        keys: list[DiscoPrivateKey] | None = None,
        versions: tuple[int, int] | None = None,
    ) -> Endpoint:
        """Allocate an endpoint for two clients named ``names``, speaking ``versions``
        (by default both the conversation's)."""
        keys = keys or [DiscoPrivateKey.generate(), DiscoPrivateKey.generate()]
        versions = versions or (self.version, self.version)
        status, response = post_allocation(self.url, [str(k.public) for k in keys])
        assert status == 200, response
        server = DiscoPublicKey.parse(response["ServerDisco"])
        remotes = (keys[1].public, keys[0].public)
        clients = {
            n: RelayClient(k, server, response["VNI"], remote_key=r, protocol=v)
            for n, k, r, v in zip(names, keys, remotes, versions, strict=True)
        }
        endpoint = Endpoint(label, response, clients)
        self.endpoints[label] = endpoint
        return endpoint

    def client(self, name: str) -> RelayClient:
        for endpoint in self.endpoints.values():
            if name in endpoint.clients:
                return endpoint.clients[name]
        raise KeyError(name)

    def bind(self, name: str, generation: int = 1) -> bytes:
        """A bind from client ``name`` in its version (``generation``: version 1's)."""
        client = self.client(name)
        if client.protocol == 0:
            return client.bind()
        return client.bind_v1(client.remote_key, generation)

    def answer(self, name: str, socket_name: str, generation: int = 1) -> bytes:
        """Client ``name``'s answer, in its version, to the newest challenge ``socket_name`` got
        (``generation``: the version 1 bind's)."""
        client, challenge = self.client(name), self.challenge_of(socket_name)
        if client.protocol == 0:
            return client.control(disco.BindUDPRelayEndpointAnswer(challenge))
        fields = (client.vni, generation, client.remote_key.raw, challenge)
        return client.control(disco.BindV1(disco.TYPE_ANSWER, *fields))

    def open_sentinel(self) -> None:
        """A bound endpoint of two sentinel sockets, whose data marks "all handled"."""
        self.allocate("sentinel", ("S", "T"))
        self._sentinels = (Socket("S"), Socket("T"))
        for name, sock in zip(("S", "T"), self._sentinels, strict=True):
            sock.send(self.bind(name), self.relay)
            sock.send(self.client(name).answer(sock.receive()), self.relay)
        self.sync()

    def sync(self) -> None:
        """Return once the server has handled every datagram sent before this call and sent
        every reply to it."""
        s, t = self._sentinels
        for payload in (b"sync", b"sync again"):
            s.send(self.client("S").data(payload), self.relay)
            assert self.client("T").read_data(t.receive()) == payload

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

    def _key_name(self, raw: bytes) -> str:
        for endpoint in self.endpoints.values():
            for name, client in endpoint.clients.items():
                if client.public_key.raw == raw:
                    return name
        return f"key-{raw.hex()[:8]}"

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
            return ("challenge", self._label(header.vni), self._number(socket_name, message))
        if isinstance(message, disco.BindV1) and message.type == disco.TYPE_CHALLENGE:
            return (
                "challenge v1",
                self._label(header.vni),
                self._label(message.vni),
                message.generation,
                self._key_name(message.remote_key),
                self._number(socket_name, message),
            )
        return ("control", self._label(header.vni), type(message).__name__)

    def _number(
        self, socket_name: str, message: disco.BindUDPRelayEndpointChallenge | disco.BindV1
    ) -> int:
        """The challenge's number: the same value to the same socket, the same number."""
        key = (socket_name, message.challenge)
        return self.challenges.setdefault(key, len(self.challenges) + 1)

    def challenge_of(self, socket_name: str) -> bytes:
        """The newest challenge value that socket received (a repeated one is not newer)."""
        return [c for (s, c) in self.challenges if s == socket_name][-1]

    def close(self) -> None:
        for sock in [*self.sockets.values(), *getattr(self, "_sentinels", ())]:
            sock.close()
