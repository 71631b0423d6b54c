"""The relay's configuration: one typed object, filled from flags and environment.

Every flag ``--some-flag`` can also be set by ``RELAYFLEET_SOME_FLAG``; a flag
given on the command line wins. Nothing else in the package reads the
environment: :func:`add_relay_arguments` takes it as an argument.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from relay.addresses import parse_host_port, parse_ip
from relay.durations import format_duration, parse_duration
from relay.fastpath import DEFAULT_MAX_ENDPOINTS as DEFAULT_FAST_PATH_MAX
from relay.fastpath import FAST_PATH_MODES
from relay.geneve import MAX_VNI
from relay.lifetimes import DEFAULT_BIND_LIFETIME, DEFAULT_STEADY_STATE_LIFETIME
from relay.ratelimit import (
    DEFAULT_BURST_PER_SOURCE,
    DEFAULT_HANDSHAKE_LIMITS,
    DEFAULT_RATE_PER_SOURCE,
    DEFAULT_TOTAL_RATE,
    HandshakeLimits,
)
from relay.store import DEFAULT_PREFIX, check_store_url

ENV_PREFIX = "RELAYFLEET_"
DEFAULT_PORT = 7000
DEFAULT_API_LISTEN = "127.0.0.1:8080"
DEFAULT_LISTEN = "::"
DEFAULT_HEARTBEAT_INTERVAL = 5.0
DEFAULT_RESYNC_INTERVAL = 60.0
DEFAULT_REPORT_INTERVAL = 2.0
DEFAULT_SHUTDOWN_TIMEOUT = 10.0


@dataclass(frozen=True)
class RelayConfig:
    """Everything ``relayfleet relay`` needs to run."""

    listen: str = DEFAULT_LISTEN
    port: int = DEFAULT_PORT
    api_listen: tuple[str, int] = parse_host_port(DEFAULT_API_LISTEN)
    addrs: tuple[str, ...] = ()
    bind_lifetime: float = DEFAULT_BIND_LIFETIME
    steady_state_lifetime: float = DEFAULT_STEADY_STATE_LIFETIME
    store: str = "memory"
    max_endpoints: int = MAX_VNI
    handshake_limits: HandshakeLimits = DEFAULT_HANDSHAKE_LIMITS
    key_file: str | None = None
    name: str = "relay"
    log_level: str = "info"
    log_format: str = "text"
    store_prefix: str = DEFAULT_PREFIX
    heartbeat_interval: float = DEFAULT_HEARTBEAT_INTERVAL
    resync_interval: float = DEFAULT_RESYNC_INTERVAL
    report_status: str = "off"
    kubeconfig: str | None = None
    report_interval: float = DEFAULT_REPORT_INTERVAL
    api_token_file: str | None = None
    shutdown_timeout: float = DEFAULT_SHUTDOWN_TIMEOUT
    fast_path: str = "off"
    fast_path_max_endpoints: int = DEFAULT_FAST_PATH_MAX

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> RelayConfig:
        return cls(
            listen=args.listen,
            port=args.port,
            api_listen=args.api_listen,
            addrs=tuple(args.addr),
            bind_lifetime=args.bind_lifetime,
            steady_state_lifetime=args.steady_state_lifetime,
            store=args.store,
            max_endpoints=args.max_endpoints,
            handshake_limits=HandshakeLimits(
                rate_per_source=args.handshake_rate,
                burst_per_source=args.handshake_burst,
                total_rate=args.handshake_total_rate,
            ),
            key_file=args.key_file,
            name=args.name,
            log_level=args.log_level,
            log_format=args.log_format,
            store_prefix=args.store_prefix,
            heartbeat_interval=args.heartbeat_interval,
            resync_interval=args.resync_interval,
            report_status=args.report_status,
            kubeconfig=args.kubeconfig,
            report_interval=args.report_interval,
            api_token_file=args.api_token_file,
            shutdown_timeout=args.shutdown_timeout,
            fast_path=args.fast_path,
            fast_path_max_endpoints=args.fast_path_max_endpoints,
        )


def env_name(flag: str) -> str:
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return int(text)


def host_port(text: str) -> tuple[str, int]:
    try:
        return parse_host_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _ip(text: str) -> str:
    try:
        return parse_ip(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration(text: str) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a positive duration")
    return seconds


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value >= 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number, at least 1")
    return value


def _max_endpoints(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= MAX_VNI:
        raise argparse.ArgumentTypeError(f"{text!r}: must be a number from 1 to {MAX_VNI}")
    return int(text)


def store_url(text: str) -> str:
    try:
        check_store_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def _name(text: str) -> str:
    if not text or any(c in text for c in "{}") or any(c.isspace() for c in text):
        raise argparse.ArgumentTypeError(
            f"{text!r}: a relay name is non-empty, without braces or spaces"
        )
    return text


class EnvArguments:
    """Adds arguments whose default comes from the environment, converted like the flag."""

    def __init__(self, parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
        self._parser = parser
        self._environ = environ

    def add(
        self,
        flag: str,
        *,
        default: object,
        type: Callable[[str], object] = str,
        help: str,
        shown: str | None = None,
        **kwargs: object,
    ) -> None:
        """Add ``flag``; ``shown`` is the default as the help prints it."""
        name = env_name(flag)
        raw = self._environ.get(name, "")
        if raw:
            try:
                if kwargs.get("action") == "append":
                    default = [type(part.strip()) for part in raw.split(",") if part.strip()]
                else:
                    default = type(raw)
            except (argparse.ArgumentTypeError, ValueError) as exc:
                self._parser.error(f"{name}: {exc}")
        text = f"{help} [env {name}" + (f"; default {shown}]" if shown else "]")
        self._parser.add_argument(flag, default=default, type=type, help=text, **kwargs)

    def add_logging(self) -> None:
        """``--log-level`` and ``--log-format``, the same for every command."""
        self.add(
            "--log-level",
            default="info",
            choices=["debug", "info", "warning", "error"],
            help="how much to log (to stderr)",
            shown="info",
        )
        self.add(
            "--log-format",
            default="text",
            choices=["text", "json"],
            help="log lines as plain text or as JSON objects",
            shown="text",
        )

    def add_duration(self, flag: str, default: float, help: str) -> None:
        """Add a Go-style duration flag (``30s``, ``5m``), in seconds."""
        self.add(
            flag,
            default=default,
            type=duration,
            metavar="DUR",
            help=help,
            shown=format_duration(default),
        )


def add_relay_arguments(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """The flags of ``relayfleet relay``, with defaults from ``environ``."""
    env = EnvArguments(parser, environ)
    env.add(
        "--port",
        default=DEFAULT_PORT,
        type=_port,
        metavar="N",
        help="UDP port for relayed traffic; 0 picks any free port",
        shown=str(DEFAULT_PORT),
    )
    env.add(
        "--listen",
        default=DEFAULT_LISTEN,
        type=_ip,
        metavar="IP",
        help="UDP address to bind; '::' takes IPv6 and IPv4 on one socket",
        shown=DEFAULT_LISTEN,
    )
    env.add(
        "--api-listen",
        default=parse_host_port(DEFAULT_API_LISTEN),
        type=host_port,
        metavar="HOST:PORT",
        help="where the HTTP allocation API listens (keep it private)",
        shown=DEFAULT_API_LISTEN,
    )
    env.add(
        "--api-token-file",
        default=None,
        metavar="PATH",
        help="file holding a bearer token the allocation endpoints then require "
        "('Authorization: Bearer TOKEN'); /healthz and /metrics stay open",
    )
    env.add(
        "--addr",
        default=[],
        type=_ip,
        action="append",
        metavar="IP",
        help="an address clients reach this relay at, advertised in AddrPorts with the UDP "
        "port; repeat for several (env: comma-separated). Without any, loopback is advertised",
    )
    env.add_duration(
        "--bind-lifetime",
        DEFAULT_BIND_LIFETIME,
        "how long an allocation waits for both clients to bind (Go duration: 30s, 1m)",
    )
    env.add_duration(
        "--steady-state-lifetime",
        DEFAULT_STEADY_STATE_LIFETIME,
        "how long a bound endpoint lives after either client falls silent",
    )
    env.add(
        "--store",
        default="memory",
        type=store_url,
        metavar="STORE",
        help="where allocations are kept: 'memory' (this process only) or a Redis URL "
        "shared by the fleet and kept across restarts: redis://[:PASSWORD@]HOST[:PORT][/DB], "
        "rediss:// for TLS, unix://PATH, redis+cluster://HOST:PORT[,HOST:PORT...], "
        "redis+sentinel://HOST:PORT[,...]/SERVICE[/DB]",
        shown="memory",
    )
    env.add(
        "--store-prefix",
        default=DEFAULT_PREFIX,
        metavar="PREFIX",
        help="prefix of every Redis key, so several fleets can share one Redis",
        shown=DEFAULT_PREFIX,
    )
    env.add_duration(
        "--heartbeat-interval",
        DEFAULT_HEARTBEAT_INTERVAL,
        "how often the relay renews its registration; it counts as dead after 3 missed",
    )
    env.add_duration(
        "--resync-interval",
        DEFAULT_RESYNC_INTERVAL,
        "how often the relay re-reads all its allocations from the store, besides "
        "following announcements",
    )
    env.add(
        "--report-status",
        default="auto",
        choices=["auto", "on", "off"],
        help="write each endpoint's live state into its RelayEndpoint's status; 'auto' "
        "does when running in a pod or given --kubeconfig",
        shown="auto",
    )
    env.add(
        "--kubeconfig",
        default=None,
        metavar="PATH",
        help="kubeconfig for status reports (in a pod, the service account is used)",
    )
    env.add_duration(
        "--report-interval",
        DEFAULT_REPORT_INTERVAL,
        "at most one status patch per endpoint per interval, and only on change",
    )
    env.add_duration(
        "--shutdown-timeout",
        DEFAULT_SHUTDOWN_TIMEOUT,
        "on SIGTERM, how long the relay may take to write pending state to the store and "
        "a last status report before it exits (keep it below the pod's grace period)",
    )
    env.add(
        "--max-endpoints",
        default=MAX_VNI,
        type=_max_endpoints,
        metavar="N",
        help="at most this many endpoints at once (VNIs 1..N)",
        shown=str(MAX_VNI),
    )
    env.add(
        "--handshake-rate",
        default=DEFAULT_RATE_PER_SOURCE,
        type=_rate,
        metavar="N",
        help="bind handshake messages per second taken from one source address; more are "
        "dropped before any crypto (counted as rate_limited)",
        shown=f"{DEFAULT_RATE_PER_SOURCE:g}",
    )
    env.add(
        "--handshake-burst",
        default=DEFAULT_BURST_PER_SOURCE,
        type=_rate,
        metavar="N",
        help="handshake messages one source may send at once above its rate",
        shown=f"{DEFAULT_BURST_PER_SOURCE:g}",
    )
    env.add(
        "--handshake-total-rate",
        default=DEFAULT_TOTAL_RATE,
        type=_rate,
        metavar="N",
        help="handshake messages per second taken from all sources together (bounds the "
        "CPU a flood from many sources can take from relaying)",
        shown=f"{DEFAULT_TOTAL_RATE:g}",
    )
    env.add(
        "--fast-path",
        default="off",
        choices=list(FAST_PATH_MODES),
        help="'auto': once both clients are bound, relay an endpoint's data in the kernel "
        "(nftables; needs the nft and ip commands and CAP_NET_ADMIN), and fall back to user "
        "space where that fails; 'off': relay everything in user space",
        shown="off",
    )
    env.add(
        "--fast-path-max-endpoints",
        default=DEFAULT_FAST_PATH_MAX,
        type=_max_endpoints,
        metavar="N",
        help="at most this many endpoints relayed by the kernel at once; more are relayed "
        "in user space until room frees",
        shown=str(DEFAULT_FAST_PATH_MAX),
    )
    env.add(
        "--key-file",
        default=None,
        metavar="PATH",
        help="file holding the relay's disco private key and challenge secret, created "
        "(mode 0600) when missing; without it the relay makes a new key every start",
    )
    env.add(
        "--name",
        default="relay",
        type=_name,
        metavar="NAME",
        help="this relay's name in the fleet: its allocations and registration go by it",
        shown="relay",
    )
    env.add_logging()
