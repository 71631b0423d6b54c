"""The client side of allocation: key pairs, and POST /v0/relay/endpoint at a server's pace.

* Keys: a million endpoints need a million distinct key pairs, not two million
  keys. :class:`KeySet` makes pair i from ~sqrt(2 N) keys, so the client
  side's X25519 work stays small; the servers still derive their shared keys
  per endpoint (the reference at allocation, ours at the first handshake
  message), so what they are measured doing is unchanged. Where no handshake
  follows, :func:`random_pair` gives two random keys without any X25519.
* Allocation: :func:`allocate` posts over a few keep-alive connections with
  HTTP/1.1 pipelining (a batch of requests written at once, then their
  responses read in order), on uvloop; the client costs a few microseconds
  per allocation, so the server's rate is what is measured.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
from array import array
from collections.abc import Sequence

import uvloop
from nacl import bindings

from relay.protocol.keys import DiscoPublicKey

_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d+)", re.IGNORECASE)
_VNI = re.compile(rb'"VNI":\s*(\d+)')


def random_pair() -> tuple[DiscoPublicKey, DiscoPublicKey]:
    """Two distinct public keys without the cost of X25519: random bytes are valid keys here."""
    return DiscoPublicKey(os.urandom(32)), DiscoPublicKey(os.urandom(32))


def request_body(pair: tuple[DiscoPublicKey, DiscoPublicKey]) -> bytes:
    """The JSON body of POST /v0/relay/endpoint for ``pair``."""
    return json.dumps({"DiscoKeys": [str(key) for key in pair]}).encode()


class KeySet:
    """Distinct client key pairs for ``count`` endpoints, from about sqrt(2 count) keys.

    Pair i is (key a, key b) with a < b, enumerated b = 1, 2, ... and a = 0 .. b-1.
    """

    def __init__(self, count: int) -> None:
        size = 2
        while size * (size - 1) // 2 < count:
            size += 1
        self.count = count
        self.private = [os.urandom(32) for _ in range(size)]
        self.public = [bindings.crypto_scalarmult_base(k) for k in self.private]
        self._texts = [b'"discokey:' + k.hex().encode() + b'"' for k in self.public]
        self._shared: dict[bytes, list[bytes | None]] = {}

    def pair(self, index: int) -> tuple[int, int]:
        """The two key numbers of endpoint ``index``."""
        b = (1 + math.isqrt(1 + 8 * index)) // 2
        return index - b * (b - 1) // 2, b

    def request_bodies(self, first: int, stop: int) -> list[bytes]:
        """The POST /v0/relay/endpoint bodies of endpoints ``first`` .. ``stop``-1."""
        bodies = []
        for index in range(first, stop):
            a, b = self.pair(index)
            bodies.append(b'{"DiscoKeys":[' + self._texts[a] + b"," + self._texts[b] + b"]}")
        return bodies

    def shared(self, key: int, server_key: bytes) -> bytes:
        """The NaCl precomputed key of client key ``key`` with the server (cached)."""
        cache = self._shared.setdefault(server_key, [None] * len(self.private))
        value = cache[key]
        if value is None:
            value = cache[key] = bindings.crypto_box_beforenm(server_key, self.private[key])
        return value


def allocate(api: str, bodies: Sequence[bytes], connections: int = 8, depth: int = 32) -> array:
    """POST every one of ``bodies`` to ``api``; the VNIs allocated, in that order.

    ``connections`` keep-alive connections, each with up to ``depth`` pipelined requests.
    """
    vnis = array("I", bytes(4 * len(bodies)))
    host, port = api.rsplit(":", 1)
    head = f"POST /v0/relay/endpoint HTTP/1.1\r\nHost: {api}\r\n".encode()
    head += b"Content-Type: application/json\r\nContent-Length: "
    position = 0

    def take() -> range:
        nonlocal position
        start, position = position, min(len(bodies), position + depth)
        return range(start, position)

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while batch := take():
                writer.write(
                    b"".join(
                        b"%s%d\r\n\r\n%s" % (head, len(bodies[index]), bodies[index])
                        for index in batch
                    )
                )
                for index in batch:
                    response = await reader.readuntil(b"\r\n\r\n")
                    length = _CONTENT_LENGTH.search(response)
                    if length is None:
                        raise RuntimeError(f"{api}: response without Content-Length")
                    body = await reader.readexactly(int(length.group(1)))
                    vni = _VNI.search(body)
                    if response[9:12] != b"200" or vni is None:
                        raise RuntimeError(f"{api}: allocation refused: {response[:12]!r} {body!r}")
                    vnis[index] = int(vni.group(1))
        finally:
            writer.close()

    async def run() -> None:
        await asyncio.gather(*(connection() for _ in range(connections)))

    uvloop.run(run())
    return vnis
