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
