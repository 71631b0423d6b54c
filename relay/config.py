"""The relay's configuration: one typed object, every setting declared once with its flag.

``relayfleet relay --help`` is made from the fields below (see :mod:`relay.flags`);
each flag can also be set by its ``RELAYFLEET_…`` environment variable.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from relay.fastpath import DEFAULT_MAX_ENDPOINTS as DEFAULT_FAST_PATH_MAX
from relay.fastpath import FAST_PATH_MODES
from relay.flags import (
    count_up_to,
    duration,
    flag,
    host_port,
    ip,
    log_format_flag,
    log_level_flag,
    port,
    rate,
    store_flag,
    store_prefix_flag,
)
from relay.protocol.allocation import DEFAULT_BIND_LIFETIME, DEFAULT_STEADY_STATE_LIFETIME
from relay.protocol.core import DEFAULT_CHALLENGE_ROTATION
from relay.protocol.geneve import MAX_VNI
from relay.protocol.ratelimit import (
    DEFAULT_BURST_PER_SOURCE,
    DEFAULT_RATE_PER_SOURCE,
    DEFAULT_TOTAL_RATE,
    HandshakeLimits,
)
from relay.reporter import DEFAULT_REQUEST_TIMEOUT
from relay.shells.api_limits import DEFAULT_BURST, DEFAULT_MAX_PER_PAIR, DEFAULT_RATE
from relay.shells.transport import GRO_MODES

MAX_WORKERS = 64
SERVICE_ACCOUNT_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
RELAY_NAME_RULE = "a relay name is non-empty, without braces or spaces"


def existing_kubeconfigs(paths: str) -> str | None:
    """The files of a ``KUBECONFIG`` value that exist, still a list as kubectl reads it
    (joined by ``:``, merged in order); None when none does."""
    found = [path for path in paths.split(os.pathsep) if path and Path(path).is_file()]
    return os.pathsep.join(found) or None


def api_listen_address(text: str) -> tuple[str, int] | None:
    """``HOST:PORT``, or ``off`` (None): no API listener at all."""
    if text.strip().lower() == "off":
        return None
    return host_port(text)


def relay_name(text: str) -> str:
    if not text or any(c in text for c in "{}") or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(f"{text!r}: {RELAY_NAME_RULE}")
    return text


def tailnet_login_server(text: str) -> str:
    """A control server's URL: ``http://`` or ``https://`` and a host."""
    scheme, sep, rest = text.partition("://")
    if not sep or not rest or scheme not in ("http", "https"):
        raise argparse.ArgumentTypeError(f"{text!r}: expected http(s)://HOST[:PORT]")
    return text.rstrip("/")


def pod_reference(text: str) -> str:
    namespace, slash, name = text.partition("/")
    if not (slash and namespace and name) or "/" in name:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAMESPACE/NAME")
    return text


