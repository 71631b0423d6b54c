"""The kopf operator that places RelayEndpoint resources on relays (not built yet)."""
