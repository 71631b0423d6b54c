"""A real Headscale for the tests: config, policy, process, users, pre-auth keys, nodes.

The control client (relay/tailnet/control.py) is proven against Headscale
v0.29.3 as scripts/build-tailnet builds it (.dev/bin/headscale), never
against a fake. A :class:`Headscale` writes a config (server and embedded
DERP over plain HTTP, STUN, every state file and the CLI's unix socket under
its directory, no internet DERP map, no update checks, no magic DNS, the
policy from a file), starts ``headscale serve`` and waits until it is
healthy, reloads its policy with SIGHUP (after Headscale has checked it, so
that a policy it refuses never replaces the one it runs), restarts it on the
same ports with the same state, and stops it. The CLI talks to it over the
unix socket.

By default it listens on 127.0.0.1 with free ports. ``command_prefix``
(e.g. ``("ip", "netns", "exec", "ns")``) runs the server inside a network
namespace; then pass the ``address`` and, if needed, ``ports`` that are
right there. The CLI needs no prefix: a unix socket is reached by path.
Failures carry the tail of the server's log.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.controlplane import CertPair
from tests.support.paths import ROOT
from tests.support.ports import free_port
from tests.support.waiting import wait_until_sync

BINARY = ROOT / ".dev" / "bin" / "headscale"
RELAY_CAP = "tailscale.com/cap/relay"
TAGS = ("tag:client", "tag:relay")
RELOADING = "Received SIGHUP, reloading ACL policy"
REGION_ID = 999
LOG_TAIL = 6000


class HeadscaleError(RuntimeError):
    """Headscale or its CLI failed; the message has the log's tail."""


def require_headscale(binary: Path = BINARY) -> Path:
    """The headscale executable; fails the test (never skips it) when it is missing."""
    if not binary.exists():
        pytest.fail(
            f"{binary} is missing: run scripts/build-tailnet (it builds Headscale v0.29.3)",
            pytrace=False,
        )
    return binary


@dataclass(frozen=True, slots=True)
class HeadscalePorts:
    http: int
    """The control server and the embedded DERP (plain HTTP)."""
    stun: int
    """UDP."""
    metrics: int
    grpc: int

    @classmethod
    def free(cls) -> HeadscalePorts:
        return cls(
            http=free_port(),
            stun=free_port(socket.SOCK_DGRAM),
            metrics=free_port(),
            grpc=free_port(),
        )


def default_policy(
    users: Iterable[str], relay_grants: Iterable[tuple[str, str]] = ()
) -> dict[str, Any]:
    """:data:`TAGS` owned by ``users``, every tagged node reaching every other; and for each
    (src, dst) in ``relay_grants`` a grant of the relay capability from src to dst."""
    owners = [f"{user}@" for user in users]
    grants: list[dict[str, Any]] = [{"src": list(TAGS), "dst": list(TAGS), "ip": ["*"]}]
    grants += [{"src": [src], "dst": [dst], "app": {RELAY_CAP: [{}]}} for src, dst in relay_grants]
    return {"tagOwners": {tag: list(owners) for tag in TAGS}, "grants": grants}


