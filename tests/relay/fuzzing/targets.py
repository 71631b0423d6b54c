"""The 21 fuzz targets: every parser, the API's request and token checks, and RelayCore.handle.

Each target generates valid inputs of its kind, mutated in bytes, lengths
and fields, plus plain random input, and its check raises on the first broken
property: an exception other than the entry point's documented error, a
result that contradicts its input, a secret in an error message, or, for the
relay core, any change to an endpoint that the datagram did not earn under
docs/protocol.md (the model in model.py decides). :data:`KNOWN_BUGS` lists
what the fuzzing found in product code and is not fixed yet.
"""

from __future__ import annotations

import ipaddress
import json
import math
import random
import re
import socket
import struct
import sys
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import redis.asyncio as aioredis
from nacl import bindings

from relay.protocol import disco, geneve
from relay.protocol.addresses import format_address, parse_host_port, parse_ip, sockaddr_host_port
from relay.protocol.core import Drop, Handshake
from relay.protocol.durations import format_duration, parse_duration
from relay.protocol.keys import DiscoPrivateKey, DiscoPublicKey, InvalidKey
from relay.protocol.ratelimit import HandshakeLimits
from relay.protocol.server_endpoint import ServerEndpoint
from relay.shells.api import InvalidRequest, parse_allocation_request
from relay.shells.api_token import refusal
from relay.shells.keyfile import KeyFileError, RelaySecrets
from relay.store import RelayRecord, check_store_url, open_store
from relay.store import redis as redis_store
from tests.relay.fuzzing.engine import (
    KnownBug,
    PropertyFailure,
    Rng,
    Target,
    TextTarget,
    mutate_bytes,
    mutate_text,
    nested_json,
    random_json_value,
    random_text,
    require,
    shrunk,
)
from tests.relay.fuzzing.model import (
    ATTACKER_ADDRS,
    CLIENTS,
    ENDPOINT_PLAN,
    GENEROUS_LIMITS,
    CoreSnap,
    Expect,
    build_world,
    client_addr,
    diff,
    expect,
    payload_seeds,
    snapshot,
    sockaddr_in,
    sockaddr_in6,
    view,
    with_client,
)


class GeneveDecode(Target):
    name = "geneve_decode"
    entry = "relay.protocol.geneve.decode"

    def generate(self, rng: Rng) -> bytes:
        if rng.randrange(4) == 0:
            return rng.randbytes(rng.randrange(20))
        header = bytes((rng.randrange(256), rng.choice((0, 0x80, 0x40, 0xC0)))) + rng.choice(
            (b"\x7a\x11", b"\x7a\x12", rng.randbytes(2))
        )
        data = header + rng.randbytes(4) + rng.randbytes(rng.randrange(8))
        return mutate_bytes(rng, data) if rng.randrange(2) else data

    def check(self, value: bytes) -> None:
        try:
            header = geneve.decode(value)
        except ValueError:
            require(len(value) < geneve.HEADER_LEN, "rejected a datagram of 8 bytes or more")
            return
        require(len(value) >= geneve.HEADER_LEN, "accepted a datagram shorter than 8 bytes")
        b = value
        require(
            header
            == (
                (b[2] << 8) | b[3],
                int.from_bytes(b[4:7], "big"),
                bool(b[1] & 0x80),
                b[0] >> 6,
            ),
            "fields differ from docs/protocol.md's decode rules",
            repr(header),
        )
        normal = bytes((b[0] & 0xC0, b[1] & 0x80, b[2], b[3], b[4], b[5], b[6], 0))
        require(geneve.encode(header) == normal, "encode(decode(h)) is not h without reserved bits")


class GeneveEncode(Target):
    name = "geneve_encode"
    entry = "relay.protocol.geneve.encode"
    EDGES = (0, 1, 3, 4, 0xFFFF, 0x10000, geneve.MAX_VNI, geneve.MAX_VNI + 1, -1, 2**32, 2**64)

    def _int(self, rng: Rng, limit: int) -> int:
        if rng.randrange(3) == 0:
            return rng.choice(self.EDGES)
        return rng.randrange(limit + 1)

    def generate(self, rng: Rng) -> list[Any]:
        return [
            self._int(rng, 0xFFFF),
            self._int(rng, geneve.MAX_VNI),
            rng.randrange(2) == 1,
            self._int(rng, geneve.MAX_VERSION),
        ]

    def check(self, value: list[Any]) -> None:
        protocol, vni, control, version = value
        fits = 0 <= protocol <= 0xFFFF and 0 <= vni <= geneve.MAX_VNI and 0 <= version <= 3
        header = geneve.GeneveHeader(protocol, vni, control, version)
        try:
            data = geneve.encode(header)
        except ValueError:
            require(not fits, "refused a header whose fields fit")
            return
        require(fits, "encoded a field that does not fit", repr(header))
        require(len(data) == geneve.HEADER_LEN, "header is not 8 bytes")
        require(geneve.decode(data) == header, "decode(encode(h)) != h", repr(header))

    def to_bytes(self, value: list[Any]) -> bytes:
        return json.dumps(value).encode()

    def from_bytes(self, data: bytes) -> list[Any]:
        return json.loads(data)

    def shrink(self, value: list[Any]) -> Iterator[Any]:
        return iter(())


