"""The operator's configuration: one typed object, filled from flags and environment.

As for the relay, every ``--flag`` can be set by ``RELAYFLEET_FLAG`` and the
command line wins.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Mapping
from dataclasses import dataclass

from relay.config import EnvArguments, host_port, store_url
from relay.store import DEFAULT_PREFIX

DEFAULT_RELAY_CHECK_INTERVAL = 5.0
DEFAULT_PEERING_LIFETIME = 15.0


@dataclass(frozen=True)
class OperatorConfig:
    store: str
    store_prefix: str = DEFAULT_PREFIX
    namespaces: tuple[str, ...] = ()
    peering: str = "relayfleet"
    standalone: bool = False
    priority: int = 0
    peering_lifetime: float = DEFAULT_PEERING_LIFETIME
    relay_check_interval: float = DEFAULT_RELAY_CHECK_INTERVAL
    liveness: str | None = None
    metrics_listen: tuple[str, int] | None = None
    log_format: str = "text"
    log_level: str = "info"

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> OperatorConfig:
        return cls(
            store=args.store,
            store_prefix=args.store_prefix,
            namespaces=tuple(args.namespace),
            peering=args.peering,
            standalone=args.standalone,
            priority=args.priority,
            peering_lifetime=args.peering_lifetime,
            relay_check_interval=args.relay_check_interval,
            liveness=args.liveness,
            metrics_listen=args.metrics_listen,
            log_format=args.log_format,
            log_level=args.log_level,
        )


def add_operator_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    env = EnvArguments(parser, environ)
    env.add(
        "--store",
        default=None,
        type=store_url,
        metavar="URL",
        help="the fleet's Redis (redis://[:PASSWORD@]HOST[:PORT][/DB], rediss:// for TLS); "
        "required",
    )
    env.add(
        "--store-prefix",
        default=DEFAULT_PREFIX,
        metavar="PREFIX",
        help="prefix of every Redis key; the relays must use the same",
        shown=DEFAULT_PREFIX,
    )
    env.add(
        "--namespace",
        default=[],
        action="append",
        metavar="NS",
        help="serve RelayEndpoints in this namespace (repeatable; env: comma-separated); "
        "without any, every namespace",
    )
    env.add(
        "--peering",
        default="relayfleet",
        metavar="NAME",
        help="kopf peering object shared by the replicas; only one of them acts at a time",
        shown="relayfleet",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        default=environ.get("RELAYFLEET_STANDALONE", "") in ("1", "true", "yes"),
        help="run without peering (a single replica) [env RELAYFLEET_STANDALONE]",
    )
    env.add(
        "--priority",
        default=random.randint(1, 2**31),
        type=int,
        metavar="N",
        help="this replica's peering priority: the live replica with the highest acts, the "
        "others wait (default: random, so that replicas never tie)",
    )
    env.add_duration(
        "--peering-lifetime",
        DEFAULT_PEERING_LIFETIME,
        "how long a silent replica counts as alive; a standby takes over after it",
    )
    env.add_duration(
        "--relay-check-interval",
        DEFAULT_RELAY_CHECK_INTERVAL,
        "how often the relays' heartbeats are checked, once for the whole fleet; the "
        "endpoints of a relay found dead are placed on live ones",
    )
    env.add(
        "--liveness",
        default=None,
        metavar="URL",
        help="serve a liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    env.add(
        "--metrics-listen",
        default=None,
        type=host_port,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 0.0.0.0:9090)",
    )
    env.add_logging()
