"""relay-fleet's relay: the protocol, its store, the process around it, and the command.

The package is in layers; a module imports only from layers below its own.
Bottom to top (pyproject.toml's "layers" contract lists the same, top first):

- :mod:`relay.protocol`: the wire format, keys and the sans-I/O relay core
  (:mod:`relay.protocol.core`, the packet path); no I/O, no clock.
- :mod:`relay.aio`: helpers for long work on an event loop (taking turns,
  stopping tasks).
- :mod:`relay.store`: where allocations live, one interface
  (:mod:`relay.store.interface`) over memory and Redis.
- :mod:`relay.flags`: flags declared once, as config fields, for argparse
  and the environment.
- :mod:`relay.shells`: the I/O of one relay process: the UDP transport, the
  agent that keeps core and store in step, the HTTP API, metrics, key file.
- :mod:`relay.fastpath`: bound endpoints relayed by nftables in the kernel.
- :mod:`relay.resource`: the RelayEndpoint resource (names, status builders,
  API client), shared with the operator.
- :mod:`relay.reporter`: endpoints' live state written into their
  RelayEndpoints' status; beside it :mod:`relay.tailnet`, the relay as a
  node of a tailnet (control client, DERP, disco; under way, issue 18).
- :mod:`relay.config`: the relay's one typed configuration.
- :mod:`relay.server`: a relay process wired together from all of the above
  (on the same level as the operator, ``relay_operator``, which the relay
  never imports).
- :mod:`relay.demo`: the one-machine demo.
- :mod:`relay.cli`: the ``relayfleet`` command, the one module that imports
  both the relay and the operator.

docs/architecture.md explains the layers and the path of a packet.
"""

__version__ = "0.1.0"
