"""``relayfleet``: the one command of relay-fleet, with a subcommand per part.

relayfleet relay     run a standalone relay with its HTTP allocation API
relayfleet demo      run a relay and two clients on loopback, print a summary
relayfleet operator  run the Kubernetes operator
relayfleet status    show the fleet at a glance (--watch: live)
relayfleet keygen    print a new disco key pair, or write a relay key file

It is the only module that imports both the relay and the operator: each
part below it stands on its own (the import contracts in pyproject.toml).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import ipaddress
import json
import logging
import os
import pickle
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import uvloop

from relay import __version__
from relay.config import RelayConfig
from relay.demo import DemoFailed, print_report, run_demo
from relay.flags import add_arguments, duration, from_args, store_flag, store_prefix_flag
from relay.protocol.keys import DiscoPrivateKey
from relay.server import RelayServer
from relay.shells.api_token import ApiTokenError, read_token_file
from relay.shells.keyfile import KeyFileError, RelaySecrets, load_or_create
from relay.shells.reuseport import probe_vni_steering
from relay.store import StoreError, open_store, redact_url
from relay.tailnet.control import NodeIdentity
from relay.tailnet.identity_file import load_or_create_identity
from relay.tailnet.node import TailnetLoginError, TailnetSettings
from relay.workers import WorkerRole, WorkerSpec, die_with_parent
from relay_operator.config import OperatorConfig

log = logging.getLogger("relayfleet")


@dataclass(frozen=True)
class StatusConfig:
    """Where ``relayfleet status`` reads the relays: the Relay objects, or the fleet's Redis."""

    store: str | None = store_flag(
        None,
        help="read the relays from the fleet's Redis registry (fresher) instead of the Relay "
        "objects the operator keeps; redis://[:PASSWORD@]HOST[:PORT][/DB]",
    )
    store_prefix: str = store_prefix_flag()


def log_object(record: logging.LogRecord) -> str | None:
    """The Kubernetes object a record is about ("namespace/name"), from the ``k8s_ref``
    that kopf's per-object loggers attach; None for any other record."""
    ref = getattr(record, "k8s_ref", None)
    if not isinstance(ref, dict) or not ref.get("name"):
        return None
    namespace = ref.get("namespace")
    return f"{namespace}/{ref['name']}" if namespace else str(ref["name"])


