"""The rules that turn disco messages from DERP into allocations (tailnet/allocation_requests)."""

from __future__ import annotations

import ipaddress

import pytest
from nacl import bindings

from relay.protocol import disco
from relay.protocol.keys import DiscoPrivateKey, sorted_pair
from relay.tailnet.allocation_requests import Drop, Peer, Request, RequestGate

NODE_DISCO = DiscoPrivateKey.generate()
CLIENT = DiscoPrivateKey.generate()
OTHER_CLIENT = DiscoPrivateKey.generate()
NODE_KEY = b"\x01" * 32


def request_from(
    sender: DiscoPrivateKey = CLIENT,
    clients: tuple[bytes, bytes] | None = None,
    generation: int = 7,
    to: DiscoPrivateKey = NODE_DISCO,
) -> bytes:
    if clients is None:
        clients = (CLIENT.public.raw, OTHER_CLIENT.public.raw)
    message = disco.AllocateUDPRelayEndpointRequest(clients, generation)
    return disco.seal(sender.public.raw, sender.shared(to.public), message)


def peer(granted: bool = True, disco_key: DiscoPrivateKey = CLIENT) -> Peer:
    return Peer(NODE_KEY, disco_key.public, granted)


@pytest.fixture
def gate() -> RequestGate:
    return RequestGate(NODE_DISCO)


def test_a_granted_clients_request_is_admitted(gate):
    admitted = gate.check(NODE_KEY, request_from(), peer())
    assert admitted == Request(
        NODE_KEY, CLIENT.public, sorted_pair((CLIENT.public, OTHER_CLIENT.public)), 7
    )


def test_the_same_frame_again_is_a_replay_but_a_new_request_is_not(gate):
    frame = request_from()
    assert isinstance(gate.check(NODE_KEY, frame, peer()), Request)
    assert gate.check(NODE_KEY, frame, peer()) is Drop.REPLAYED
    assert isinstance(gate.check(NODE_KEY, request_from(generation=8), peer()), Request)


def test_the_replay_memory_is_bounded():
    gate = RequestGate(NODE_DISCO, replay_memory=2)
    first = request_from()
    for frame in (first, request_from(), request_from()):
        assert isinstance(gate.check(NODE_KEY, frame, peer()), Request)
    assert isinstance(gate.check(NODE_KEY, first, peer()), Request), "forgotten, oldest first"


@pytest.mark.parametrize(
    ("frame", "from_peer", "reason"),
    [
        (b"not disco at all" * 8, peer(), Drop.NOT_DISCO),
        (request_from(), None, Drop.UNKNOWN_PEER),
        (request_from(), Peer(b"\x02" * 32, CLIENT.public, True), Drop.UNKNOWN_PEER),
        (request_from(), peer(disco_key=OTHER_CLIENT), Drop.DISCO_KEY_MISMATCH),
        (request_from(to=DiscoPrivateKey.generate()), peer(), Drop.UNDECRYPTABLE),
        (
            disco.seal(
                CLIENT.public.raw,
                CLIENT.shared(NODE_DISCO.public),
                disco.BindUDPRelayEndpointChallenge(b"\x00" * 32),
            ),
            peer(),
            Drop.NOT_A_REQUEST,
        ),
        (
            request_from(clients=(OTHER_CLIENT.public.raw, DiscoPrivateKey.generate().public.raw)),
            peer(),
            Drop.SENDER_NOT_A_CLIENT,
        ),
        (request_from(), peer(granted=False), Drop.NOT_GRANTED),
    ],
    ids=lambda value: value.value if isinstance(value, Drop) else "",
)
def test_each_rule_drops_what_breaks_it(gate, frame, from_peer, reason):
    assert gate.check(NODE_KEY, frame, from_peer) is reason


def test_a_box_holding_garbage_is_malformed(gate):
    shared = CLIENT.shared(NODE_DISCO.public)
    nonce = b"\x05" * disco.NONCE_LEN
    box = bindings.crypto_box_afternm(b"\x08\x00short", nonce, shared)
    frame = disco.MAGIC + CLIENT.public.raw + nonce + box
    assert gate.check(NODE_KEY, frame, peer()) is Drop.MALFORMED


def test_the_answer_opens_for_the_sender_and_echoes_the_generation(gate):
    admitted = gate.check(NODE_KEY, request_from(generation=42), peer())
    endpoint = disco.UDPRelayEndpoint(
        server_disco=DiscoPrivateKey.generate().public.raw,
        client_disco=tuple(k.raw for k in admitted.clients),
        lamport_id=3,
        vni=99,
        bind_lifetime_ns=30_000_000_000,
        steady_state_lifetime_ns=300_000_000_000,
        addr_ports=((ipaddress.ip_address("192.0.2.1"), 7777),),
    )
    frame = gate.answer(admitted, endpoint)
    assert disco.frame_sender(frame) == NODE_DISCO.public.raw
    opened = disco.parse(disco.open_frame(frame, CLIENT.shared(NODE_DISCO.public)))
    assert opened == disco.AllocateUDPRelayEndpointResponse(42, endpoint)
