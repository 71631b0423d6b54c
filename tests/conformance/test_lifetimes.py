"""The bind lifetime on both servers, with the reference's fixed 30 s.

The reference's lifetimes cannot be shortened and it checks them once per
bind lifetime, so an unbound endpoint there goes between 30 and 60 s after
allocation; both servers run at once so the test costs that once. (The
steady-state lifetime, 5 min there, is tested on our server alone, with
short lifetimes, in tests/relay.)
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from tests.conformance.servers import ServerProcess
from tests.conformance.wire_script import Conversation, post_allocation

DEADLINE = 90.0
PROBE_EVERY = 1.0


def unbound_endpoint_expires(kind: str) -> dict:
    server = ServerProcess.start(kind)
    c = Conversation(server.url, server.udp)
    try:
        c.open_sentinel()
        endpoint = c.allocate("E", ("A", "B"))
        a = c.client("A")
        allocated = time.monotonic()
        alive_probes = 0
        while time.monotonic() - allocated < DEADLINE:
            c.step("bind A", "a", a.bind(), owner="A")
            if not c.trace[-1][1]:
                break
            alive_probes += 1
            time.sleep(PROBE_EVERY)
        else:
            return {"expired": False}
        keys = [str(k.public_key) for k in (c.client("B"), a)]
        status, again = post_allocation(server.url, keys)
        c.sync()  # the bound sentinel endpoint still relays
        return {
            "expired": True,
            "answered_binds_first": alive_probes > 0,
            "reallocated": status == 200 and again["LamportID"] > endpoint.response["LamportID"],
        }
    finally:
        c.close()
        server.stop()


def test_an_unbound_endpoint_expires_on_both_servers_alike(go_helpers):
    with ThreadPoolExecutor(2) as pool:
        ours, reference = pool.map(unbound_endpoint_expires, ["ours", "reference"])
    assert ours == reference
    assert ours == {
        "expired": True,
        "answered_binds_first": True,
        "reallocated": True,
    }