class DiscoParse(Target):
    name = "disco_parse"
    entry = "relay.protocol.disco.parse"

    def generate(self, rng: Rng) -> bytes:
        if rng.randrange(5) == 0:
            return rng.randbytes(rng.randrange(48))
        seed = rng.choice(payload_seeds(rng))
        return mutate_bytes(rng, seed) if rng.randrange(2) else seed

    def check(self, value: bytes) -> None:
        try:
            message = disco.parse(value)
        except disco.DiscoError:
            short = len(value) < 2 or (value[0] in (5, 6) and len(value) < 2 + disco.CHALLENGE_LEN)
            require(
                short or self._bad_allocation(value), "refused a well-formed message", value.hex()
            )
            return
        require(len(value) >= 2, "accepted a message without type and version")
        kind = value[0]
        if kind in (7, 8, 9) and value[1] == 0:
            require(not self._bad_allocation(value), "accepted a malformed allocation message")
            expected_allocation = self._allocation(kind, bytes(value[2:]))
            require(message == expected_allocation, "allocation message fields differ from bytes")
        elif kind in disco.BIND_TYPES and len(value) >= 2 + 72:
            body = bytes(value[2:74])
            expected_v1 = disco.BindV1(
                kind,
                int.from_bytes(body[:4], "big"),
                int.from_bytes(body[4:8], "big"),
                body[8:40],
                body[40:72],
            )
            require(message == expected_v1, "a 72-byte bind body is not version 1's fields")
        elif kind == disco.TYPE_BIND:
            require(message == disco.BindUDPRelayEndpoint(), "type 4 is not a bind")
        elif kind in (disco.TYPE_CHALLENGE, disco.TYPE_ANSWER):
            body = bytes(value[2:34])
            expected = (
                disco.BindUDPRelayEndpointChallenge(body)
                if kind == disco.TYPE_CHALLENGE
                else disco.BindUDPRelayEndpointAnswer(body)
            )
            require(message == expected, "challenge or answer body differs from bytes 2..34")
        else:
            require(message == disco.OtherMessage(kind), "other type not kept as OtherMessage")
        if not isinstance(message, disco.OtherMessage):
            require(disco.parse(disco.marshal(message)) == message, "parse(marshal(m)) != m")

    # The layouts of 0x07, 0x08 and 0x09 at tailscale.com v1.102.5, read independently:
    # an endpoint is 124 fixed bytes and whole 18-byte addresses (at least one) to the end.

    @staticmethod
    def _bad_allocation(value: bytes) -> bool:
        if len(value) < 2 or value[0] not in (7, 8, 9) or value[1] != 0:
            return False
        body = len(value) - 2
        if value[0] == 8:
            return body < 68
        addresses = body - 124 - (4 if value[0] == 9 else 0)
        return addresses < 18 or addresses % 18 != 0

    @staticmethod
    def _allocation(kind: int, body: bytes) -> disco.Message:
        if kind == 8:
            return disco.AllocateUDPRelayEndpointRequest(
                (body[:32], body[32:64]), struct.unpack(">I", body[64:68])[0]
            )
        generation = struct.unpack(">I", body[:4])[0]
        if kind == 9:
            body = body[4:]
        server, a, b, lamport_id, vni, bind, steady = struct.unpack(">32s32s32sQIqq", body[:124])
        addr_ports = []
        for at in range(124, len(body), 18):
            ip = ipaddress.IPv6Address(body[at : at + 16])
            addr_ports.append(
                (ip.ipv4_mapped or ip, struct.unpack(">H", body[at + 16 : at + 18])[0])
            )
        endpoint = disco.UDPRelayEndpoint(
            server, (a, b), lamport_id, vni, bind, steady, tuple(addr_ports)
        )
        if kind == 7:
            return disco.CallMeMaybeVia(endpoint)
        return disco.AllocateUDPRelayEndpointResponse(generation, endpoint)


class DiscoFrame(Target):
    """Frames from one sender to one receiver: magic and sender check, box opening, parsing."""

    name = "disco_frame"
    entry = "relay.protocol.disco.frame_sender/open_frame/parse"

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        rng = random.Random(f"disco_frame:{seed}")
        receiver = DiscoPrivateKey(rng.randbytes(32))
        sender = DiscoPrivateKey(rng.randbytes(32))
        self.sender = sender.public.raw
        self.shared = receiver.shared(sender.public)
        self.other = DiscoPrivateKey(rng.randbytes(32)).public.raw

    def generate(self, rng: Rng) -> bytes:
        if rng.randrange(8) == 0:
            return rng.randbytes(rng.randrange(120))
        payload = rng.choice(payload_seeds(rng))
        nonce = rng.randbytes(disco.NONCE_LEN)
        frame = (
            disco.MAGIC
            + self.sender
            + nonce
            + bindings.crypto_box_afternm(payload, nonce, self.shared)
        )
        op = rng.randrange(8)
        if op == 0:
            return frame
        if op == 1:
            cut = rng.choice((0, 5, 6, 37, 38, 61, 62, 77, 78, 79, len(frame) - 1))
            return frame[: min(cut, len(frame))]
        if op == 2:
            at = rng.randrange(disco.SENDER_OFFSET)
            return frame[:at] + bytes((frame[at] ^ 1,)) + frame[at + 1 :]
        if op == 3:
            key = rng.choice((self.other, bytes(32), rng.randbytes(32)))
            return frame[: disco.SENDER_OFFSET] + key + frame[disco.NONCE_OFFSET :]
        return mutate_bytes(rng, frame, (disco.MAGIC, self.sender))

    def check(self, value: bytes) -> None:
        try:
            sender = disco.frame_sender(value)
        except disco.DiscoError:
            require(
                len(value) < disco.MIN_FRAME_LEN or value[: disco.SENDER_OFFSET] != disco.MAGIC,
                "frame_sender refused a frame with magic and full length",
            )
            sender = None
        else:
            require(len(value) >= disco.MIN_FRAME_LEN, "frame_sender accepted a short frame")
            require(value[: disco.SENDER_OFFSET] == disco.MAGIC, "frame_sender ignored the magic")
            require(sender == value[disco.SENDER_OFFSET : disco.NONCE_OFFSET], "wrong sender bytes")
        try:
            payload = disco.open_frame(value, self.shared)
        except disco.DiscoError:
            return
        nonce = value[disco.NONCE_OFFSET : disco.BOX_OFFSET]
        resealed = bindings.crypto_box_afternm(payload, nonce, self.shared)
        require(
            resealed == value[disco.BOX_OFFSET :], "opened a box that is not the sealed payload"
        )
        self.stats["opened"] += 1
        if sender is not None:
            try:
                disco.parse(payload)
            except disco.DiscoError:
                self.stats["malformed"] += 1


_HEX64 = re.compile("[0-9a-f]{64}")


class _KeyText(TextTarget):
    prefix: ClassVar[str]
    alternatives: ClassVar[tuple[str, ...]]

    def generate(self, rng: Rng) -> str:
        if rng.randrange(8) == 0:
            return random_text(rng, 90)
        text = self.prefix + rng.randbytes(32).hex()
        if rng.randrange(4) == 0:
            return text
        tokens = (*self.alternatives, "\n", " ", "A", "\u0663", "\uff10", "0x", "")
        return mutate_text(rng, text, tokens)

    def valid(self, text: str) -> bool:
        return text.startswith(self.prefix) and bool(_HEX64.fullmatch(text[len(self.prefix) :]))