class Headscale:
    """One Headscale server with its state under ``directory``; ``with`` starts and stops it."""

    def __init__(
        self,
        directory: Path,
        *,
        address: str = "127.0.0.1",
        ports: HeadscalePorts | None = None,
        policy: Mapping[str, Any] | None = None,
        command_prefix: Sequence[str] = (),
        binary: Path = BINARY,
        region_id: int = REGION_ID,
        tls: CertPair | None = None,
    ) -> None:
        self.binary = require_headscale(binary)
        self.tls = tls
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.ports = ports or HeadscalePorts.free()
        self.command_prefix = tuple(command_prefix)
        self.region_id = region_id
        self.config_path = directory / "config.json"
        self.policy_path = directory / "policy.json"
        self.socket_path = directory / "headscale.sock"
        self.log = directory / "headscale.log"
        self.policy: dict[str, Any] = dict(policy or default_policy([]))
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        host = f"[{self.address}]" if ":" in self.address else self.address
        return f"{'https' if self.tls else 'http'}://{host}:{self.ports.http}"

    def config(self) -> dict[str, Any]:
        """The config, as JSON (which YAML reads): the deltas from Headscale's example."""
        state = self.directory
        return {
            "server_url": self.url,
            "listen_addr": f"{self.address}:{self.ports.http}",
            "metrics_listen_addr": f"{self.address}:{self.ports.metrics}",
            "grpc_listen_addr": f"{self.address}:{self.ports.grpc}",
            "grpc_allow_insecure": False,
            "noise": {"private_key_path": str(state / "noise_private.key")},
            "prefixes": {
                "v4": "100.64.0.0/10",
                "v6": "fd7a:115c:a1e0::/48",
                "allocation": "sequential",
            },
            "derp": {
                "server": {
                    "enabled": True,
                    "region_id": self.region_id,
                    "region_code": "test",
                    "region_name": "tests",
                    "stun_listen_addr": f"{self.address}:{self.ports.stun}",
                    "private_key_path": str(state / "derp_server_private.key"),
                    "automatically_add_embedded_derp_region": True,
                    "ipv4": self.address,
                },
                "urls": [],
                "paths": [],
                "auto_update_enabled": False,
            },
            "disable_check_updates": True,
            "ephemeral_node_inactivity_timeout": "30m",
            "database": {"type": "sqlite", "sqlite": {"path": str(state / "db.sqlite")}},
            "log": {"level": "info", "format": "text"},
            "policy": {"mode": "file", "path": str(self.policy_path)},
            "dns": {"magic_dns": False, "override_local_dns": False, "nameservers": {"global": []}},
            "unix_socket": str(self.socket_path),
            "unix_socket_permission": "0770",
            "logtail": {"enabled": False},
            # With a certificate, one TLS listener serves the control protocol and DERP.
            "tls_cert_path": str(self.tls.cert) if self.tls else "",
            "tls_key_path": str(self.tls.key) if self.tls else "",
        }

    # The process.

    def start(self, timeout: float = 60.0) -> None:
        """Write config and policy, start ``headscale serve``, return once it is healthy."""
        assert self.process is None, "already running"
        self.config_path.write_text(json.dumps(self.config(), indent=2) + "\n")
        self._write_policy()
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [*self.command_prefix, str(self.binary), "-c", str(self.config_path), "serve"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_until_sync(
                self._healthy, f"Headscale at {self.url} to be healthy", timeout=timeout,
                interval=0.1, log=self.log,
            )  # fmt: skip
        except BaseException:
            self.stop(signal.SIGKILL)
            raise

    def _running(self) -> bool:
        """True, or HeadscaleError if the server is not running (any more)."""
        if self.process is None or self.process.poll() is not None:
            code = self.process.returncode if self.process else None
            raise HeadscaleError(f"headscale exited (status {code})\n{self.log_tail()}")
        return True

    def _healthy(self) -> bool:
        self._running()
        if not self.socket_path.exists():
            return False
        result = subprocess.run(
            [str(self.binary), "-c", str(self.config_path), "health"],
            capture_output=True, timeout=15,
        )  # fmt: skip
        return result.returncode == 0

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Send ``sig`` and wait for the process to end; SIGKILL it if it will not."""
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def restart(self) -> None:
        """Stop and start again: same ports, same state (keys, database)."""
        self.stop()
        self.start()

    def __enter__(self) -> Headscale:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def log_tail(self, limit: int = LOG_TAIL) -> str:
        try:
            return self.log.read_text(errors="replace")[-limit:]
        except OSError:
            return "(no log)"

    # The policy.

    def set_policy(self, policy: Mapping[str, Any], *, reload: bool = True) -> None:
        """Replace the policy. While the server runs, Headscale checks it first (against its
        users and nodes; HeadscaleError, and the old policy stays, if it refuses it), and with
        ``reload`` it reloads it (SIGHUP): this returns once Headscale has taken the signal.
        (Its "reload completed" line comes only when the compiled policy changed, so it cannot
        be waited for in general: callers wait for the effect they need.) Stopped, the policy
        is only written: Headscale reads it when it starts."""
        if self.process is None:
            self.policy = dict(policy)
            self._write_policy()
            return
        candidate = self.policy_path.with_name("policy.candidate.json")
        candidate.write_text(json.dumps(dict(policy), indent=2) + "\n")
        try:
            self.cli("policy", "check", "--file", str(candidate))
            candidate.replace(self.policy_path)
        finally:
            candidate.unlink(missing_ok=True)
        self.policy = dict(policy)
        if reload:
            self._reload()

    def _reload(self) -> None:
        assert self.process is not None
        seen = self.log.stat().st_size
        self.process.send_signal(signal.SIGHUP)
        wait_until_sync(
            lambda: self._running() and RELOADING in self._log_since(seen),
            "Headscale to take the SIGHUP",
            interval=0.05, log=self.log,
        )  # fmt: skip

    def _log_since(self, offset: int) -> str:
        with self.log.open("rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")

    def _write_policy(self) -> None:
        self.policy_path.write_text(json.dumps(self.policy, indent=2) + "\n")

    # The CLI.

    def cli(self, *args: str, timeout: float = 30.0) -> str:
        """``headscale`` run against this server (over its unix socket); its stdout."""
        argv = [str(self.binary), "-c", str(self.config_path), *args]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            raise HeadscaleError(
                f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}\n"
                f"{self.log_tail()}"
            )
        return result.stdout

    def cli_json(self, *args: str) -> Any:
        return json.loads(self.cli(*args, "--output", "json") or "null")

    def create_user(self, name: str) -> int:
        """A new user; its ID."""
        self.cli("users", "create", name)
        return self.user_id(name)

    def user_id(self, name: str) -> int:
        users = self.cli_json("users", "list") or []
        return next(int(user["id"]) for user in users if user["name"] == name)

    def create_auth_key(
        self, user_id: int, tags: Iterable[str] = (), *, reusable: bool = True,
        ephemeral: bool = False, expiration: str = "1h",
    ) -> str:  # fmt: skip
        """A pre-auth key for ``user_id``; nodes that use it get ``tags``."""
        args = ["preauthkeys", "create", "--user", str(user_id), "--expiration", expiration]
        if reusable:
            args.append("--reusable")
        if ephemeral:
            args.append("--ephemeral")
        tags = list(tags)
        if tags:
            args += ["--tags", ",".join(tags)]
        created = self.cli_json(*args)
        return str(created["key"])

    def nodes(self) -> list[dict[str, Any]]:
        """``headscale nodes list`` as JSON objects (``node_key``, ``given_name``, ``tags`` ...)."""
        return list(self.cli_json("nodes", "list") or [])
