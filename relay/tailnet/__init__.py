"""A relay as a node of a tailnet (issue 18), so that Tailscale clients find and use it.

Current Tailscale clients look for peer relays among their tailnet peers and
ask one for an endpoint with disco over DERP. This package holds what a relay
needs to be such a peer. The wire formats are sans I/O like
``relay.protocol``: ``noise`` is the control protocol's Noise handshake and
record framing, ``derp`` the DERP stream's frames. The clients that move
them over sockets sit beside them: ``derp_client`` (asyncio). Still to come:
the control client (registration and map poll over Noise and HTTP/2) and
disco over DERP answering allocation requests.
"""
