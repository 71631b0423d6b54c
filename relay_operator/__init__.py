"""The kopf operator that places RelayEndpoint resources on the fleet's relays.

A RelayEndpoint names two peers' disco keys; the operator picks a live relay,
allocates a VNI there through the store (Redis), and writes the allocation
into the resource's status. The relays then report their endpoints' live
state into the same status (relay/reporter.py). The resource itself (names,
status builders, API client) is :mod:`relay.resource`, below both.

- :mod:`~relay_operator.handlers`: the kopf handlers, module-level functions on one
  registry, finding the operator's parts in kopf's memo; thin glue between
  resources, the allocator and status.
- :mod:`~relay_operator.allocating`: the :class:`~relay_operator.allocating.Allocator`,
  which reuses an allocation that still stands or places and allocates anew,
  over the store. No Kubernetes.
- :mod:`~relay_operator.placement`: the placement rule, which relay serves a new
  endpoint. Pure.
- :mod:`~relay_operator.relay_check`: the fleet-wide check that marks the
  resources of a relay that stopped heart-beating, for the handlers to place again.
- :mod:`~relay_operator.relay_objects`: one cluster-scoped Relay object per relay,
  kept from the registry at a bounded rate, with Events when a relay dies or returns.
- :mod:`~relay_operator.metrics`: the operator's Prometheus metrics;
  :mod:`~relay_operator.pending`, the RelayEndpoints waiting, as they count them.
- :mod:`~relay_operator.config`: its settings, each declared once with its flag.
- :mod:`~relay_operator.main`: running it: kopf settings, peering, the store, the memo.
- :mod:`~relay_operator.fleet`: ``relayfleet status``, the fleet at a glance, from a
  kubeconfig (the Relay objects) or the store; :mod:`~relay_operator.fleet_watch`, its
  live view (``--watch``).
"""
