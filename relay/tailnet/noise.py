"""The control protocol's Noise handshake and record framing ("ts2021"), sans I/O.

A tailnet node talks to its control server (Tailscale's or Headscale) over a
Noise_IK_25519_ChaChaPoly_BLAKE2s channel: the node proves its machine key,
it already knows the server's, and everything after the handshake (HTTP/2
with registration and the map poll) travels in encrypted records. This module
is that channel and nothing else: it opens no socket and reads no clock. The
caller writes :attr:`ClientHandshake.initiation`, feeds what arrives to
:meth:`ClientHandshake.receive` until it returns a :class:`Transport`, then
writes what :meth:`Transport.seal` returns and feeds what arrives to
:meth:`Transport.open`.

Invariants, as tailscale.com's control/controlbase holds them (v1.102.5):

- The prologue is ``"Tailscale Control Protocol v"`` and the protocol version
  in decimal, the same version the initiation's header carries in clear; so
  both sides agree on the version or the handshake fails.
- Wire messages: the initiation is ``version:u16 type=1:u8 length=96:u16``,
  then the client's ephemeral key (32 bytes, clear), its machine key (32
  bytes encrypted, 48 on the wire) and a 16-byte tag; every other message is
  ``type:u8 length:u16`` and a body: the response (type 2: the server's
  ephemeral key and a tag, 48 bytes), an error (type 3: unauthenticated text,
  a hint only) or a record (type 4: ciphertext). Integers are big-endian.
- A record is at most 4096 bytes on the wire, so it carries at most 4077
  bytes of plaintext; longer plaintext is split over several records. A
  record with no plaintext is valid and yields nothing.
- Each direction has its own key and a nonce that counts records from 0,
  written big-endian into the last 8 of the 12 nonce bytes (not the
  little-endian of the Noise specification). The counter never reaches
  2**64 - 1, and a direction never decrypts again after a record fails.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from nacl import bindings
from nacl.exceptions import CryptoError
from nacl.exceptions import RuntimeError as NaclRuntimeError

from relay.protocol.keys import KEY_LEN, Curve25519PrivateKey, Curve25519PublicKey

PROTOCOL_NAME = b"Noise_IK_25519_ChaChaPoly_BLAKE2s"
PROLOGUE_PREFIX = b"Tailscale Control Protocol v"

MSG_INITIATION = 1
MSG_RESPONSE = 2
MSG_ERROR = 3
MSG_RECORD = 4

TAG_LEN = 16
HEADER = struct.Struct(">BH")
"""type and body length: the header of every message but the initiation."""
INITIATION_HEADER = struct.Struct(">HBH")
"""protocol version, type and body length: the initiation's header."""
INITIATION_BODY_LEN = KEY_LEN + (KEY_LEN + TAG_LEN) + TAG_LEN
INITIATION_LEN = INITIATION_HEADER.size + INITIATION_BODY_LEN
RESPONSE_BODY_LEN = KEY_LEN + TAG_LEN
RESPONSE_LEN = HEADER.size + RESPONSE_BODY_LEN

MAX_MESSAGE_LEN = 4096
MAX_CIPHERTEXT_LEN = MAX_MESSAGE_LEN - HEADER.size
MAX_PLAINTEXT_LEN = MAX_CIPHERTEXT_LEN - TAG_LEN

NONCE_PREFIX = bytes(4)
NONCE_LIMIT = 2**64 - 1
"""The first counter value that is never used: a direction that reaches it is exhausted."""

MACHINE_PUBLIC_PREFIX = "mkey:"


class NoiseError(Exception):
    """The channel cannot go on; the connection under it should be closed."""


class HandshakeError(NoiseError):
    """The server's answer to the initiation is malformed or does not authenticate."""


class ServerRefused(HandshakeError):
    """The server answered with an error message. Its text is unauthenticated: a hint only."""

    def __init__(self, text: str) -> None:
        super().__init__(f"control server refused the handshake: {text!r}")
        self.text = text


class RecordError(NoiseError):
    """A received record is of the wrong type, too long, or does not decrypt."""


