"""Version 1: the same scripted packets to ours and to the v1.102.5 reference, the same outcome.

The script (docs/protocol.md "Version 1: handshake") goes through every rule a
client can reach: binds with a wrong sealed VNI, a wrong RemoteKey or
generation 0; Bind repeated, each answered; answers with a stale generation,
a wrong challenge, from another source; the handshake; data both ways; Bind
after bound; and a re-bind from a new source port, after which data follows
the new address. Every reply is compared in decoded form (the endpoint, the
sealed VNI, generation and RemoteKey of a challenge, and whether its value
repeats), never the challenge's bytes, which are each server's own MAC.

The reference runs with one socket (:data:`servers.ONE_SOCKET`) so that the
sentinel of :mod:`wire_script` sees its datagrams handled in order.

Answers across challenge-key rotations are tested on ours alone, with
``--challenge-rotation 1s``: the reference's rotation is fixed at 2 minutes.
"""

from __future__ import annotations

import pytest

from relay.protocol import disco
from relay.protocol.client import RelayClient
from tests.conformance.servers import ONE_SOCKET, ServerProcess
from tests.conformance.wire_script import Conversation
from tests.support.waiting import wait_until_sync

UNALLOCATED_VNI = 0xFFFFFE
NO_CHALLENGE = bytes(disco.CHALLENGE_LEN)


def bind_with(
    client: RelayClient, generation: int, remote: RelayClient, vni: int | None = None
) -> bytes:
    """A version 1 bind with every field chosen: ``vni`` is the sealed one."""
    sealed_vni = client.vni if vni is None else vni
    message = disco.BindV1(disco.TYPE_BIND, sealed_vni, generation, remote.public_key.raw)
    return client.control(message)


def answer_with(
    client: RelayClient,
    generation: int,
    remote: RelayClient,
    challenge: bytes,
    vni: int | None = None,
) -> bytes:
    """A version 1 answer with every field chosen."""
    sealed_vni = client.vni if vni is None else vni
    fields = (sealed_vni, generation, remote.public_key.raw, challenge)
    return client.control(disco.BindV1(disco.TYPE_ANSWER, *fields))


def run_script(server: ServerProcess) -> list[tuple]:
    c = Conversation(server.url, server.udp, version=1)
    try:
        c.open_sentinel()
        c.allocate("E1", ("A", "B"))
        c.allocate("E2", ("C", "D"))
        a, b, cc, d = (c.client(name) for name in "ABCD")

        def rejected(name: str, sender: str, datagram: bytes, owner: str | None = None) -> None:
            """A step that must not bind A, then B's data to show whether A became bound."""
            c.step(name, sender, datagram, owner)
            c.step(f"{name}: then B sends data", "b", b.data(b"probe"))

        c.step("bind A with E2's VNI sealed", "a", bind_with(a, 1, b, vni=cc.vni), owner="A")
        c.step(
            "bind A with an unallocated VNI sealed", "a", bind_with(a, 1, b, vni=UNALLOCATED_VNI)
        )
        c.step("bind A naming C as the remote", "a", bind_with(a, 1, cc))
        c.step("bind A naming itself as the remote", "a", bind_with(a, 1, a))
        c.step("bind A with generation 0", "a", bind_with(a, 0, b))
        c_on_e1 = RelayClient(cc.private_key, cc.server_key, a.vni, d.public_key)
        c.step("bind with a key foreign to the endpoint", "c", bind_with(c_on_e1, 1, d), owner="C")
        c.step("bind B", "b", c.bind("B", 1), owner="B")
        c.step("correct answer B", "b", c.answer("B", "b", 1))

        rejected("answer A before any bind", "a", answer_with(a, 1, b, NO_CHALLENGE))
        c.step("bind A", "a", c.bind("A", 1))
        first = c.challenge_of("a")
        c.step("bind A again", "a", c.bind("A", 1))
        c.step("bind A a third time", "a", c.bind("A", 1))
        c.step("bind A with generation 2", "a", c.bind("A", 2))
        second = c.challenge_of("a")
        rejected("answer A with the stale generation", "a", answer_with(a, 1, b, first))
        rejected("answer A with the stale generation's challenge", "a", answer_with(a, 2, b, first))
        rejected("answer A with a wrong challenge", "a", answer_with(a, 2, b, NO_CHALLENGE))
        rejected("answer A from another source", "a2", answer_with(a, 2, b, second), owner="A")
        rejected("answer A with E2's VNI sealed", "a", answer_with(a, 2, b, second, vni=cc.vni))
        rejected("answer A naming C as the remote", "a", answer_with(a, 2, cc, second))
        rejected("answer A with a generation not in progress", "a", answer_with(a, 3, b, second))
        c.step("correct answer A", "a", c.answer("A", "a", 2))
        c.step("data A to B", "a", a.data(b"to b"))
        c.step("data B to A", "b", b.data(b"to a" * 300))
        c.step("the same answer again", "a", answer_with(a, 2, b, second))
        c.step("data from a third address", "x", a.data(b"stranger"))
        c.step("data from A's second source", "a2", a.data(b"not yet"))

        c.step("bind A after bound", "a", c.bind("A", 3))
        third = c.challenge_of("a")
        c.step("bind B after bound", "b", c.bind("B", 2))
        c.step("data B to A during A's handshake", "b", b.data(b"still to a"))
        c.step("bind A from a new source port", "a2", c.bind("A", 4))
        c.step("data B to A before the answer", "b", b.data(b"before"))
        c.step("answer A from the new source port", "a2", c.answer("A", "a2", 4))
        c.step("data B to A after the re-bind", "b", b.data(b"after"))
        c.step("data from A's old source port", "a", a.data(b"old"))
        c.step("data from A's new source port", "a2", a.data(b"new"))
        c.step("answer A from the old port, earlier handshake", "a", answer_with(a, 3, b, third))
        c.step("data B to A after that", "b", b.data(b"still after"))
        return c.trace
    finally:
        c.close()


