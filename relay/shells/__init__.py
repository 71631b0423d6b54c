"""The I/O around one relay's core: each shell joins it to one part of the world.

:mod:`~relay.shells.transport` reads and writes UDP in batches and hands each
datagram to the core; :mod:`~relay.shells.agent` keeps the core and the
store in step (registry, heartbeat, installs, resync, expiry, write-back);
:mod:`~relay.shells.api` serves the HTTP allocation API, the endpoint table,
health and metrics (:mod:`~relay.shells.metrics`), on one listener or two,
optionally behind a bearer token (:mod:`~relay.shells.api_token`) and within
limits per client address and per pair (:mod:`~relay.shells.api_limits`);
:mod:`~relay.shells.keyfile`
keeps the relay's key and challenge secret; :mod:`~relay.shells.gc_freeze`
keeps the garbage collector from stalling a large relay; and
:mod:`~relay.shells.peer` is the client side's UDP socket. None of them
knows Kubernetes: relay/server.py wires them together with the reporter. None
decides what the protocol decides: that is the core's (relay/protocol/core.py).
"""