class TextFormatter(logging.Formatter):
    """One line per record; a record about a Kubernetes object names it first."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        about = log_object(record)
        message = record.message if about is None else f"[{about}] {record.message}"
        return f"{record.asctime} {record.levelname} {record.name}: {message}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record; a record about a Kubernetes object has ``object``."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        about = log_object(record)
        if about is not None:
            entry["object"] = about
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def _configure_logging(level: str, log_format: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler])


async def _serve_relay(
    config: RelayConfig,
    secrets: RelaySecrets,
    api_token: str | None,
    tailnet: TailnetSettings | None = None,
) -> None:
    store = open_store(config.store, max_vni=config.max_endpoints, prefix=config.store_prefix)
    log.info("store: %s", redact_url(config.store))
    server = RelayServer(config, store, secrets, api_token=api_token, tailnet=tailnet)
    try:
        await server.start()
    except BaseException:
        await store.close()
        raise
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    ready = {
        "ready": True,
        "udp_port": server.udp_port,
        "api": server.api_address,
        "server_disco": str(server.core.server_key),
    }
    if server.metrics_address is not None:
        ready["metrics"] = server.metrics_address
    print(json.dumps(ready), flush=True)
    try:
        await stop.wait()
    finally:
        log.info("shutting down")
        await server.close()
        await store.close()


def run_worker() -> None:
    """A worker process of ``relayfleet relay --workers N`` (relay/workers.py): its
    :class:`WorkerSpec` on standard input; SIGTERM writes its pending state and ends it."""
    spec: WorkerSpec = pickle.load(sys.stdin.buffer)
    die_with_parent(spec.parent)
    config = spec.config
    _configure_logging(config.log_level, config.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent's to handle, at a terminal

    async def serve() -> None:
        store = open_store(config.store, max_vni=config.max_endpoints, prefix=config.store_prefix)
        server = RelayServer(config, store, spec.secrets, worker=WorkerRole.from_spec(spec))
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        try:
            await server.start()
            await stop.wait()
        finally:
            await server.close()
            await store.close()

    uvloop.run(serve())


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _relay(args: argparse.Namespace) -> int:
    config = from_args(RelayConfig, args)
    _configure_logging(config.log_level, config.log_format)
    refusal = config.workers_refusal()
    if refusal is not None:
        print(f"relayfleet relay: {refusal}", file=sys.stderr)
        return 2
    config = dataclasses.replace(config, workers=config.worker_count())
    if config.workers > 1:
        try:
            probe_vni_steering()
        except OSError as exc:
            log.warning("cannot steer datagrams to workers by VNI (%s): running one worker", exc)
            config = dataclasses.replace(config, workers=1)
    api_token = read_token_file(config.api_token_file) if config.api_token_file else None
    if api_token is None and config.api_listen and not _is_loopback(config.api_listen[0]):
        log.warning(
            "the API listens on %s without --api-token-file: whoever reaches it can %s",
            config.api_listen[0],
            "allocate" if config.allocates_through_api() else "read every client's address",
        )
    if config.key_file:
        secrets, created = load_or_create(config.key_file)
        if created:
            log.info("created key file %s", config.key_file)
    else:
        log.warning("no --key-file: this relay's disco key lasts only as long as the process")
        secrets = RelaySecrets.generate()
    try:
        tailnet = _tailnet_settings(config)
    except KeyFileError as exc:
        print(f"relayfleet relay: {exc}", file=sys.stderr)
        return 2
    try:
        uvloop.run(_serve_relay(config, secrets, api_token, tailnet))
    except TailnetLoginError as exc:
        print(f"relayfleet relay: cannot join the tailnet: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"relayfleet relay: cannot listen: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def _tailnet_settings(config: RelayConfig) -> TailnetSettings | None:
    """The tailnet node's settings from the flags; reads the pre-auth key and the node's
    key file (made when missing)."""
    if config.tailnet_login_server is None:
        return None
    auth_key = None
    if config.tailnet_auth_key_file:
        path = config.tailnet_auth_key_file
        try:
            auth_key = Path(path).read_text().strip()
        except OSError as exc:
            raise KeyFileError(f"cannot read pre-auth key file {path}: {exc.strerror}") from None
        if not auth_key:
            raise KeyFileError(f"pre-auth key file {path} is empty")
    if config.tailnet_key_file:
        identity, created = load_or_create_identity(config.tailnet_key_file)
        if created:
            log.info("created tailnet key file %s", config.tailnet_key_file)
    else:
        log.warning("no --tailnet-key-file: this relay joins the tailnet as a new node")
        identity = NodeIdentity.generate()
    return TailnetSettings(
        config.tailnet_login_server,
        config.tailnet_hostname or config.name,
        auth_key,
        identity,
        config.tailnet_ca_file,
    )


def _demo(args: argparse.Namespace) -> int:
    _configure_logging("error")
    try:
        report = uvloop.run(
            run_demo(packets=args.packets, size=args.size, ipv6=args.ipv6, protocol=args.protocol)
        )
    except DemoFailed as exc:
        print(f"relayfleet demo: failed: {exc}", file=sys.stderr)
        return 1
    print_report(report, sys.stdout)
    return 0 if report.ok else 1


def _keygen(args: argparse.Namespace) -> int:
    if args.key_file:
        if os.path.exists(args.key_file):
            print(f"relayfleet keygen: {args.key_file} exists; not overwriting", file=sys.stderr)
            return 1
        secrets, _ = load_or_create(args.key_file)
        public = secrets.private_key.public
        print(json.dumps({"public": str(public)}) if args.output == "json" else public)
        return 0
    private = DiscoPrivateKey.generate()
    if args.output == "json":
        print(json.dumps({"private": private.text(), "public": str(private.public)}))
    else:
        print(private.text())
        print(private.public)
    return 0


def _operator(args: argparse.Namespace) -> int:
    from relay_operator.main import run_operator

    if args.store is None:
        print("relayfleet operator: --store (or RELAYFLEET_STORE) is required", file=sys.stderr)
        return 2
    config = from_args(OperatorConfig, args)
    _configure_logging(config.log_level, config.log_format)
    # The stdlib loop, not uvloop: the operator relays no packets (on uvloop it spent as much
    # CPU per RelayEndpoint, docs/performance.md), and under uvloop an aiohttp connect
    # cancelled while the API server restarts can leave its socket's fd registered to a dead
    # transport (MagicStack/uvloop#653); kopf's watcher then dies of "File descriptor N is
    # used by transport" and the operator with it.
    asyncio.run(run_operator(config))
    return 0


def _status(args: argparse.Namespace) -> int:
    from relay_operator.fleet import format_fleet, gather_fleet

    async def gather() -> dict:
        if args.store is None:
            return await gather_fleet(None, args.kubeconfig, time.time(), args.endpoints)
        store = open_store(args.store, max_vni=1, prefix=args.store_prefix)
        try:
            return await gather_fleet(store, args.kubeconfig, time.time(), args.endpoints)
        finally:
            await store.close()

    if args.watch:
        return _watch(gather, args)
    try:
        fleet = asyncio.run(gather())
    except StoreError as exc:
        print(f"relayfleet status: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # no kubeconfig, no cluster, no Relay CRD, no rights
        print(
            f"relayfleet status: cannot read the Relay objects: {_first_line(exc)} "
            "(is the operator installed? --store reads the fleet's Redis instead)",
            file=sys.stderr,
        )
        return 1
    if args.output == "json":
        print(json.dumps(fleet, indent=2))
    else:
        print(format_fleet(fleet), end="")
    return 0


def _first_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0]


def _watch(gather, args: argparse.Namespace) -> int:
    from relay_operator.fleet_watch import MetricsReader, watch

    if args.output == "json":
        print("relayfleet status: --watch draws the terminal view; drop -o json", file=sys.stderr)
        return 2
    reader = MetricsReader(args.kubeconfig)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(watch(gather, reader, args.interval, passes=args.passes))
    return 0


def build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="relayfleet",
        description="relay-fleet: UDP relay servers for peers that cannot reach each other.",
    )
    parser.add_argument("--version", action="version", version=f"relayfleet {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    relay = commands.add_parser(
        "relay",
        help="run a standalone relay with its HTTP allocation API",
        description="Run one relay: UDP relaying on --port, and an HTTP API on --api-listen "
        "(POST /v0/relay/endpoint, GET /v0/relay/endpoints, and /healthz and /metrics unless "
        "--metrics-listen serves those on a listener of their own). "
        "When ready it prints one JSON line to stdout with the bound ports; logs go to stderr.",
    )
    add_arguments(relay, RelayConfig, environ)
    relay.set_defaults(func=_relay)

    demo = commands.add_parser(
        "demo",
        help="run a relay and two clients on loopback and print a summary",
        description="Start a relay on loopback, allocate an endpoint for two fresh clients, "
        "run both bind handshakes, relay traffic both ways and print what happened.",
    )
    demo.add_argument("--packets", type=int, default=1000, help="packets each way [1000]")
    demo.add_argument("--size", type=int, default=200, help="payload bytes per packet [200]")
    demo.add_argument("--ipv6", action="store_true", help="use ::1 instead of 127.0.0.1")
    demo.add_argument(
        "--protocol",
        type=int,
        choices=(0, 1),
        default=1,
        help="protocol version the clients bind in [1]",
    )
    demo.set_defaults(func=_demo)

    operator = commands.add_parser(
        "operator",
        help="run the Kubernetes operator that places RelayEndpoints on relays",
        description="Watch RelayEndpoint resources, place each on a live relay, allocate "
        "through the fleet's Redis, write the allocation into status, and free it on "
        "deletion. Talks to the cluster with its service account in a pod, else the "
        "kubeconfig (KUBECONFIG).",
    )
    add_arguments(operator, OperatorConfig, environ)
    operator.set_defaults(func=_operator)

    status = commands.add_parser(
        "status",
        help="show the fleet at a glance: relays, liveness, load, endpoints by phase",
        description="Read the relays and the RelayEndpoints from Kubernetes (KUBECONFIG, or "
        "--kubeconfig: the Relay objects the operator keeps, so a kubeconfig is enough) and "
        "print them. --store reads the relays from the fleet's Redis registry instead. "
        "--watch redraws the fleet every --interval, with each relay's packets, bytes, "
        "handshakes and drops per second from its /metrics (read through the API server's pod "
        "proxy for relays in pods: that needs get on pods/proxy). Also a kubectl plugin: "
        "kubectl relayfleet status.",
    )
    add_arguments(status, StatusConfig, environ)
    status.add_argument("--kubeconfig", metavar="PATH", help="kubeconfig (default: as kubectl)")
    status.add_argument(
        "--endpoints",
        action="store_true",
        help="also list each RelayEndpoint with its peers' handshake, protocol version and "
        "(version 1) generation",
    )
    status.add_argument("-o", "--output", choices=["text", "json"], default="text")
    status.add_argument(
        "-w", "--watch", action="store_true", help="redraw the fleet every --interval until ^C"
    )
    status.add_argument(
        "--interval", type=duration, default=2.0, metavar="DUR",
        help="time between two redraws of --watch [2s]",
    )  # fmt: skip
    status.add_argument("--passes", type=int, help=argparse.SUPPRESS)
    status.set_defaults(func=_status)

    keygen = commands.add_parser(
        "keygen",
        help="print a new disco key pair",
        description="Print a new disco private key (privkey:...) and its public key "
        "(discokey:...). With --key-file, write a relay key file instead (disco private key "
        "and challenge secret, mode 0600) and print only the public key.",
    )
    keygen.add_argument("--key-file", metavar="PATH", help="write a relay key file here")
    keygen.add_argument("-o", "--output", choices=["text", "json"], default="text")
    keygen.set_defaults(func=_keygen)
    return parser


def main(
    argv: Sequence[str] | None = None,
    environ: Mapping[str, str] | None = None,
    prog: str = "relayfleet",
) -> int:
    parser = build_parser(os.environ if environ is None else environ)
    parser.prog = prog
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (KeyFileError, ApiTokenError) as exc:
        print(f"relayfleet {args.command}: {exc}", file=sys.stderr)
        return 1


def kubectl_plugin() -> int:
    """``kubectl relayfleet ...``: kubectl runs ``kubectl-relayfleet`` from PATH."""
    return main(prog="kubectl relayfleet")


if __name__ == "__main__":
    sys.exit(main())
