"""The operator's configuration: one typed object, every setting declared once with its flag.

As for the relay (:mod:`relay.flags`), every ``--flag`` can be set by
``RELAYFLEET_FLAG`` and the command line wins.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from relay.flags import (
    duration,
    flag,
    host_port,
    integer,
    log_format_flag,
    log_level_flag,
    store_flag,
    store_prefix_flag,
)


def random_priority() -> int:
    return random.randint(1, 2**31)


@dataclass(frozen=True)
class OperatorConfig:
    """Everything ``relayfleet operator`` needs to run."""

    store: str = store_flag(None, help="the fleet's Redis (redis://[:PASSWORD@]HOST[:PORT][/DB], "
                            "rediss:// for TLS); required")  # fmt: skip
    store_prefix: str = store_prefix_flag()
    namespaces: tuple[str, ...] = flag(
        "--namespace", (), metavar="NS", repeated=True,
        help="serve RelayEndpoints in this namespace (repeatable; env: comma-separated); "
        "without any, every namespace",
    )  # fmt: skip
    peering: str = flag(
        "--peering", "relayfleet", metavar="NAME",
        help="kopf peering object shared by the replicas; only one of them acts at a time",
    )  # fmt: skip
    standalone: bool = flag(
        "--standalone", False, switch=True, help="run without peering (a single replica)"
    )
    priority: int = flag(
        "--priority", parse=integer, metavar="N", default_factory=random_priority,
        help="this replica's peering priority: the live replica with the highest acts, the "
        "others wait (default: random, so that replicas never tie)",
    )  # fmt: skip
    peering_lifetime: float = flag(
        "--peering-lifetime", 15.0, parse=duration, metavar="DUR",
        help="how long a silent replica counts as alive; a standby takes over after it",
    )  # fmt: skip
    relay_check_interval: float = flag(
        "--relay-check-interval", 5.0, parse=duration, metavar="DUR",
        help="how often the relays' heartbeats are checked, once for the whole fleet; the "
        "endpoints of a relay found dead, or back under another disco key, are placed again",
    )  # fmt: skip
    relay_object_refresh: float = flag(
        "--relay-object-refresh", 60.0, parse=duration, metavar="DUR",
        help="how often a live relay's Relay object is rewritten when only its endpoints in "
        "use or heartbeat time changed; a change of liveness, key, address or version is "
        "written at the next relay check",
    )  # fmt: skip
    take_up_after: float = flag(
        "--take-up-after", 30.0, parse=duration, metavar="DUR",
        help="a RelayEndpoint still without a phase this long after its handler ran, or this "
        "long after the operator first saw it with its finalizer and never ran its handler "
        "(its writes, or kopf's, lost while the API server was away), is allocated again; "
        "the clock starts again whenever the operator's requests wait for a connection to "
        "the API server (a burst's writes queue there: late, not lost)",
    )  # fmt: skip
    liveness: str | None = flag(
        "--liveness", metavar="URL",
        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )  # fmt: skip
    metrics_listen: tuple[str, int] | None = flag(
        "--metrics-listen", parse=host_port, metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 0.0.0.0:9090)",
    )  # fmt: skip
    log_level: str = log_level_flag()
    log_format: str = log_format_flag()
