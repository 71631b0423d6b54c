"""A relay as a node of a tailnet (issue 18), so that Tailscale clients find and use it.

Current Tailscale clients look for peer relays among their tailnet peers and
ask one for an endpoint with disco over DERP. This package holds what a relay
needs to be such a peer. The wire formats are sans I/O like
``relay.protocol``: ``noise`` is the control protocol's Noise handshake and
record framing, ``derp`` the DERP stream's frames, ``allocation_requests``
the rules that admit a peer's disco 0x08 and the sealed 0x09 answer. Over
sockets (asyncio): ``derp_client`` holds the relay node's DERP connection,
and ``peer_relay`` answers the requests arriving on it by allocating through
the relay's own ``allocate``. Still to come: the control client
(registration and map poll over Noise and HTTP/2) that supplies the netmap
and the DERP region, and the wiring into ``relayfleet relay``.
"""
