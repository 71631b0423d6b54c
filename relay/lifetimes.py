"""The protocol's default endpoint lifetimes (PROTOCOL.md "Allocation"), in seconds."""

DEFAULT_BIND_LIFETIME = 30.0
DEFAULT_STEADY_STATE_LIFETIME = 300.0