class PublicKeyText(_KeyText):
    name = "key_public"
    entry = "relay.protocol.keys.DiscoPublicKey.parse"
    prefix = "discokey:"
    alternatives = ("DiscoKey:", "discokey", "nodekey:", "privkey:")

    def check(self, value: str) -> None:
        try:
            key = DiscoPublicKey.parse(value)
        except InvalidKey:
            require(not self.valid(value), "refused a well-formed key", repr(value))
            return
        require(self.valid(value), "accepted a malformed key", repr(value))
        require(str(key) == value and key.raw.hex() == value[9:], "text form does not round-trip")


class PrivateKeyText(_KeyText):
    name = "key_private"
    entry = "relay.protocol.keys.DiscoPrivateKey.parse"
    prefix = "privkey:"
    alternatives = ("PrivKey:", "privkey", "discokey:", "privkey: ")

    def check(self, value: str) -> None:
        try:
            key = DiscoPrivateKey.parse(value)
        except InvalidKey as exc:
            require(not self.valid(value), "refused a well-formed key", repr(value))
            require(value[8:40] not in str(exc) or len(value) < 40, "error shows the key")
            return
        require(self.valid(value), "accepted a malformed key", repr(value))
        require(key.text() == value, "text form does not round-trip")
        require(value[8:] not in repr(key) + str(key), "repr shows the private key")


class SecretsText(TextTarget):
    name = "secrets_text"
    entry = "relay.shells.keyfile.RelaySecrets.from_text"

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        rng = random.Random(f"secrets:{seed}")
        self.secrets = RelaySecrets(DiscoPrivateKey(rng.randbytes(32)), rng.randbytes(32))
        self.text = self.secrets.to_text()
        self.windows = [
            h[i : i + 12]
            for h in (self.secrets.private_key.raw.hex(), self.secrets.challenge_secret.hex())
            for i in range(0, 53, 13)
        ]

    def generate(self, rng: Rng) -> str:
        if rng.randrange(10) == 0:
            return random_text(rng, 200)
        lines = self.text.splitlines()
        for _ in range(rng.randrange(3)):
            op = rng.randrange(5)
            at = rng.randrange(len(lines) + 1)
            if op == 0 and lines:
                del lines[at % len(lines)]
            elif op == 1 and lines:
                lines.insert(at, rng.choice(lines))
            elif op == 2:
                lines.insert(at, rng.choice(("", "# x", ":", "name", "a: b", " \t")))
            elif op == 3 and lines:
                lines[at % len(lines)] = mutate_text(rng, lines[at % len(lines)], (":", " "))
            else:
                lines.reverse()
        sep = rng.choice(("\n", "\r\n", "\r", "\u2028", "\x0b"))
        return sep.join(lines)

    def check(self, value: str) -> None:
        try:
            secrets = RelaySecrets.from_text(value)
        except KeyFileError as exc:
            message = str(exc)
            require(not any(w in message for w in self.windows), "error shows a secret", message)
            return
        require(len(secrets.challenge_secret) == 32, "challenge secret is not 32 bytes")
        require(RelaySecrets.from_text(secrets.to_text()) == secrets, "to_text does not round-trip")
        require(not any(w in repr(secrets) for w in self.windows), "repr shows a secret")


class Durations(TextTarget):
    name = "durations"
    entry = "relay.protocol.durations.parse_duration"
    UNITS = ("ns", "us", "µs", "μs", "ms", "s", "m", "h", "sec", "M", "H", "µ", "")
    NUMBERS = ("0", "1", "1.5", ".5", "5.", ".", "007", "9" * 30, "9" * 320, "1" + "0" * 400)

    def generate(self, rng: Rng) -> str:
        kind = rng.randrange(8)
        if kind == 0:
            return random_text(rng, 30)
        if kind in (1, 2):
            seconds = rng.choice((0.0, 1e-9, 0.25, 30.0, 300.0, 5400.5, 1e9, 1e15, -2.5))
            text = format_duration(seconds * (1 + rng.randrange(1000) / 997))
        else:
            terms = [
                rng.choice(self.NUMBERS) + rng.choice(self.UNITS)
                for _ in range(1 + rng.randrange(3))
            ]
            text = rng.choice(("", "", "-", "+", " ", "--")) + "".join(terms)
        if rng.randrange(3) == 0:
            text = mutate_text(rng, text, self.UNITS + self.NUMBERS[:6])
        return text

    def check(self, value: str) -> None:
        try:
            seconds = parse_duration(value)
        except ValueError:
            return
        require(isinstance(seconds, float) and math.isfinite(seconds), "not a finite float")
        again = parse_duration(format_duration(seconds))
        require(
            math.isclose(again, seconds, rel_tol=1e-12, abs_tol=1e-9),
            "format_duration does not round-trip",
            f"{seconds!r} -> {format_duration(seconds)!r} -> {again!r}",
        )


class HostPort(TextTarget):
    name = "host_port"
    entry = "relay.protocol.addresses.parse_host_port"
    HOSTS = (
        "192.0.2.1",
        "[2001:db8::1]",
        "2001:db8::1",
        "relay.example",
        "[::1]",
        "",
        "[]",
        "[",
        "]",
    )
    PORTS = (
        ":7000",
        ":0",
        ":65535",
        ":65536",
        ":",
        "",
        ":-1",
        ":\u0663",
        ":\u00b2",
        ":" + "9" * 40,
    )

    def generate(self, rng: Rng) -> str:
        if rng.randrange(6) == 0:
            return random_text(rng, 30)
        text = rng.choice(self.HOSTS) + rng.choice(self.PORTS)
        return mutate_text(rng, text, (":", "[", "]", "::")) if rng.randrange(4) == 0 else text

    def check(self, value: str) -> None:
        try:
            host, port = parse_host_port(value)
        except ValueError:
            return
        require(isinstance(host, str) and isinstance(port, int), "wrong types")
        require(0 <= port <= 65535, "port out of range", repr(value))
        require(host != "", "accepted an empty host", repr(value))
        bare, _, port_text = value.rpartition(":")
        require(port == int(port_text), "port is not the number after the last ':'", repr(value))
        require(host in (bare, bare[1:-1]), "host is not the text before the port", repr(value))


