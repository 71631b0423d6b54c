"""The relay protocol, sans I/O: wire format, keys, allocations and the relay core.

What is here: the Geneve header (:mod:`.geneve`), disco frames and bind
messages (:mod:`.disco`), disco keys (:mod:`.keys`), Go durations
(:mod:`.durations`), socket address text (:mod:`.addresses`), what an
allocation is (:mod:`.allocation`) and how the API writes it
(:mod:`.server_endpoint`), the relay core (:mod:`.core`) with its handshake
rate limits (:mod:`.ratelimit`) and latency histogram (:mod:`.histogram`),
and a client's side (:mod:`.client`). docs/protocol.md says what the bytes
and rules are; this package is where they are kept.

Rule 1: the data path decides on 8 bytes. :meth:`.core.RelayCore.handle`
reads the control bit and the VNI, looks the VNI up, compares the source
with the two bound addresses and returns the very datagram it was given with
its destination, so the transport sends it from the buffer it arrived in. It
logs nothing, awaits nothing and asks no store; its counters are plain
integers that the shells read when they need them.

Rule 2: nothing in this package opens a socket, reads a clock, sends,
receives or waits. Time comes in as ``now`` on every call that needs it
(``handle``, ``expire``, ``install``, ``credit``, the rate limiter's
``allow``), and addresses are whatever
hashable values the transport passes, which the core only compares. So every
rule and every expiry is tested at once, with a fake clock.

Rule 3: the package imports no asyncio, aiohttp, redis, kubernetes, kopf,
uvloop or prometheus_client, and nothing of ``relay`` outside itself. The
import contracts in pyproject.toml hold this ("pure-protocol", and
``relay.protocol`` at the bottom of "layers"), and tests/test_architecture.py
imports the core in a fresh interpreter and finds no asyncio loaded.

Rule 4: a client's handshake goes Init -> ChallengeSent -> Bound
(docs/protocol.md "Bind handshake"), and the length of each bind message's
body says its version (72 bytes or more: version 1). In version 0 the source
of its first Bind becomes its address, and only that address may go on; a
bound client's control packets are dropped, and once both clients are bound
the endpoint drops every version 0 control packet. In version 1
(docs/protocol.md "Version 1") every valid Bind is answered, the Answer binds
its own source, and a bound client may bind again with a new generation to
move its address, while the other client's binding and the LamportID stay.
A valid Bind is the only datagram ever answered, with one Challenge of the
same size.

Rule 5: cheap checks come before crypto. The header, the frame's length and
magic, the sender key and the client's state are checked first; then the
handshake rate limits (one bucket per source, one for all) must admit the
message; only then is the box opened. Every refusal is a counted
:class:`.core.Drop`, never an exception, and never touches another endpoint.

Rule 6: challenges are MACs, not stored state. A challenge is keyed BLAKE2s
under the relay's challenge secret: in version 0 over (VNI, LamportID, client
key), the same after a restart; in version 1 over (VNI, generation, other
client's key, the Bind's source) under a key derived from the secret and the
number of the current ``challenge_rotation`` period, the previous period's
also accepted. Nothing per handshake is kept but version 1's generation.

Rule 7: expiry works in bounded batches. Each endpoint has one live deadline
in a heap; :meth:`.core.RelayCore.expire` handles at most ``budget`` of them
per call and never scans every endpoint, so no call stalls its caller.

Rule 8: the core knows allocations only as :class:`.allocation.Allocation`
values that its caller installs and removes; it never reaches a store, and
it tells its caller of bound endpoints through :meth:`.core.RelayCore.watch_bound`
and of clients that moved through :meth:`.core.RelayCore.watch_moves`.
"""
