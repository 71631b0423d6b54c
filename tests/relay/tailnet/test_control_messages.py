"""The control protocol's messages (relay/tailnet/control_messages.py) and node keys, sans I/O."""

from __future__ import annotations

import json
import struct

import pytest

from relay.protocol.keys import DiscoPrivateKey, InvalidKey
from relay.tailnet import control_messages as msgs
from relay.tailnet.nodekeys import NodePrivateKey, NodePublicKey

NODE = NodePrivateKey.generate().public
DISCO = DiscoPrivateKey.generate().public


def test_node_keys_have_their_text_forms_and_hide_the_private_half():
    private = NodePrivateKey.generate()
    assert NodePrivateKey.parse(private.text()).public == private.public
    assert NodePublicKey.parse(str(private.public)) == private.public
    assert str(private.public).startswith("nodekey:") and len(str(private.public)) == 72
    assert private.text() not in repr(private) and private.text() not in str(private)
    for bad in ("nodekey:" + "0" * 63, "discokey:" + "0" * 64, "nodekey:" + "A" * 64, None):
        with pytest.raises(InvalidKey):
            NodePublicKey.parse(bad)  # type: ignore[arg-type]


def test_a_register_request_carries_the_key_the_hostinfo_and_the_pre_auth_key():
    hostinfo = msgs.Hostinfo("relay-1", peer_relay=True, preferred_derp=999)
    request = json.loads(msgs.encode(msgs.register_request(NODE, hostinfo, auth_key="k")))

    assert request == {
        "Version": 142,
        "NodeKey": str(NODE),
        "Hostinfo": {
            "IPNVersion": "relay-fleet",
            "OS": "linux",
            "Hostname": "relay-1",
            "PeerRelay": True,
            "NetInfo": {"PreferredDERP": 999},
        },
        "Auth": {"AuthKey": "k"},
    }
    again = msgs.register_request(NODE, msgs.Hostinfo("relay-1"), auth_key=None)
    assert "Auth" not in again and "PeerRelay" not in again["Hostinfo"]


def test_a_map_request_is_a_stream_with_keep_alives_or_a_lite_update():
    hostinfo = msgs.Hostinfo("relay-1")
    poll = msgs.map_request(NODE, DISCO, hostinfo, stream=True)
    assert poll["Stream"] and poll["KeepAlive"] and poll["Compress"] == ""
    assert (poll["NodeKey"], poll["DiscoKey"]) == (str(NODE), str(DISCO))
    assert "OmitPeers" not in poll and "Endpoints" not in poll

    lite = msgs.map_request(NODE, DISCO, hostinfo, stream=False, omit_peers=True,
                            endpoints=["192.0.2.1:7"])  # fmt: skip
    assert not lite["Stream"] and not lite["KeepAlive"] and lite["OmitPeers"]
    assert lite["Endpoints"] == ["192.0.2.1:7"] and lite["EndpointTypes"] == [0]


def test_a_registration_is_accepted_only_when_authorized():
    body = json.dumps({"MachineAuthorized": True, "User": {"ID": 3}, "Login": {"LoginName": "x"}})
    registration = msgs.parse_register_response(200, body.encode())
    assert registration.machine_authorized and registration.user_id == 3
    assert registration.login_name == "x"


@pytest.mark.parametrize(
    ("status", "body", "reason"),
    [
        (200, b'{"Error": "invalid pre auth key"}', "invalid pre auth key"),
        (401, b"unauthorized\n", "HTTP 401: unauthorized"),
    ],
)
def test_a_refused_registration_says_why(status, body, reason):
    with pytest.raises(msgs.RegistrationRefused) as refused:
        msgs.parse_register_response(status, body)
    assert refused.value.reason == reason
    assert reason in str(refused.value)


def test_a_registration_that_wants_a_login_is_incomplete():
    with pytest.raises(msgs.RegistrationIncomplete) as incomplete:
        msgs.parse_register_response(200, b'{"AuthURL": "http://x/register/abc"}')
    assert incomplete.value.auth_url == "http://x/register/abc"
    with pytest.raises(msgs.RegistrationIncomplete):
        msgs.parse_register_response(200, b"{}")
    with pytest.raises(msgs.ControlProtocolError):
        msgs.parse_register_response(200, b"[]")


def early(payload: bytes) -> bytes:
    return msgs.EARLY_PAYLOAD_MAGIC + struct.pack(">I", len(payload)) + payload


def test_the_early_payload_is_read_and_what_follows_is_kept_for_http2():
    data = early(b'{"nodeKeyChallenge": "chalpub:00"}') + b"PRI * HTTP/2.0"
    reader = msgs.EarlyPayloadReader()
    fed = [reader.feed(data[i : i + 1]) for i in range(len(data) - 14)]
    assert fed[-1] and not any(fed[:-1])
    assert reader.early == msgs.EarlyNoise("chalpub:00")
    assert reader.rest == b""

    reader = msgs.EarlyPayloadReader()
    assert reader.feed(data)
    assert reader.rest == b"PRI * HTTP/2.0"


def test_without_an_early_payload_the_first_nine_bytes_stay_http2():
    settings = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
    reader = msgs.EarlyPayloadReader()
    assert not reader.feed(settings[:8])
    assert reader.feed(settings[8:] + b"more")
    assert reader.early is None and reader.rest == settings + b"more"


def test_a_huge_or_malformed_early_payload_is_an_error():
    with pytest.raises(msgs.ControlProtocolError):
        msgs.EarlyPayloadReader().feed(msgs.EARLY_PAYLOAD_MAGIC + struct.pack(">I", 11 << 20))
    with pytest.raises(msgs.ControlProtocolError):
        msgs.EarlyPayloadReader().feed(early(b"not json"))


def frame(message: object) -> bytes:
    body = json.dumps(message).encode()
    return struct.pack("<I", len(body)) + body


def test_map_frames_are_split_across_any_chunking():
    stream = frame({"KeepAlive": True}) + frame({"Node": {"ID": 1}}) + frame({"Seq": 2})
    reader = msgs.MapFrameReader()
    messages = []
    for i in range(0, len(stream), 5):
        messages += reader.feed(stream[i : i + 5])
    assert messages == [{"KeepAlive": True}, {"Node": {"ID": 1}}, {"Seq": 2}]
    assert reader.buffered == 0
    assert [msgs.is_keep_alive(m) for m in messages] == [True, False, False]
    assert not msgs.is_keep_alive({"KeepAlive": True, "PeersRemoved": [3]})


def test_a_huge_or_malformed_map_frame_breaks_the_stream():
    with pytest.raises(msgs.ControlProtocolError):
        msgs.MapFrameReader().feed(struct.pack("<I", msgs.MAX_MAP_MESSAGE + 1))
    with pytest.raises(msgs.ControlProtocolError):
        msgs.MapFrameReader().feed(struct.pack("<I", 3) + b"[1]")