class MachinePublicKey(Curve25519PublicKey):
    """A machine's (or control server's) long-term Noise public key, written ``mkey:`` and
    64 lower-case hex digits."""

    __slots__ = ()
    PREFIX = MACHINE_PUBLIC_PREFIX
    KIND = "machine"


class MachinePrivateKey(Curve25519PrivateKey):
    """A machine's long-term Noise private key."""

    __slots__ = ()
    PUBLIC = MachinePublicKey


def _prologue(version: int) -> bytes:
    return PROLOGUE_PREFIX + str(version).encode()


def _nonce(counter: int) -> bytes:
    return NONCE_PREFIX + counter.to_bytes(8, "big")


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.digest(key, data, hashlib.blake2s)


def _hkdf2(chaining_key: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """HKDF with BLAKE2s, salted by the chaining key: its first two 32-byte outputs."""
    prk = _hmac(chaining_key, secret)
    first = _hmac(prk, b"\x01")
    return first, _hmac(prk, first + b"\x02")


def _x25519(private: bytes, public: bytes) -> bytes:
    try:
        return bindings.crypto_scalarmult(private, public)
    except NaclRuntimeError:
        raise HandshakeError("X25519 with a low-order public key") from None


class _SymmetricState:
    """The handshake's running hash and chaining key (Noise's SymmetricState)."""

    def __init__(self, version: int) -> None:
        self.hash = hashlib.blake2s(PROTOCOL_NAME).digest()
        self.chaining_key = self.hash
        self.mix_hash(_prologue(version))

    def mix_hash(self, data: bytes) -> None:
        self.hash = hashlib.blake2s(self.hash + data).digest()

    def mix_dh(self, private: bytes, public: bytes) -> bytes:
        """Mix in a Diffie-Hellman result; return the key for the next (single) AEAD use."""
        self.chaining_key, key = _hkdf2(self.chaining_key, _x25519(private, public))
        return key

    def encrypt_and_hash(self, key: bytes, plaintext: bytes) -> bytes:
        ciphertext = bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, self.hash, _nonce(0), key
        )
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, key: bytes, ciphertext: bytes) -> bytes:
        try:
            plaintext = bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
                ciphertext, self.hash, _nonce(0), key
            )
        except CryptoError:
            raise HandshakeError("handshake message does not authenticate") from None
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[bytes, bytes]:
        """The two transport keys: initiator to responder, then responder to initiator."""
        return _hkdf2(self.chaining_key, b"")


class _Direction:
    """One direction's key and record counter."""

    def __init__(self, key: bytes) -> None:
        self._key = key
        self._counter = 0

    def _next_nonce(self) -> bytes:
        if self._counter >= NONCE_LIMIT:
            raise NoiseError("cipher exhausted: no nonces left for this key")
        nonce = _nonce(self._counter)
        self._counter += 1
        return nonce

    def seal(self, plaintext: bytes) -> bytes:
        return bindings.crypto_aead_chacha20poly1305_ietf_encrypt(
            plaintext, None, self._next_nonce(), self._key
        )

    def open(self, ciphertext: bytes) -> bytes:
        return bindings.crypto_aead_chacha20poly1305_ietf_decrypt(
            ciphertext, None, self._next_nonce(), self._key
        )


