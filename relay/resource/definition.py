"""The RelayEndpoint resource's names: API group, version, plural, labels, annotations, phases.

The CustomResourceDefinition (crds/relayendpoint.yaml) declares the resource;
this module names what the relays and the operator read and write in it, once.
"""

GROUP = "relayfleet.io"
VERSION = "v1alpha1"
PLURAL = "relayendpoints"
KIND = "RelayEndpoint"

RELAY_LABEL = "relayfleet.io/relay"
"""The relay an endpoint is placed on. A tenant may edit labels but not status,
so readers check it against ``status.relay``."""

REALLOCATE_ANNOTATION = "relayfleet.io/reallocate"
"""Set to a new value to allocate an Expired endpoint afresh."""

RELAY_DEAD_ANNOTATION = "relayfleet.io/relay-dead"
"""Put by the operator's relay check on endpoints of a relay that stopped heart-beating, or
that came back under another disco key than their ``serverDisco``."""

FINALIZER = "relayfleet.io/free-allocation"

PENDING = "Pending"
ALLOCATED = "Allocated"
BOUND = "Bound"
EXPIRED = "Expired"
PHASES = (PENDING, ALLOCATED, BOUND, EXPIRED)
"""Every ``status.phase``, in the order an endpoint passes through them."""

ALLOCATED_CONDITION = "Allocated"
BOUND_CONDITION = "Bound"
READY_CONDITION = "Ready"
"""True while the endpoint is allocated on a live relay and the peers may use it (phase
Allocated or Bound): what ``kubectl wait --for=condition=Ready``, kstatus, Flux and Argo CD
read. Every writer of ``status.phase`` sets it in the same patch, derived from the phase,
so the operator and the relays' reporters agree on it."""

# Ready's reasons. True: the phase. False: why the endpoint is not usable.
NO_RELAY_AVAILABLE = "NoRelayAvailable"
"""No live relay with a free VNI, or the pinned ``spec.relay`` is not registered, alive or free."""
PAIR_IN_USE = "PairInUse"
"""Another RelayEndpoint already holds this pair of disco keys."""
RELAY_DEAD = "RelayDead"
"""The relay serving the endpoint stopped heart-beating (or was never registered)."""
RELAY_REKEYED = "RelayRekeyed"
"""The relay serving the endpoint runs again, under another disco key."""
