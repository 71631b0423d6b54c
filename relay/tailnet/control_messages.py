"""The control protocol's messages as a node sends and reads them, sans I/O.

After the Noise handshake (:mod:`relay.tailnet.noise`) a node talks to its
control server in HTTP/2 requests carrying JSON (tailcfg in tailscale.com
v1.102.5). This module builds the two requests a relay needs (registration
with a pre-auth key, the map poll) and reads what comes back: the optional
early payload that precedes HTTP/2, the registration answer, and the map
stream's frames. What a map message *means* for the node's view of the
tailnet is :mod:`relay.tailnet.netmap`.

Facts it holds, as tailscale.com v1.102.5 and Headscale v0.29.3 have them:

- The node offers capability version 142 (``tailcfg.CurrentCapabilityVersion``)
  in the Noise handshake, in ``/key?v=`` and in every request. Peers treat a
  node of version 121 or more as able to allocate relay endpoints.
- The first 9 plaintext bytes from the server are either ``ff ff ff 'T' 'S'``
  and a big-endian u32 length followed by that much JSON (``EarlyNoise``), or
  the start of HTTP/2 (which must then be kept).
- A map stream is a sequence of little-endian u32 lengths, each followed by
  that much JSON (uncompressed: we ask for ``Compress: ""``). ``{"KeepAlive":
  true}`` messages only prove the stream is alive.
- A refused registration comes back as HTTP 200 with ``Error`` set, or as an
  HTTP error status with a text body.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from relay.protocol.keys import DiscoPublicKey
from relay.tailnet.nodekeys import NodePublicKey

CAPABILITY_VERSION = 142
"""tailcfg.CurrentCapabilityVersion of tailscale.com v1.102.5."""
RELAY_CAPABLE_VERSION = 121
"""The least capability version that peers consider able to serve as a peer relay."""

EARLY_PAYLOAD_MAGIC = b"\xff\xff\xffTS"
EARLY_HEADER = struct.Struct(">5sI")
MAX_EARLY_PAYLOAD = 10 << 20
MAP_LENGTH = struct.Struct("<I")
MAX_MAP_MESSAGE = 64 << 20
"""A map message larger than this is treated as a broken stream (the reference has no limit)."""

LB_HEADER = "ts-lb"
"""The load-balancer hint header: the node key of the request's node."""
JSON_CONTENT_TYPE = "application/json"


class ControlError(Exception):
    """The control server cannot be used as it answered."""


class ControlProtocolError(ControlError):
    """The control server sent something malformed or unexpected."""


class RegistrationRefused(ControlError):
    """The control server refused to register the node (a bad or expired pre-auth key, say)."""

    def __init__(self, reason: str, status: int = 200) -> None:
        super().__init__(f"the control server refused the registration: {reason}")
        self.reason = reason
        self.status = status


class RegistrationIncomplete(ControlError):
    """The server wants an interactive login (``AuthURL``) or has not authorized the node yet."""

    def __init__(self, auth_url: str) -> None:
        detail = f"it asks for a login at {auth_url}" if auth_url else "the node is not authorized"
        super().__init__(f"registration is incomplete: {detail}; use a pre-auth key")
        self.auth_url = auth_url


@dataclass(frozen=True, slots=True)
class Hostinfo:
    """What the node tells the server about itself (the subset of tailcfg.Hostinfo we fill).

    ``peer_relay`` is what a tailscaled with ``--relay-server-port`` set
    reports (``Hostinfo.PeerRelay``); ``preferred_derp`` is the node's home
    DERP region (``NetInfo.PreferredDERP``), which peers see as its
    ``HomeDERP`` and use to reach it over DERP; 0 while unknown.
    """

    hostname: str
    peer_relay: bool = False
    preferred_derp: int = 0
    os: str = "linux"
    version: str = "relay-fleet"

    def to_json(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "IPNVersion": self.version,
            "OS": self.os,
            "Hostname": self.hostname,
        }
        if self.peer_relay:
            info["PeerRelay"] = True
        if self.preferred_derp:
            info["NetInfo"] = {"PreferredDERP": self.preferred_derp}
        return info


def encode(message: Mapping[str, Any]) -> bytes:
    """A request body: compact JSON."""
    return json.dumps(message, separators=(",", ":")).encode()


def register_request(
    node_key: NodePublicKey,
    hostinfo: Hostinfo,
    *,
    auth_key: str | None,
    old_node_key: NodePublicKey | None = None,
    ephemeral: bool = False,
) -> dict[str, Any]:
    """A RegisterRequest: with ``auth_key`` a login with a pre-auth key; without, a re-register
    of a node the server already knows (it answers with the node's state)."""
    request: dict[str, Any] = {
        "Version": CAPABILITY_VERSION,
        "NodeKey": str(node_key),
        "Hostinfo": hostinfo.to_json(),
    }
    if old_node_key is not None:
        request["OldNodeKey"] = str(old_node_key)
    if auth_key is not None:
        request["Auth"] = {"AuthKey": auth_key}
    if ephemeral:
        request["Ephemeral"] = True
    return request


