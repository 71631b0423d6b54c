"""relay-fleet's relay: the wire format, the sans-I/O relay core, and the shells around it.

The packet logic lives in :mod:`relay.protocol.core` and never touches a socket or a
clock; :mod:`relay.shells.transport`, :mod:`relay.shells.api` and :mod:`relay.server` are the
thin layers that connect it to the world.
"""

__version__ = "0.1.0"