class Transport:
    """An established channel: seals plaintext into records, opens received records.

    Received bytes may end in the middle of a record; the rest is kept until
    it arrives. After a record fails, :meth:`open` raises for good (the
    directions are out of step), while :meth:`seal` still works, as in Go.
    """

    def __init__(
        self,
        *,
        send_key: bytes,
        receive_key: bytes,
        version: int,
        peer: MachinePublicKey,
        handshake_hash: bytes,
        received: bytes = b"",
    ) -> None:
        self._send = _Direction(send_key)
        self._receive = _Direction(receive_key)
        self._buffer = bytearray(received)
        self._failed: RecordError | None = None
        self.version = version
        """The protocol version both sides agreed on in the handshake."""
        self.peer = peer
        """The other side's long-term public key."""
        self.handshake_hash = handshake_hash
        """Noise's handshake hash: binds other messages to this connection."""

    @property
    def buffered(self) -> int:
        """How many received bytes wait for the rest of their record."""
        return len(self._buffer)

    def seal(self, plaintext: bytes) -> bytes:
        """The records that carry ``plaintext``, ready to write; no bytes for no plaintext."""
        records = bytearray()
        for start in range(0, len(plaintext), MAX_PLAINTEXT_LEN):
            chunk = plaintext[start : start + MAX_PLAINTEXT_LEN]
            records += HEADER.pack(MSG_RECORD, len(chunk) + TAG_LEN)
            records += self._send.seal(chunk)
        return bytes(records)

    def open(self, data: bytes = b"") -> bytes:
        """Take received bytes; return the plaintext of every record now complete.

        Call it with no argument right after the handshake: bytes that came
        with the server's response are already here.
        """
        if self._failed is not None:
            raise RecordError(f"an earlier record failed: {self._failed}")
        self._buffer += data
        plaintext = bytearray()
        try:
            while (ciphertext := self._take_record()) is not None:
                plaintext += self._open_record(ciphertext)
        except RecordError as error:
            self._failed = error
            self._buffer.clear()
            raise
        return bytes(plaintext)

    def _take_record(self) -> bytes | None:
        if len(self._buffer) < HEADER.size:
            return None
        kind, length = HEADER.unpack_from(self._buffer)
        if kind != MSG_RECORD:
            raise RecordError(f"message of type {kind} where a record (type {MSG_RECORD}) belongs")
        if length > MAX_CIPHERTEXT_LEN:
            raise RecordError(f"record of {length} bytes, more than {MAX_CIPHERTEXT_LEN}")
        if length < TAG_LEN:
            raise RecordError(f"record of {length} bytes cannot hold its {TAG_LEN}-byte tag")
        end = HEADER.size + length
        if len(self._buffer) < end:
            return None
        ciphertext = bytes(self._buffer[HEADER.size : end])
        del self._buffer[:end]
        return ciphertext

    def _open_record(self, ciphertext: bytes) -> bytes:
        try:
            return self._receive.open(ciphertext)
        except CryptoError:
            raise RecordError("record does not decrypt") from None
        except NoiseError as error:
            raise RecordError(str(error)) from None