class IpText(TextTarget):
    name = "ip"
    entry = "relay.protocol.addresses.parse_ip"
    SEEDS = ("192.0.2.1", "2001:db8::1", "::ffff:192.0.2.1", "fe80::1%eth0", "::", "0.0.0.0")

    def generate(self, rng: Rng) -> str:
        if rng.randrange(6) == 0:
            return random_text(rng, 40)
        text = rng.choice(self.SEEDS)
        return (
            mutate_text(rng, text, (".", ":", "::", "%", "256", "\u0663"))
            if rng.randrange(4)
            else text
        )

    def check(self, value: str) -> None:
        try:
            normal = parse_ip(value)
        except ValueError:
            return
        require(parse_ip(normal) == normal, "parse_ip is not idempotent", repr(value))
        require(ipaddress.ip_address(normal) == ipaddress.ip_address(value), "normal form differs")


_SECRET_RUN = re.compile("QZ[A-Z]{6}")
_SCHEMES = (
    "redis://",
    "rediss://",
    "unix://",
    "redis+cluster://",
    "rediss+cluster://",
    "redis+sentinel://",
    "rediss+sentinel://",
)
_SCHEME_SLIPS = ("redis:/", "redis//", "Redis://", "redis:", "redis+clusters://", "http://", "")
_URL_OPTIONS = (
    "socket_timeout",
    "socket_connect_timeout",
    "ssl_ca_certs",
    "ssl_cert_reqs",
    "ssl_check_hostname",
    "db",
    "health_check_interval",
    "max_connections",
    "retry_on_timeout",
    "bogus",
)


class StoreUrl(TextTarget):
    """Store URLs whose password holds marker runs (``QZ`` and six capitals) not used elsewhere.

    A marker after the first ``:`` of what precedes the URL's last ``@`` (past
    any ``://``) is in the password, however malformed the rest of the URL.
    Properties: only ValueError; no marker in the error; a URL accepted by
    check_store_url opens a store (as its docstring promises), nothing connecting.
    """

    name = "store_url"
    entry = "relay.store.check_store_url (+ open_store)"

    def _password(self, rng: Rng) -> str:
        parts = []
        for _ in range(1 + rng.randrange(3)):
            parts.append("QZ" + "".join(rng.choice("ABCDEFGHIJKLMNOPRSTUVWXY") for _ in range(6)))
            parts.append(
                rng.choice(("", "", "/", "?", "#", ":", "@", "[", "]", "%", "%2F", " ", "%zz"))
            )
        return "".join(parts)

    def _host(self, rng: Rng) -> str:
        host = rng.choice(("redis", "10.0.0.1", "[::1]", "::1", "[fe80::1%25eth0]", "", "a_b", "h"))
        port = rng.choice(("", ":6379", ":0", ":65536", ":x", ":", ":\u0663", ":99999999999"))
        part = host + port
        return mutate_text(rng, part, (":", "[", "]", ",")) if rng.randrange(6) == 0 else part

    def generate(self, rng: Rng) -> str:
        if rng.randrange(20) == 0:
            return rng.choice(("memory", "Memory", "memory ", ""))
        scheme = rng.choice(_SCHEMES) if rng.randrange(6) else rng.choice(_SCHEME_SLIPS)
        credentials = ""
        choice = rng.randrange(4)
        if choice == 1:
            credentials = ":" + self._password(rng) + "@"
        elif choice == 2:
            credentials = "user:" + self._password(rng) + "@"
        elif choice == 3:
            credentials = rng.choice(("user@", "@", ":@", "u%3Ax:@"))
        hosts = ",".join(self._host(rng) for _ in range(1 + rng.randrange(3)))
        if scheme == "unix://":
            hosts = rng.choice(("", "/tmp/redis.sock", "/", "host"))
        path = rng.choice(("", "", "/0", "/1", "/x", "/svc", "/svc/2", "/svc/x", "//", "/%zz"))
        query = ""
        for index in range(rng.randrange(3)):
            name = rng.choice(_URL_OPTIONS)
            value = rng.choice(("1", "0.5", "-1", "inf", "nan", "true", "none", "x", "", "1e999"))
            query += ("?" if index == 0 else "&") + f"{name}={value}"
        tail = rng.choice(("", "", "", "#frag", "?", "&", "%"))
        url = scheme + credentials + hosts + path + query + tail
        if rng.randrange(8) == 0:
            start = len(scheme) + len(credentials)
            url = url[:start] + mutate_text(rng, url[start:], (":", "/", "?", "@", ","))
        return url

    def check(self, value: str) -> None:
        rest = value.partition("://")[2] or value
        password = rest[: rest.rfind("@")].partition(":")[2] if "@" in rest else ""
        markers = _SECRET_RUN.findall(password)
        try:
            check_store_url(value)
        except ValueError as exc:
            message = str(exc)
            if any(m in message for m in markers):
                raise PropertyFailure("password in error message", message) from exc
            self.stats["refused"] += 1
            return
        self.stats["accepted"] += 1
        try:
            store = open_store(value, max_vni=16)
        except ValueError as exc:
            message = str(exc)
            raise PropertyFailure(
                "accepted by check_store_url, refused by open_store", message
            ) from exc
        del store


