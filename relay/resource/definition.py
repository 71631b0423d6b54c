"""The fleet's resources' names: API group, version, plurals, labels, annotations, phases.

The CustomResourceDefinitions (crds/relayendpoint.yaml, crds/relay.yaml) declare the
resources; this module names what the relays and the operator read and write in them, once.
"""

GROUP = "relayfleet.io"
VERSION = "v1alpha1"
PLURAL = "relayendpoints"
KIND = "RelayEndpoint"

RELAY_LABEL = "relayfleet.io/relay"
"""The relay an endpoint is placed on. A tenant may edit labels but not status,
so readers check it against ``status.relay``."""

ORIGIN_LABEL = "relayfleet.io/origin"
"""Where an endpoint's allocation came from, on the resources a relay made itself: absent on
those people apply, whose allocation the operator owns."""
TAILNET_ORIGIN = "tailnet"
"""The origin label's value on a RelayEndpoint a relay made for an allocation that a peer of
its tailnet asked for over DERP: the relay owns it (writes its status, deletes it on expiry);
the operator only frees its allocation when it is deleted."""

REALLOCATE_ANNOTATION = "relayfleet.io/reallocate"
"""Set to a new value to allocate an Expired endpoint afresh."""

RELAY_DEAD_ANNOTATION = "relayfleet.io/relay-dead"
"""Put by the operator's relay check on endpoints of a relay that stopped heart-beating, or
that came back under another disco key than their ``serverDisco``."""

TAKE_UP_ANNOTATION = "relayfleet.io/take-up"
"""Put by the operator's take-up loop (relay_operator/take_up.py) on an endpoint left without a
phase after its handler ran (its writes lost); removed once the endpoint is allocated."""

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

# The Relay resource (crds/relay.yaml): one cluster-scoped object per registered relay, kept
# by the operator from the registry, so that the fleet can be read with a kubeconfig alone.
RELAY_PLURAL = "relays"
RELAY_KIND = "Relay"
STATE_ALIVE = "Alive"
STATE_DEAD = "Dead"
RELAY_STATES = (STATE_ALIVE, STATE_DEAD)
"""Every ``status.state`` of a Relay."""
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
OPERATOR_NAME = "relayfleet-operator"
"""The managed-by label's value on the Relay objects the operator keeps (and may delete)."""

# A Relay's Ready reasons, and the Events the operator posts on it.
HEARTBEAT_CURRENT = "HeartbeatCurrent"
HEARTBEAT_STOPPED = "HeartbeatStopped"
REGISTERED = "Registered"
CAME_BACK = "CameBack"
STOPPED = "Stopped"
REKEYED = "Rekeyed"