class ClientHandshake:
    """The client (initiator) side of the handshake, for one connection.

    ``machine_key`` is this node's key, ``control_key`` the server's (from its
    ``/key`` endpoint), ``version`` the protocol version to offer (Tailscale
    clients offer their capability version). Every handshake makes a fresh
    ephemeral key.
    """

    def __init__(
        self,
        machine_key: MachinePrivateKey,
        control_key: MachinePublicKey,
        version: int,
    ) -> None:
        if not 0 <= version <= 0xFFFF:
            raise ValueError(f"protocol version {version} does not fit in 16 bits")
        self._machine_key = machine_key
        self._control_key = control_key
        self._version = version
        self._ephemeral = MachinePrivateKey.generate()
        self._buffer = bytearray()
        self._done = False
        self._state = _SymmetricState(version)
        self.initiation = self._initiate()
        """The first message to send (also what an HTTP upgrade carries, in base64)."""

    def _initiate(self) -> bytes:
        state = self._state
        state.mix_hash(self._control_key.raw)
        ephemeral_public = self._ephemeral.public.raw
        state.mix_hash(ephemeral_public)
        key = state.mix_dh(self._ephemeral.raw, self._control_key.raw)
        sealed_machine_key = state.encrypt_and_hash(key, self._machine_key.public.raw)
        key = state.mix_dh(self._machine_key.raw, self._control_key.raw)
        tag = state.encrypt_and_hash(key, b"")
        header = INITIATION_HEADER.pack(self._version, MSG_INITIATION, INITIATION_BODY_LEN)
        return header + ephemeral_public + sealed_machine_key + tag

    def receive(self, data: bytes) -> Transport | None:
        """Take bytes from the server; return the transport once the response is complete.

        Bytes after the response stay in the transport (see :meth:`Transport.open`).
        Raises :class:`ServerRefused` for an error message, :class:`HandshakeError`
        for anything else that is not a valid response, and the same again if
        called after it returned a transport or raised.
        """
        if self._done:
            raise HandshakeError("the handshake is over; this object is spent")
        self._buffer += data
        if len(self._buffer) < HEADER.size:
            return None
        kind, length = HEADER.unpack_from(self._buffer)
        if kind not in (MSG_RESPONSE, MSG_ERROR):
            self._done = True
            raise HandshakeError(f"unexpected handshake message type {kind}")
        if kind == MSG_RESPONSE and length != RESPONSE_BODY_LEN:
            self._done = True
            raise HandshakeError(f"handshake response of {length} bytes, not {RESPONSE_BODY_LEN}")
        end = HEADER.size + length
        if len(self._buffer) < end:
            return None
        self._done = True
        body, rest = bytes(self._buffer[HEADER.size : end]), bytes(self._buffer[end:])
        self._buffer.clear()
        if kind == MSG_ERROR:
            raise ServerRefused(body.decode("utf-8", "replace"))
        return self._finish(body, rest)

    def _finish(self, body: bytes, rest: bytes) -> Transport:
        state = self._state
        server_ephemeral, tag = body[:KEY_LEN], body[KEY_LEN:]
        state.mix_hash(server_ephemeral)
        state.mix_dh(self._ephemeral.raw, server_ephemeral)
        key = state.mix_dh(self._machine_key.raw, server_ephemeral)
        state.decrypt_and_hash(key, tag)
        to_server, to_client = state.split()
        return Transport(
            send_key=to_server,
            receive_key=to_client,
            version=self._version,
            peer=self._control_key,
            handshake_hash=state.hash,
            received=rest,
        )


@dataclass(frozen=True, slots=True)
class Accepted:
    """What the server side makes of a valid initiation."""

    response: bytes
    """The message to send back to the client."""
    transport: Transport
    """The server's end; its ``peer`` is the client's machine key."""


def accept(control_key: MachinePrivateKey, initiation: bytes) -> Accepted:
    """The server (responder) side, for tests: answer one complete initiation.

    Raises :class:`HandshakeError` when the initiation is malformed or not
    meant for ``control_key``.
    """
    if len(initiation) != INITIATION_LEN:
        raise HandshakeError(f"handshake initiation of {len(initiation)} bytes")
    version, kind, length = INITIATION_HEADER.unpack_from(initiation)
    if kind != MSG_INITIATION or length != INITIATION_BODY_LEN:
        raise HandshakeError("not a handshake initiation")
    body = initiation[INITIATION_HEADER.size :]
    client_ephemeral = body[:KEY_LEN]
    sealed_machine_key = body[KEY_LEN : KEY_LEN + KEY_LEN + TAG_LEN]
    initiation_tag = body[KEY_LEN + KEY_LEN + TAG_LEN :]

    state = _SymmetricState(version)
    state.mix_hash(control_key.public.raw)
    state.mix_hash(client_ephemeral)
    key = state.mix_dh(control_key.raw, client_ephemeral)
    client_key = MachinePublicKey(state.decrypt_and_hash(key, sealed_machine_key))
    key = state.mix_dh(control_key.raw, client_key.raw)
    state.decrypt_and_hash(key, initiation_tag)

    ephemeral = MachinePrivateKey.generate()
    state.mix_hash(ephemeral.public.raw)
    state.mix_dh(ephemeral.raw, client_ephemeral)
    key = state.mix_dh(ephemeral.raw, client_key.raw)
    response_tag = state.encrypt_and_hash(key, b"")
    to_server, to_client = state.split()
    transport = Transport(
        send_key=to_client,
        receive_key=to_server,
        version=version,
        peer=client_key,
        handshake_hash=state.hash,
    )
    response = HEADER.pack(MSG_RESPONSE, RESPONSE_BODY_LEN) + ephemeral.public.raw + response_tag
    return Accepted(response, transport)