class Sockaddr(Target):
    """Raw ``sockaddr_in``/``sockaddr_in6`` bytes, as the batched transport passes sources."""

    name = "sockaddr"
    entry = "relay.protocol.addresses.sockaddr_host_port / format_address"

    def generate(self, rng: Rng) -> bytes:
        if rng.randrange(6) == 0:
            return rng.randbytes(rng.randrange(32))
        port = rng.choice((0, 1, 443, 65535, rng.randrange(65536)))
        if rng.randrange(2):
            data = sockaddr_in(socket.inet_ntop(socket.AF_INET, rng.randbytes(4)), port)
        else:
            raw = rng.choice((bytes(10) + b"\xff\xff" + rng.randbytes(4), rng.randbytes(16)))
            flow = rng.choice((0, rng.randrange(2**32)))
            scope = rng.choice((0, 0, 1, 2**32 - 1))
            data = sockaddr_in6(socket.inet_ntop(socket.AF_INET6, raw), port, flow, scope)
        return mutate_bytes(rng, data) if rng.randrange(3) == 0 else data

    def check(self, value: bytes) -> None:
        family = int.from_bytes(value[:2], sys.byteorder) if len(value) >= 2 else None
        v4 = family == socket.AF_INET and len(value) >= 8
        v6 = family == socket.AF_INET6 and len(value) >= 28
        try:
            host, port = sockaddr_host_port(value)
        except ValueError:
            require(not (v4 or v6), "refused a well-formed sockaddr", value.hex())
            return
        require(v4 or v6, "accepted bytes that are no sockaddr", value.hex())
        require(port == int.from_bytes(value[2:4], "big"), "wrong port")
        address, _, scope = host.partition("%")
        packed = ipaddress.ip_address(address).packed
        require(packed == (value[4:8] if v4 else value[8:24]), "wrong address")
        if v6:
            require(int(scope or 0) == int.from_bytes(value[24:28], sys.byteorder), "wrong scope")
        text = format_address(value)
        require(text is not None and parse_host_port(text)[1] == port, "text form is no HOST:PORT")


API_TOKEN = "Tk-7f3a9c2e1b"


class ApiToken(TextTarget):
    """Authorization headers as aiohttp hands them over (invalid UTF-8 as lone surrogates)."""

    name = "api_token"
    entry = "relay.shells.api_token.refusal"

    def generate(self, rng: Rng) -> str:
        if rng.randrange(8) == 0:
            return random_text(rng, 40)
        scheme = rng.choice(("Bearer", "bearer", "BEARER", "Basic", "Bearer:", ""))
        token = API_TOKEN if rng.randrange(3) else mutate_text(rng, API_TOKEN)
        space = rng.choice((" ", "  ", "\t", "", " \u00a0"))
        text = scheme + space + token + rng.choice(("", "", " ", "\r", "\udcff"))
        return mutate_text(rng, text, ("\udcc3", "\udcff", " ")) if rng.randrange(4) == 0 else text

    def check(self, value: str) -> None:
        reason = refusal(value, API_TOKEN)
        parts = value.split()
        if reason is None:
            require(
                len(parts) == 2 and parts[0].lower() == "bearer" and parts[1] == API_TOKEN,
                "let in without 'Bearer <token>'",
                repr(value),
            )
        else:
            require(API_TOKEN not in reason, "refusal shows the token")
            require(
                value.strip() not in (f"Bearer {API_TOKEN}", f"bearer {API_TOKEN}"),
                "refused the right token",
            )


class ApiRequest(Target):
    name = "api_request"
    entry = "relay.shells.api.parse_allocation_request"
    MAX_BODY = 4096

    def _key(self, rng: Rng) -> Any:
        text = "discokey:" + rng.randbytes(32).hex()
        if rng.randrange(4) == 0:
            return mutate_text(rng, text, ("D", "\n", "\u0663"))
        if rng.randrange(6) == 0:
            return random_json_value(rng)
        return text

    def generate(self, rng: Rng) -> bytes:
        kind = rng.randrange(10)
        if kind == 0:
            return rng.randbytes(rng.randrange(64))
        if kind == 1:
            return nested_json(rng, self.MAX_BODY).encode()
        keys: Any = [self._key(rng) for _ in range(rng.choice((2, 2, 2, 0, 1, 3)))]
        if rng.randrange(6) == 0:
            keys = random_json_value(rng)
        request: Any = {"DiscoKeys": keys}
        if rng.randrange(5) == 0:
            request[rng.choice(("x", "discoKeys", "DiscoKeys "))] = random_json_value(rng)
        if rng.randrange(10) == 0:
            request = rng.choice(([request], keys, None, "DiscoKeys"))
        text = json.dumps(request, ensure_ascii=rng.randrange(2) == 1)
        if rng.randrange(8) == 0:
            text = text.replace("d", "\\u0064", 1)
        body = text.encode(
            rng.choice(("utf-8", "utf-8", "utf-8", "utf-16", "utf-32")), "surrogatepass"
        )
        if rng.randrange(4) == 0:
            body = mutate_bytes(
                rng, body, (b'"', b"[", b"]", b"{", b"}", b",", b"\\", b"\xef\xbb\xbf")
            )
        return body[: self.MAX_BODY]

    def check(self, value: bytes) -> None:
        try:
            a, b = parse_allocation_request(value)
        except InvalidRequest:
            return
        require(
            json.loads(value)["DiscoKeys"] == [str(a), str(b)],
            "keys differ from the request's DiscoKeys",
        )


class RedisChange(Target):
    name = "redis_change"
    entry = "relay.store.redis._parse_change"

    def generate(self, rng: Rng) -> bytes:
        if rng.randrange(6) == 0:
            return rng.randbytes(rng.randrange(30))
        kind = rng.choice(("alloc", "bound", "free", "subscribed", "Alloc", ""))
        text = f"{kind} {rng.randrange(2**24)} {rng.randrange(2**40)}"
        if rng.randrange(2):
            text = mutate_text(rng, text, (" ", "-", "+", "\u0663", "\u00b2", "\uff11", "_"))
        return text.encode("utf-8", "surrogatepass")

    def check(self, value: bytes) -> None:
        change = redis_store._parse_change(value)
        if change is None:
            return
        require(change.kind in ("alloc", "bound", "free"), "unknown kind accepted")
        require(change.vni >= 0 and change.lamport_id >= 0, "negative number accepted")
        text = f"{change.kind} {change.vni} {change.lamport_id}".encode()
        require(redis_store._parse_change(text) == change, "change does not round-trip")


