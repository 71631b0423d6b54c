"""TLS toward the tailnet's servers: the system's CAs, plus one the operator names.

A control server behind TLS and its DERP servers are verified like any HTTPS
server. A private tailnet (Headscale with a certificate of its own CA) adds
that CA with ``--tailnet-ca-file``, as tailscaled's ``SSL_CERT_FILE`` would.
"""

from __future__ import annotations

import ssl


def tls_context(ca_file: str | None = None) -> ssl.SSLContext:
    """A client context verifying against the system's CAs and ``ca_file``'s, if given."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return context