@pytest.fixture(scope="module")
def both_traces(go_helpers) -> dict[str, list[tuple]]:
    traces = {}
    for kind in ("ours", "reference-v1"):
        server = ServerProcess.start(kind, env=ONE_SOCKET if kind == "reference-v1" else None)
        try:
            traces[kind] = run_script(server)
        finally:
            server.stop()
    return traces


def test_both_servers_reply_and_forward_alike_step_by_step(both_traces):
    ours, reference = both_traces["ours"], both_traces["reference-v1"]
    assert [step[0] for step in ours] == [step[0] for step in reference]
    for ours_step, reference_step in zip(ours, reference, strict=True):
        assert ours_step == reference_step, ours_step[0]


def test_the_script_exercises_replies_forwarding_and_silence(both_traces):
    seen = dict(both_traces["ours"])
    for name in (
        "bind A with E2's VNI sealed",
        "bind A naming C as the remote",
        "bind A with generation 0",
        "answer A with the stale generation: then B sends data",
        "answer A from another source: then B sends data",
        "correct answer A",
        "data from A's old source port",
    ):
        assert seen[name] == (), name
    assert seen["bind B"] == (("b", ("challenge v1", "E1", "E1", 1, "A", 1)),)
    assert seen["bind A"] == (("a", ("challenge v1", "E1", "E1", 1, "B", 2)),)
    assert seen["bind A a third time"] == seen["bind A"]
    assert seen["bind A with generation 2"] == (("a", ("challenge v1", "E1", "E1", 2, "B", 3)),)
    assert seen["data B to A"] == (("a", ("data", "E1", b"to a" * 300)),)
    assert seen["bind A after bound"] == (("a", ("challenge v1", "E1", "E1", 3, "B", 4)),)
    assert seen["data B to A before the answer"] == (("a", ("data", "E1", b"before")),)
    assert seen["data B to A after the re-bind"] == (("a2", ("data", "E1", b"after")),)
    assert seen["data from A's new source port"] == (("b", ("data", "E1", b"new")),)
    assert seen["data B to A after that"] == (("a2", ("data", "E1", b"still after")),)


def rotations(c: Conversation, name: str, socket_name: str, generation: int, count: int) -> None:
    """Return once the challenge key has rotated ``count`` times since the last challenge
    ``socket_name`` got: client ``name`` binds again from it with the same ``generation``,
    whose challenge then changes only with the key."""
    client, sock = c.client(name), c.socket(socket_name)
    seen = [c.challenge_of(socket_name)]

    def rotated() -> bool:
        sock.send(c.bind(name, generation), c.relay)
        challenge = client.read_control(sock.receive()).challenge
        if challenge != seen[-1]:
            seen.append(challenge)
        return len(seen) > count

    wait_until_sync(rotated, f"{count} rotations of the challenge key", timeout=10.0 * count)


def test_an_answer_holds_for_one_rotation_not_two(go_helpers):
    """Ours alone, with ``--challenge-rotation 1s``: the reference's is fixed at 2 minutes.

    An answer to a challenge made under the previous key binds; one made two
    keys ago is dropped. Each answer is sent as soon as the rotations it
    waits for are seen, milliseconds into a period of a second.
    """
    server = ServerProcess.start("ours", "--challenge-rotation", "1s")
    c = Conversation(server.url, server.udp, version=1)
    try:
        c.open_sentinel()
        c.allocate("E1", ("A", "B"))
        a, b = c.client("A"), c.client("B")
        c.step("bind B", "b", c.bind("B", 1), owner="B")
        c.step("correct answer B", "b", c.answer("B", "b", 1))
        c.step("bind A", "a", c.bind("A", 1), owner="A")
        first = c.challenge_of("a")
        rotations(c, "A", "a", 1, count=2)
        c.step("answer A two rotations later", "a", answer_with(a, 1, b, first))
        c.step("then B sends data", "b", b.data(b"probe"))
        c.step("bind A again", "a", c.bind("A", 2))
        second = c.challenge_of("a")
        rotations(c, "A", "a", 2, count=1)
        c.step("answer A one rotation later", "a", answer_with(a, 2, b, second))
        c.step("then B sends data again", "b", b.data(b"probe"))
    finally:
        c.close()
        server.stop()
    seen = dict(c.trace)
    assert seen["bind A"] == (("a", ("challenge v1", "E1", "E1", 1, "B", 2)),)
    assert seen["then B sends data"] == ()
    assert seen["then B sends data again"] == (("a", ("data", "E1", b"probe")),)