class RedisRecord(Target):
    """Endpoint records as the Lua scripts write them: 81 bytes, decoded field by field."""

    name = "redis_record"
    entry = "relay.store.redis.RedisStore._decode"

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.store = redis_store.RedisStore(aioredis.Redis())

    def generate(self, rng: Rng) -> bytes:
        if rng.randrange(4) == 0:
            return rng.randbytes(81)
        record = redis_store._RECORD.pack(
            rng.randrange(2**64),
            rng.randbytes(64),
            rng.randrange(-(2**63), 2**63),
            rng.randrange(2) == 1,
        )
        if rng.randrange(3) == 0:
            record = mutate_bytes(rng, record)
        return record

    def check(self, value: bytes) -> None:
        try:
            allocation = self.store._decode("relay", 7, value)
        except struct.error:
            require(len(value) != 81, "refused an 81-byte record")
            return
        require(len(value) == 81, "decoded a record that is not 81 bytes")
        require(
            allocation.lamport_id == int.from_bytes(value[:8], "big")
            and allocation.disco_keys[0].raw == value[8:40]
            and allocation.disco_keys[1].raw == value[40:72]
            and allocation.allocated_at == int.from_bytes(value[72:80], "big", signed=True) / 1000
            and allocation.bound == (value[80] != 0)
            and allocation.vni == 7,
            "fields differ from the record layout",
        )


class RedisRegistry(Target):
    """Registry entries written by ``_encode_relay`` read back by ``_decode_relay``, unchanged."""

    name = "redis_registry"
    entry = "relay.store.redis._decode_relay"

    def generate(self, rng: Rng) -> RelayRecord:
        return RelayRecord(
            name=random_text(rng, 12).replace("\udcff", "?") or "r",
            server_disco=DiscoPublicKey(rng.randbytes(32)),
            addr_ports=tuple(
                random_text(rng, 20).replace("\udcff", "?") for _ in range(rng.randrange(3))
            ),
            load=rng.randrange(2**40),
            capacity=rng.randrange(2**24),
            version=random_text(rng, 10).replace("\udcff", "?"),
            heartbeat_at=rng.randrange(2**41) / 1000,
            alive=rng.randrange(2) == 1,
            bind_lifetime=rng.choice((30.0, 0.001, 1e9)),
            steady_state_lifetime=rng.choice((300.0, 2.5, 1e12)),
        )

    def check(self, value: RelayRecord) -> None:
        now_ms = 1_700_000_000_000
        expires = now_ms + (1 if value.alive else 0)
        stored = f"{expires} ".encode() + redis_store._encode_relay(value).encode()
        back = redis_store._decode_relay(value.name.encode(), stored, now_ms)
        require(back == value, "registry entry does not round-trip", repr(back))

    def to_bytes(self, value: RelayRecord) -> bytes:
        return repr(value).encode()

    def from_bytes(self, data: bytes) -> RelayRecord:
        raise NotImplementedError("registry entries are shown, not replayed")

    def shrink(self, value: RelayRecord) -> Iterator[Any]:
        return iter(())


class ServerEndpointJson(TextTarget):
    """Allocation answers as JSON text; ``from_json`` promises ValueError or KeyError only."""

    name = "server_endpoint"
    entry = "relay.protocol.server_endpoint.ServerEndpoint.from_json"
    FIELDS = ("ServerDisco", "LamportID", "AddrPorts", "VNI", "BindLifetime", "SteadyStateLifetime")

    def generate(self, rng: Rng) -> str:
        endpoint = ServerEndpoint(
            DiscoPublicKey(rng.randbytes(32)),
            rng.randrange(2**40),
            tuple(f"192.0.2.{rng.randrange(256)}:{rng.randrange(65536)}" for _ in range(2)),
            1 + rng.randrange(geneve.MAX_VNI),
            rng.choice((30.0, 0.5, 1e-6)),
            rng.choice((300.0, 3600.0)),
        )
        data: dict[str, Any] = endpoint.to_json()
        for _ in range(rng.randrange(3)):
            name = rng.choice(self.FIELDS)
            op = rng.randrange(4)
            if op == 0:
                data.pop(name, None)
            elif op == 1:
                data[name] = random_json_value(rng)
            elif op == 2 and isinstance(data.get(name), str):
                data[name] = mutate_text(rng, data[name])
            else:
                data[random_text(rng, 6)] = random_json_value(rng)
        return json.dumps(data)

    def check(self, value: str) -> None:
        try:
            data = json.loads(value)
        except ValueError:
            return
        if not isinstance(data, dict):
            return
        try:
            endpoint = ServerEndpoint.from_json(data)
        except (ValueError, KeyError):
            return
        again = ServerEndpoint.from_json(endpoint.to_json())
        require(again.to_json() == endpoint.to_json(), "to_json does not round-trip")