@dataclass(frozen=True, slots=True)
class Registration:
    """A successful registration: the node may poll its map."""

    machine_authorized: bool
    node_key_expired: bool
    login_name: str
    user_id: int


def parse_register_response(status: int, body: bytes) -> Registration:
    """Read the answer to a RegisterRequest; raises :class:`RegistrationRefused` when refused,
    :class:`RegistrationIncomplete` when it needs a human, :class:`ControlProtocolError` when
    it is not a RegisterResponse."""
    if status != 200:
        raise RegistrationRefused(f"HTTP {status}: {_text(body)}", status)
    response = _json_object(body, "RegisterResponse")
    if error := response.get("Error"):
        raise RegistrationRefused(str(error))
    if response.get("AuthURL") or not response.get("MachineAuthorized"):
        raise RegistrationIncomplete(str(response.get("AuthURL") or ""))
    login = response.get("Login") or {}
    user = response.get("User") or {}
    return Registration(
        machine_authorized=True,
        node_key_expired=bool(response.get("NodeKeyExpired")),
        login_name=str(login.get("LoginName") or user.get("LoginName") or ""),
        user_id=int(user.get("ID") or 0),
    )


def map_request(
    node_key: NodePublicKey,
    disco_key: DiscoPublicKey,
    hostinfo: Hostinfo,
    *,
    stream: bool,
    omit_peers: bool = False,
    endpoints: Iterable[str] = (),
) -> dict[str, Any]:
    """A MapRequest. ``stream=True`` is the long poll (with keep-alives); ``stream=False`` with
    ``omit_peers=True`` is a "lite" update of Hostinfo and endpoints, answered by a bare 200."""
    request: dict[str, Any] = {
        "Version": CAPABILITY_VERSION,
        "Compress": "",
        "KeepAlive": stream,
        "NodeKey": str(node_key),
        "DiscoKey": str(disco_key),
        "Stream": stream,
        "Hostinfo": hostinfo.to_json(),
    }
    if omit_peers:
        request["OmitPeers"] = True
    endpoint_list = list(endpoints)
    if endpoint_list:
        request["Endpoints"] = endpoint_list
        # EndpointType 0 is "unknown": we do not say how we learned them.
        request["EndpointTypes"] = [0] * len(endpoint_list)
    return request


@dataclass(frozen=True, slots=True)
class EarlyNoise:
    """The server's early payload: a per-connection challenge key (unused by a relay)."""

    node_key_challenge: str


class EarlyPayloadReader:
    """Tells the early payload from the start of HTTP/2 in the first plaintext bytes.

    Feed it plaintext until :meth:`feed` returns True; then :attr:`early` is
    the payload (or None when the server sent none) and :attr:`rest` the bytes
    that belong to HTTP/2.
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        self.done = False
        self.early: EarlyNoise | None = None
        self.rest = b""

    def feed(self, data: bytes) -> bool:
        if self.done:
            raise ControlProtocolError("the early payload has been read already")
        self._buffer += data
        if len(self._buffer) < EARLY_HEADER.size:
            return False
        magic, length = EARLY_HEADER.unpack_from(self._buffer)
        if magic != EARLY_PAYLOAD_MAGIC:
            self._finish(None, bytes(self._buffer))
            return True
        if length > MAX_EARLY_PAYLOAD:
            raise ControlProtocolError(f"early payload of {length} bytes")
        end = EARLY_HEADER.size + length
        if len(self._buffer) < end:
            return False
        payload = _json_object(bytes(self._buffer[EARLY_HEADER.size : end]), "EarlyNoise")
        self._finish(
            EarlyNoise(str(payload.get("nodeKeyChallenge", ""))), bytes(self._buffer[end:])
        )
        return True

    def _finish(self, early: EarlyNoise | None, rest: bytes) -> None:
        self.done = True
        self.early = early
        self.rest = rest
        self._buffer.clear()


class MapFrameReader:
    """Splits a map stream's body into its messages (each a parsed JSON object)."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        self._buffer += data
        messages = []
        while len(self._buffer) >= MAP_LENGTH.size:
            (length,) = MAP_LENGTH.unpack_from(self._buffer)
            if length > MAX_MAP_MESSAGE:
                raise ControlProtocolError(f"map message of {length} bytes")
            end = MAP_LENGTH.size + length
            if len(self._buffer) < end:
                break
            messages.append(_json_object(bytes(self._buffer[MAP_LENGTH.size : end]), "MapResponse"))
            del self._buffer[:end]
        return messages


def is_keep_alive(message: Mapping[str, Any]) -> bool:
    """Whether a map message is only a keep-alive (nothing else set)."""
    return bool(message.get("KeepAlive")) and all(
        key == "KeepAlive" or value in (None, "", 0, False, [], {})
        for key, value in message.items()
    )


def _json_object(body: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(body)
    except (ValueError, UnicodeDecodeError) as error:
        raise ControlProtocolError(f"{what} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise ControlProtocolError(f"{what} is not a JSON object")
    return value


def _text(body: bytes, limit: int = 500) -> str:
    return body[:limit].decode("utf-8", "replace").strip()
