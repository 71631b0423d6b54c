"""One endpoint, one version 0 client and one version 1 client, through `relayfleet relay`.

Each client binds in its own version on the relay's one socket, and data
flows both ways between them. Once bound, each keeps its version's rule: the
version 0 client's Bind is ignored, the version 1 client's is answered, and
the version 1 client can move to a new source port while the version 0
client's binding stays. Only ours is tested: the reference at v1.102.5 speaks
version 1 alone, and the one at v1.84.0 version 0 alone.
"""

from __future__ import annotations

from tests.conformance.servers import ServerProcess
from tests.conformance.wire_script import Conversation


def run_script(server: ServerProcess) -> dict[str, tuple]:
    c = Conversation(server.url, server.udp, version=1)
    try:
        c.open_sentinel()
        c.allocate("E", ("A", "B"), versions=(0, 1))
        a, b = c.client("A"), c.client("B")
        c.step("bind A in version 0", "a", c.bind("A"), owner="A")
        c.step("bind B in version 1", "b", c.bind("B", 1), owner="B")
        c.step("answer A", "a", c.answer("A", "a"))
        c.step("data A to B before B answered", "a", a.data(b"early"))
        c.step("answer B", "b", c.answer("B", "b", 1))
        c.step("data A to B", "a", a.data(b"to b"))
        c.step("data B to A", "b", b.data(b"to a"))
        c.step("bind A after bound", "a", c.bind("A"))
        c.step("bind B from a new source port", "b2", c.bind("B", 2), owner="B")
        c.step("answer B from the new port", "b2", c.answer("B", "b2", 2))
        c.step("data A to B after the move", "a", a.data(b"to b2"))
        c.step("data from B's old port", "b", b.data(b"old"))
        c.step("data from B's new port", "b2", b.data(b"from b2"))
        return dict(c.trace)
    finally:
        c.close()


def test_a_version_0_and_a_version_1_client_bind_and_relay(go_helpers):
    server = ServerProcess.start("ours")
    try:
        seen = run_script(server)
    finally:
        server.stop()
    assert seen["bind A in version 0"] == (("a", ("challenge", "E", 1)),)
    assert seen["bind B in version 1"] == (("b", ("challenge v1", "E", "E", 1, "A", 2)),)
    assert seen["answer A"] == ()
    assert seen["data A to B before B answered"] == ()
    assert seen["answer B"] == ()
    assert seen["data A to B"] == (("b", ("data", "E", b"to b")),)
    assert seen["data B to A"] == (("a", ("data", "E", b"to a")),)
    assert seen["bind A after bound"] == ()
    assert seen["bind B from a new source port"] == (("b2", ("challenge v1", "E", "E", 2, "A", 3)),)
    assert seen["answer B from the new port"] == ()
    assert seen["data A to B after the move"] == (("b2", ("data", "E", b"to b2")),)
    assert seen["data from B's old port"] == ()
    assert seen["data from B's new port"] == (("a", ("data", "E", b"from b2")),)