class CorePackets(Target):
    """RelayCore.handle fed datagrams from attacker addresses (never a client's).

    Start: eight endpoints in every handshake state (ENDPOINT_PLAN), clients
    addressed by tuples and by sockaddr bytes; datagrams come as bytes or as
    memoryviews into a buffer that is scribbled over afterwards, as the batched
    transport reuses its slots. Per datagram: no exception; exactly one drop
    counted, or an answer; the state after equals the oracle's (:func:`expect`).
    From these sources the oracle only allows a replayed, authentic bind to an
    Init client (docs/protocol.md records the first source); such a change is
    undone before the next datagram. Handshake limits are out of reach here.
    """

    name = "core"
    entry = "relay.protocol.core.RelayCore.handle (attacker sources)"
    weight = 6.0
    spoofing = False
    limited = False
    LIMITS = GENEROUS_LIMITS

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        limits = self.LIMITS if self.limited else GENEROUS_LIMITS
        self.world = build_world(seed, limits)
        self.vnis = [vni for vni, _ in ENDPOINT_PLAN]
        clients = [client_addr(n) for n in range(CLIENTS)]
        self.sources = list(ATTACKER_ADDRS) + (clients if self.spoofing else [])
        keys = [m.public for pair in self.world.members.values() for m in pair]
        self.keys = [*keys, self.world.server_public, bytes(32)]

    def generate(self, rng: Rng) -> tuple[int, bytes, bool]:
        source = rng.randrange(len(self.sources))
        as_view = rng.randrange(2) == 1
        kind = rng.randrange(16)
        if kind == 0:
            return source, rng.randbytes(rng.randrange(120)), as_view
        if kind == 1:
            header = bytes((rng.randrange(256), rng.choice((0, 0x80, 0xFF))))
            header += rng.choice((b"\x7a\x11", b"\x7a\x12", rng.randbytes(2)))
            header += rng.choice(self.vnis).to_bytes(3, "big") + rng.randbytes(1)
            return source, header + rng.randbytes(rng.randrange(120)), as_view
        if kind == 2 and self.spoofing:
            addr, datagram = rng.choice(self.world.replays)
            return self.sources.index(addr), datagram, as_view
        datagram = rng.choice(self.world.corpus)
        if kind >= 4:
            for _ in range(1 + rng.randrange(3)):
                datagram = self._mutate(rng, datagram)
        return source, datagram, as_view

    def _mutate(self, rng: Rng, d: bytes) -> bytes:
        op = rng.randrange(12)
        if op == 0:
            vni = rng.choice(self.vnis)
            vni = rng.choice((vni, vni + 1, vni - 1, vni ^ 0x010000, 0, geneve.MAX_VNI))
            return d[:4] + (vni % (1 << 24)).to_bytes(3, "big") + d[7:]
        if op == 1 and len(d) >= 2:
            return d[:1] + bytes((d[1] ^ 0x80,)) + d[2:]
        if op == 2:
            protocol = rng.choice((b"\x7a\x11", b"\x7a\x12", b"\x11\x7a", rng.randbytes(2)))
            return d[:2] + protocol + d[4:]
        if op == 3 and d:
            return bytes((rng.randrange(256),)) + d[1:]
        if op == 4 and len(d) > 14:
            at = 8 + rng.randrange(6)
            return d[:at] + bytes((d[at] ^ (1 + rng.randrange(255)),)) + d[at + 1 :]
        if op == 5:
            return d[:14] + rng.choice(self.keys) + d[46:]
        if op == 6:
            return d[:46] + rng.randbytes(24) + d[70:]
        if op == 7 and len(d) > 70:
            at = 70 + rng.randrange(len(d) - 70)
            return d[:at] + bytes((d[at] ^ (1 << rng.randrange(8)),)) + d[at + 1 :]
        if op == 8:
            cut = rng.choice((0, 1, 7, 8, 9, 13, 14, 45, 46, 69, 70, 85, 86, 87, len(d) - 1))
            return d[: max(0, cut)]
        if op == 9:
            return d + rng.randbytes(1 + rng.randrange(40))
        if op == 10:
            other = rng.choice(self.world.corpus)
            cut = rng.choice((8, 14, 46, 70))
            return d[:cut] + other[cut:]
        return mutate_bytes(rng, d)

    def now(self) -> float:
        return self.world.now

    def check(self, value: tuple[int, bytes, bool]) -> None:
        source_index, datagram, as_view = value
        source = self.sources[source_index]
        world = self.world
        core = world.core
        before = world.baseline
        now = self.now()
        verdict = expect(world, datagram, source)
        drops = list(core.drops.values())
        if as_view:
            buffer = bytearray(b"\xee" * 3 + datagram + b"\xee" * 5)
            passed: bytes | memoryview = memoryview(buffer)[3 : 3 + len(datagram)]
        else:
            passed = datagram
        try:
            out = core.handle(passed, source, now)
            if out is not None:
                require(out[0] is passed or isinstance(out[0], bytes), "answer is not bytes")
            if as_view:
                buffer[:] = bytes(len(buffer))
            after = snapshot(core)
            dropped = [
                (reason, n - drops[i])
                for i, (reason, n) in enumerate(core.drops.items())
                if n != drops[i]
            ]
            kind = self._judge(verdict, before, after, out, passed, dropped, datagram, source, now)
        except BaseException:
            world.restore()
            raise
        self.stats[kind] += 1
        if dropped:
            self.stats[f"drop:{dropped[0][0].value}"] += 1
        if kind == "forward":
            world.baseline = after
        elif after != before:
            world.restore()

    def _judge(
        self,
        verdict: Expect,
        before: CoreSnap,
        after: CoreSnap,
        out: Any,
        passed: bytes | memoryview,
        dropped: list[tuple[Drop, int]],
        datagram: bytes,
        source: Any,
        now: float,
    ) -> str:
        """Raise unless the outcome is the verdict's; return what happened."""
        if dropped == [(Drop.RATE_LIMITED, 1)] and out is None:
            require(self.limited, "rate limited under limits it cannot reach")
            require(verdict.work, "rate limited before the handshake work", repr(verdict))
            if after != before:
                raise PropertyFailure(
                    "a rate-limited datagram changed the state", diff(before, after)
                )
            return "drop" if verdict.kind == "drop" else "rate_limited_work"
        if verdict.kind == "drop":
            require(out is None, "answered a datagram docs/protocol.md drops", repr(out)[:200])
            require(
                len(dropped) == 1 and dropped[0][1] == 1,
                "a drop is not counted exactly once",
                repr(dropped),
            )
            if after != before:
                raise PropertyFailure("a dropped datagram changed the state", diff(before, after))
            return "drop"
        require(
            not dropped, "counted a drop for a datagram docs/protocol.md accepts", repr(dropped)
        )
        vni, index = verdict.vni, verdict.index
        endpoint = view(before.endpoints[vni])
        client = endpoint.clients[index]
        if not self.spoofing:
            require(
                verdict.kind == "challenge_v1"
                or (verdict.kind == "challenge" and client.handshake is Handshake.INIT),
                "oracle: an attacker source earned more than a first bind",
                repr(verdict),
            )
        if verdict.kind == "challenge_v1":
            handshake = (
                client.handshake
                if client.handshake is Handshake.BOUND
                else Handshake.CHALLENGE_SENT
            )
            expected = with_client(before, vni, index, client._replace(handshake=handshake))
            if after != expected:
                raise PropertyFailure(
                    "a version 1 bind changed more than its client", diff(expected, after)
                )
            require(out is not None and out[1] == source, "challenge not sent to the bind's source")
            self._check_challenge_v1(out[0], vni, index, verdict.generation)
        elif verdict.kind == "challenge":
            addr = source if client.handshake is Handshake.INIT else client.addr
            expected = with_client(
                before, vni, index, client._replace(handshake=Handshake.CHALLENGE_SENT, addr=addr)
            )
            if after != expected:
                raise PropertyFailure("a bind changed more than its client", diff(expected, after))
            require(out is not None and out[1] == source, "challenge not sent to the bind's source")
            self._check_challenge(out[0], vni, index)
        elif verdict.kind == "bound":
            bound_now = endpoint.clients[1 - index].handshake is Handshake.BOUND
            changes: dict[str, Any] = {}
            if bound_now:
                changes = {"bound": True, "bound_at": now}
                deadline = now + self.world.steady_state_lifetime
                if deadline < endpoint.deadline:  # else the bind deadline's entry stays live
                    changes["deadline"] = deadline
            expected = with_client(
                before,
                vni,
                index,
                client._replace(handshake=Handshake.BOUND, last_seen=now),
                **changes,
            )
            expected = expected._replace(
                handshakes_completed=before.handshakes_completed + 1,
                bound_count=before.bound_count + bound_now,
                next_deadline=min(before.next_deadline, now + self.world.steady_state_lifetime)
                if bound_now and before.next_deadline is not None
                else before.next_deadline,
            )
            require(out is None, "an answer got a reply")
            if after != expected:
                raise PropertyFailure(
                    "an answer changed more than its client", diff(expected, after)
                )
        else:
            other = endpoint.clients[1 - index]
            expected = with_client(
                before,
                vni,
                index,
                client._replace(
                    last_seen=now, packets=client.packets + 1, bytes=client.bytes + len(datagram)
                ),
            )
            expected = expected._replace(
                forwarded_packets=before.forwarded_packets + 1,
                forwarded_bytes=before.forwarded_bytes + len(datagram),
            )
            require(
                out is not None and out[0] is passed and out[1] == other.addr,
                "not relayed as the very datagram passed in, to the other client",
                repr(out)[:200],
            )
            if after != expected:
                raise PropertyFailure(
                    "forwarding changed more than counters", diff(expected, after)
                )
        return verdict.kind

    def _check_challenge(self, reply: bytes, vni: int, index: int) -> None:
        member = self.world.members[vni][index]
        header = geneve.decode(reply)
        require(header == (geneve.PROTOCOL_DISCO, vni, True, 0), "challenge has a wrong header")
        frame = reply[geneve.HEADER_LEN :]
        require(disco.frame_sender(frame) == self.world.server_public, "challenge not from server")
        message = disco.parse(disco.open_frame(frame, member.shared))
        require(
            message == disco.BindUDPRelayEndpointChallenge(member.challenge),
            "reply is not the client's challenge",
        )

    def _check_challenge_v1(self, reply: bytes, vni: int, index: int, generation: int) -> None:
        members = self.world.members[vni]
        header = geneve.decode(reply)
        require(header == (geneve.PROTOCOL_DISCO, vni, True, 0), "challenge has a wrong header")
        frame = reply[geneve.HEADER_LEN :]
        require(disco.frame_sender(frame) == self.world.server_public, "challenge not from server")
        message = disco.parse(disco.open_frame(frame, members[index].shared))
        require(
            isinstance(message, disco.BindV1)
            and message.type == disco.TYPE_CHALLENGE
            and (message.vni, message.generation, message.remote_key)
            == (vni, generation, members[1 - index].public)
            and message.challenge != bytes(disco.CHALLENGE_LEN),
            "reply is not a version 1 challenge echoing the bind",
            repr(message),
        )

    def final_stats(self) -> Counter[str]:
        self.stats["restores"] = self.world.restores
        return self.stats

    def to_bytes(self, value: tuple[int, bytes, bool]) -> bytes:
        return bytes((value[0], value[2])) + value[1]

    def from_bytes(self, data: bytes) -> tuple[int, bytes, bool]:
        return data[0], data[2:], bool(data[1])

    def describe(self, value: tuple[int, bytes, bool]) -> str:
        form = "memoryview" if value[2] else "bytes"
        return f"source={self.sources[value[0]]!r} datagram ({form})={value[1].hex()}"

    def shrink(self, value: tuple[int, bytes, bool]) -> Iterator[Any]:
        for smaller in shrunk(value[1]):
            yield value[0], smaller, value[2]


