"""A relay as a node of a tailnet (issue 18), so that Tailscale clients find and use it.

Current Tailscale clients look for peer relays among their tailnet peers and
ask one for an endpoint with disco over DERP. This package holds what a relay
needs to be such a peer.

Sans I/O, like ``relay.protocol``: ``noise`` (the control protocol's Noise
handshake and records), ``control_messages`` and ``netmap`` (register and map
messages; the tailnet as the map poll describes it, grants included),
``nodekeys``, ``derp`` (DERP frames) and ``allocation_requests`` (the rules
that admit a peer's disco 0x08, and the sealed 0x09 answer).

Over asyncio: ``control_conn`` and ``control`` (the connection to the control
server, registration and the map poll), ``derp_client`` (the node's DERP
connection), ``peer_relay`` (the door that answers admitted requests through
the relay's own ``allocate``), and ``node``, which runs them all for a relay
process (``relayfleet relay --tailnet-login-server``); ``identity_file`` keeps
the node's keys and ``metrics`` shows what it does.
"""