def usable_cpus() -> int:
    """The CPUs this process may run on, within its cgroup's CPU quota (cgroup v2 ``cpu.max``)."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
    except (OSError, ValueError):
        return cpus
    if quota == "max":
        return cpus
    return max(1, min(cpus, int(quota) // int(period)))


def workers_count(text: str) -> int | None:
    """``N`` (1 to :data:`MAX_WORKERS`), or ``auto`` (None: :meth:`RelayConfig.worker_count`
    decides)."""
    if text.strip().lower() == "auto":
        return None
    return count_up_to(MAX_WORKERS)(text)


@dataclass(frozen=True)
class RelayConfig:
    """Everything ``relayfleet relay`` needs to run."""

    port: int = flag(
        "--port", 7000, parse=port, metavar="N",
        help="UDP port for relayed traffic; 0 picks any free port",
    )  # fmt: skip
    listen: str = flag(
        "--listen", "::", parse=ip, metavar="IP",
        help="UDP address to bind; '::' takes IPv6 and IPv4 on one socket",
    )  # fmt: skip
    api_listen: tuple[str, int] | None = flag(
        "--api-listen", ("127.0.0.1", 8080), parse=api_listen_address, metavar="HOST:PORT|off",
        help="where the HTTP allocation API listens (keep it private), or 'off' for no API; "
        "without --metrics-listen it serves /metrics and /healthz too",
        shown="127.0.0.1:8080",
    )  # fmt: skip
    metrics_listen: tuple[str, int] | None = flag(
        "--metrics-listen", parse=host_port, metavar="HOST:PORT",
        help="a second HTTP listener serving only /metrics and /healthz (for probes, "
        "Prometheus and a metrics Service; everything else answers 404); the API listener "
        "then serves only the allocation API",
    )  # fmt: skip
    api_token_file: str | None = flag(
        "--api-token-file", metavar="PATH",
        help="file holding a bearer token the allocation endpoints then require "
        "('Authorization: Bearer TOKEN'); /healthz and /metrics stay open",
    )  # fmt: skip
    api_allocations: str = flag(
        "--api-allocations", "auto", choices=("auto", "on", "off"),
        help="whether POST /v0/relay/endpoint allocates (else it answers 403); 'auto' does "
        "unless the relay reports to Kubernetes (--report-status), i.e. serves a fleet whose "
        "operator owns the store's allocations",
    )  # fmt: skip
    api_rate: float = flag(
        "--api-rate", DEFAULT_RATE, parse=rate, metavar="N",
        help="allocation requests per second taken from one client address; more answer 429 "
        "with Retry-After", shown=f"{DEFAULT_RATE:g}",
    )  # fmt: skip
    api_burst: float = flag(
        "--api-burst", DEFAULT_BURST, parse=rate, metavar="N",
        help="allocation requests one client address may make at once above its rate",
        shown=f"{DEFAULT_BURST:g}",
    )  # fmt: skip
    api_max_per_pair: int = flag(
        "--api-max-per-pair", DEFAULT_MAX_PER_PAIR, parse=count_up_to(MAX_VNI), metavar="N",
        help="fresh allocations one pair of keys may get through the API at once, refilled "
        "at N per --steady-state-lifetime (a pair holds one allocation: asking again once "
        "bound replaces it); more answer 429 with Retry-After",
    )  # fmt: skip
    addrs: tuple[str, ...] = flag(
        "--addr", (), parse=ip, metavar="IP", repeated=True,
        help="an address clients reach this relay at, advertised in AddrPorts with the UDP "
        "port; repeat for several (env: comma-separated). Without any, loopback is advertised",
    )  # fmt: skip
    bind_lifetime: float = flag(
        "--bind-lifetime", DEFAULT_BIND_LIFETIME, parse=duration, metavar="DUR",
        help="how long an allocation waits for both clients to bind (Go duration: 30s, 1m)",
    )  # fmt: skip
    steady_state_lifetime: float = flag(
        "--steady-state-lifetime", DEFAULT_STEADY_STATE_LIFETIME, parse=duration, metavar="DUR",
        help="how long a bound endpoint lives after either client falls silent",
    )  # fmt: skip
    store: str = store_flag(
        "memory",
        help="where allocations are kept: 'memory' (this process only) or a Redis URL "
        "shared by the fleet and kept across restarts: redis://[:PASSWORD@]HOST[:PORT][/DB], "
        "rediss:// for TLS, unix://PATH, redis+cluster://HOST:PORT[,HOST:PORT...], "
        "redis+sentinel://HOST:PORT[,...]/SERVICE[/DB]",
    )
    store_prefix: str = store_prefix_flag()
    heartbeat_interval: float = flag(
        "--heartbeat-interval", 5.0, parse=duration, metavar="DUR",
        help="how often the relay renews its registration; it counts as dead after 3 missed",
    )  # fmt: skip
    resync_interval: float = flag(
        "--resync-interval", 60.0, parse=duration, metavar="DUR",
        help="how often the relay re-reads all its allocations from the store, besides "
        "following announcements; a relay whose resync takes longer than 1%% of this "
        "(a million endpoints: seconds) waits 100 times the resync's duration instead",
    )  # fmt: skip
    report_status: str = flag(
        "--report-status", "auto", choices=("auto", "on", "off"),
        help="write each endpoint's live state into its RelayEndpoint's status; 'auto' "
        "does with a shared --store (not memory) and Kubernetes credentials: in a pod, "
        "or a kubeconfig (--kubeconfig, or KUBECONFIG naming a file that exists; "
        "~/.kube/config only with 'on')",
    )  # fmt: skip
    kubeconfig: str | None = flag(
        "--kubeconfig", metavar="PATH",
        help="kubeconfig for status reports; KUBECONFIG's files that exist when not given "
        "(in a pod without either, the service account is used)",
        fallback_env="KUBECONFIG", fallback_parse=existing_kubeconfigs,
    )  # fmt: skip
    report_interval: float = flag(
        "--report-interval", 2.0, parse=duration, metavar="DUR",
        help="at most one status patch per endpoint per interval, and only on change",
    )  # fmt: skip
    report_timeout: float = flag(
        "--report-timeout", DEFAULT_REQUEST_TIMEOUT, parse=duration, metavar="DUR",
        help="time one Kubernetes call of the status reporter may take; a call in flight "
        "at SIGTERM may hold up the exit this long past --shutdown-timeout",
    )  # fmt: skip
    shutdown_timeout: float = flag(
        "--shutdown-timeout", 10.0, parse=duration, metavar="DUR",
        help="on SIGTERM, how long the relay may take to write pending state to the store and "
        "a last status report before it exits (keep it below the pod's grace period)",
    )  # fmt: skip
    max_endpoints: int = flag(
        "--max-endpoints", MAX_VNI, parse=count_up_to(MAX_VNI), metavar="N",
        help="at most this many endpoints at once (VNIs 1..N)",
    )  # fmt: skip
    handshake_rate: float = flag(
        "--handshake-rate", DEFAULT_RATE_PER_SOURCE, parse=rate, metavar="N",
        help="bind handshake messages per second taken from one source address; more are "
        "dropped before any crypto (counted as rate_limited)", shown=f"{DEFAULT_RATE_PER_SOURCE:g}",
    )  # fmt: skip
    handshake_burst: float = flag(
        "--handshake-burst", DEFAULT_BURST_PER_SOURCE, parse=rate, metavar="N",
        help="handshake messages one source may send at once above its rate",
        shown=f"{DEFAULT_BURST_PER_SOURCE:g}",
    )  # fmt: skip
    handshake_total_rate: float = flag(
        "--handshake-total-rate", DEFAULT_TOTAL_RATE, parse=rate, metavar="N",
        help="handshake messages per second taken from all sources together (bounds the "
        "CPU a flood from many sources can take from relaying)", shown=f"{DEFAULT_TOTAL_RATE:g}",
    )  # fmt: skip
    challenge_rotation: float = flag(
        "--challenge-rotation", DEFAULT_CHALLENGE_ROTATION, parse=duration, metavar="DUR",
        help="how often the key of protocol version 1's challenges changes (derived from the "
        "key file's challenge secret); a challenge is answerable for one to two periods",
    )  # fmt: skip
    fast_path: str = flag(
        "--fast-path", "off", choices=FAST_PATH_MODES,
        help="'auto': once both clients are bound, relay an endpoint's data in the kernel "
        "(nftables; needs the nft and ip commands and CAP_NET_ADMIN), and fall back to user "
        "space where that fails; 'off': relay everything in user space",
    )  # fmt: skip
    fast_path_max_endpoints: int = flag(
        "--fast-path-max-endpoints", DEFAULT_FAST_PATH_MAX, parse=count_up_to(MAX_VNI),
        metavar="N",
        help="at most this many endpoints relayed by the kernel at once; more are relayed "
        "in user space until room frees",
    )  # fmt: skip
    udp_gso: str = flag(
        "--udp-gso", "on", choices=("on", "off"),
        help="send a batch's relayed datagrams for one destination as one UDP GSO send "
        "(UDP_SEGMENT); 'on' falls back to single datagrams where the kernel refuses it",
    )  # fmt: skip
    udp_gro: str = flag(
        "--udp-gro", "auto", choices=GRO_MODES,
        help="receive with UDP GRO (UDP_GRO), relaying a coalesced train in one send after "
        "checking each datagram; 'auto': from the first busy read whose datagrams come back "
        "to back from one source (GRO costs the kernel more per single datagram); 'on': from "
        "the start; both fall back to single datagrams where the kernel refuses it",
    )  # fmt: skip
    workers: int | None = flag(
        "--workers", None, parse=workers_count, metavar="N|auto", shown="auto",
        help="worker processes sharing the UDP port (SO_REUSEPORT, each endpoint's VNI "
        "steering its datagrams to one worker); 'auto': the CPUs this process may use, "
        "cgroup quota included, and one with the memory store; more than one needs a Redis "
        "store (each worker keeps its own kernel fast path table, with "
        "--fast-path-max-endpoints shared out)",
    )  # fmt: skip
    key_file: str | None = flag(
        "--key-file", metavar="PATH",
        help="file holding the relay's disco private key and challenge secret, created "
        "(mode 0600) when missing; without it the relay makes a new key every start",
    )  # fmt: skip
    tailnet_login_server: str | None = flag(
        "--tailnet-login-server", parse=tailnet_login_server, metavar="URL",
        help="join the tailnet of this control server (Headscale) as a peer relay: its "
        "clients granted tailscale.com/cap/relay toward this node then ask it for endpoints "
        "over DERP, and it allocates them as it does for its API; DERP speaks the URL's "
        "scheme (plain HTTP for an http:// test bed, TLS for https://)",
    )  # fmt: skip
    tailnet_ca_file: str | None = flag(
        "--tailnet-ca-file", metavar="PATH",
        help="a CA certificate (PEM) to trust beside the system's, for a control server and "
        "DERP servers with certificates of a private CA",
    )  # fmt: skip
    tailnet_auth_key_file: str | None = flag(
        "--tailnet-auth-key-file", metavar="PATH",
        help="file holding a pre-auth key of that tailnet (tagged as its policy grants "
        "relays); needed the first time, when the control server does not know the node yet",
    )  # fmt: skip
    tailnet_key_file: str | None = flag(
        "--tailnet-key-file", metavar="PATH",
        help="file holding the node's machine, node and disco private keys, created (mode "
        "0600) when missing; without it the relay joins as a new node every start",
    )  # fmt: skip
    tailnet_namespace: str | None = flag(
        "--tailnet-namespace", metavar="NAME",
        help="namespace of the RelayEndpoints this relay makes for the allocations its tailnet "
        "peers ask for, when it reports to Kubernetes (default: the namespace of --pod, else "
        "default)",
    )  # fmt: skip
    tailnet_hostname: str | None = flag(
        "--tailnet-hostname", metavar="NAME",
        help="the node's hostname in the tailnet (default: --name)",
    )  # fmt: skip
    name: str = flag(
        "--name", "relay", parse=relay_name, metavar="NAME",
        help="this relay's name in the fleet: its allocations and registration go by it",
    )  # fmt: skip
    pod: str | None = flag(
        "--pod", parse=pod_reference, metavar="NAMESPACE/NAME",
        help="the pod this relay runs in (the chart sets it): registered, so that "
        "'relayfleet status --watch' reads its /metrics through the API server's pod proxy",
    )  # fmt: skip
    log_level: str = log_level_flag()
    log_format: str = log_format_flag()

    @property
    def handshake_limits(self) -> HandshakeLimits:
        return HandshakeLimits(
            rate_per_source=self.handshake_rate,
            burst_per_source=self.handshake_burst,
            total_rate=self.handshake_total_rate,
        )

    def allocates_through_api(self) -> bool:
        """``--api-allocations``: on, off, or auto, which is on unless :meth:`reports_status`.

        A relay that reports to Kubernetes serves a fleet, whose operator owns
        the store's allocations: each belongs to a RelayEndpoint, placed,
        counted against RBAC and quotas, and freed when it is deleted. One made
        through the API would belong to no RelayEndpoint: the operator could
        not see it, yet it would take the relay's capacity until its lifetime
        ran out. So auto refuses them there (403), and allocates everywhere
        else: a standalone relay, or relays sharing a Redis without Kubernetes.
        """
        if self.api_allocations == "auto":
            return not self.reports_status()
        return self.api_allocations == "on"

    def worker_count(self) -> int:
        """``--workers``, or for ``auto``: :func:`usable_cpus` (at most :data:`MAX_WORKERS`),
        and 1 with the memory store, which the workers could not share."""
        if self.workers is not None:
            return self.workers
        if self.store == "memory":
            return 1
        return min(usable_cpus(), MAX_WORKERS)

    def tailnet_endpoints_namespace(self) -> str:
        """Where the RelayEndpoints of tailnet allocations go: ``--tailnet-namespace``, else
        the namespace of ``--pod``, else ``default``."""
        if self.tailnet_namespace:
            return self.tailnet_namespace
        if self.pod:
            return self.pod.partition("/")[0]
        return "default"

    def workers_refusal(self) -> str | None:
        """Why ``--workers`` cannot run with the other settings, or None."""
        if self.worker_count() == 1:
            return None
        if self.store == "memory":
            return (
                "--workers above 1 needs a Redis store (--store): the workers share the "
                "relay's allocations through it"
            )
        return None

    def reports_status(self) -> bool:
        """``--report-status``: on, off, or auto.

        Auto reports for a relay of a fleet: one that shares its store with the
        operator (only then are RelayEndpoints placed on it) and has
        credentials, a pod's service account or a kubeconfig (``--kubeconfig``,
        or ``KUBECONFIG`` naming files that exist, put into ``kubeconfig`` by
        the flag's fallback). ``~/.kube/config`` does not count: it is whatever
        cluster the user last worked on, not a choice made for this relay.
        """
        if self.report_status == "auto":
            credentials = self.kubeconfig is not None or SERVICE_ACCOUNT_TOKEN.exists()
            return self.store != "memory" and credentials
        return self.report_status == "on"