class CoreSpoofed(CorePackets):
    """As ``core``, with sources that also spoof every client's address (an off-path attacker).

    Here the oracle also allows an authentic answer and data from a bound
    client's address, and checks their effects field by field.
    """

    name = "core_spoofed"
    entry = "relay.protocol.core.RelayCore.handle (spoofed client sources)"
    weight = 4.0
    spoofing = True


class CoreLimited(CoreSpoofed):
    """As ``core_spoofed`` under tight handshake limits, the clock moving 1 ms a datagram.

    The limits (fewer source buckets than sources, so the table starts afresh
    too) may turn handshake work into a counted RATE_LIMITED drop, and nothing
    else: never earlier than the work, never with a state change.
    """

    name = "core_limited"
    entry = "relay.protocol.core.RelayCore.handle (tight handshake limits)"
    weight = 3.0
    limited = True
    LIMITS = HandshakeLimits(
        rate_per_source=2.0, burst_per_source=4.0, total_rate=100.0, max_sources=16
    )
    STEP = 0.001

    def now(self) -> float:
        self.world.now += self.STEP
        return self.world.now


TARGETS: tuple[type[Target], ...] = (
    CorePackets,
    CoreSpoofed,
    CoreLimited,
    GeneveDecode,
    GeneveEncode,
    DiscoParse,
    DiscoFrame,
    PublicKeyText,
    PrivateKeyText,
    SecretsText,
    Durations,
    HostPort,
    IpText,
    Sockaddr,
    StoreUrl,
    ApiRequest,
    ApiToken,
    RedisChange,
    RedisRecord,
    RedisRegistry,
    ServerEndpointJson,
)
BY_NAME = {target.name: target for target in TARGETS}


def split(cases: int, targets: Sequence[type[Target]] = TARGETS) -> dict[str, int]:
    """Cases per target in proportion to ``weight`` (the core's two targets weigh most)."""
    total = sum(t.weight for t in targets)
    shares = {t.name: int(cases * t.weight / total) for t in targets}
    shares[targets[0].name] += cases - sum(shares.values())
    return shares


KNOWN_BUGS: tuple[KnownBug, ...] = ()
