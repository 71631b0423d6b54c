"""``scripts/local-fleet``: a whole relay fleet on this machine, on loopback, left running.

Issue 5 asks for one command that gives a new user (and the end-to-end tests)
a real fleet to ``kubectl apply`` against: etcd and kube-apiserver
(tests/support/controlplane.py), a redis-server with AOF, two relay agents, and the
operator once it exists, all detached processes that outlive this command.
Everything lives under ``.dev/local-fleet/`` (pid files, logs/, data), and the
admin kubeconfig is written to ``.dev/kubeconfig``. There is no kubelet: the
relays run as local processes, and report their endpoints' state into the
RelayEndpoints' status with that kubeconfig.

    scripts/local-fleet up       build once, start what is not running, print how to use it
    scripts/local-fleet status   what runs, where, and its log
    scripts/local-fleet down     stop everything started here (--purge also deletes the data)

``--home DIR`` (before the command) keeps everything, the kubeconfig too
(``DIR/kubeconfig``), in DIR instead: a fleet of its own beside the usual one,
as the tests run it.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

import redis

from tests.support.controlplane import (
    ROOT,
    ControlPlane,
    ControlPlaneError,
    Process,
    build,
    port_free,
)
from tests.support.paths import RELAYFLEET
from tests.support.ports import free_port
from tests.support.waiting import wait_until_sync

HOME = ROOT / ".dev" / "local-fleet"
KUBECONFIG = ROOT / ".dev" / "kubeconfig"
CRDS = ROOT / "crds"
RELAYS = ("relay-1", "relay-2")
READY_TIMEOUT = 60.0


class FleetError(RuntimeError):
    pass


def _load_state(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _save_state(path: Path, state: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(state, indent=2) + "\n")


def _port(state: dict, name: str, running: bool) -> int:
    """The port saved under ``name`` if still usable, else a free one (and saved)."""
    port = state.get(name)
    if not isinstance(port, int) or (not running and not port_free(port)):
        port = free_port()
    state[name] = port
    return port


def _ready_while_running(process: Process, ready: Callable[[], object]) -> object:
    """``ready()``, once sure that ``process`` has not exited (else FleetError)."""
    if process.pid() is None:
        raise FleetError(
            f"{process.name} exited while starting; {process.log}:\n{process.log_tail()}"
        )
    return ready()


def _child_env(kubeconfig: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["KUBECONFIG"] = str(kubeconfig)
    env.pop("RELAYFLEET_STORE", None)
    return env


@functools.cache
def operator_available() -> bool:
    """Whether this checkout has ``relayfleet operator`` yet."""
    try:
        result = subprocess.run(
            [str(RELAYFLEET), "operator", "--help"],
            capture_output=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return False
    return result.returncode == 0


class Fleet:
    """The fleet kept in ``home`` (default .dev/local-fleet, its kubeconfig .dev/kubeconfig)."""

    def __init__(self, home: Path = HOME, kubeconfig: Path = KUBECONFIG) -> None:
        self.home = home
        self.kubeconfig = kubeconfig
        self.logs = home / "logs"
        self.state_file = home / "fleet.json"
        self.control_plane = ControlPlane(home, detached=True)
        self.redis = Process("redis", home, self.logs)
        self.relays = {name: Process(name, home, self.logs) for name in RELAYS}
        self.operator = Process("operator", home, self.logs)
        self.state = _load_state(self.state_file)

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.state['redis']}"

    def processes(self) -> list[Process]:
        return [
            self.control_plane.etcd,
            self.control_plane.apiserver,
            self.redis,
            *self.relays.values(),
            self.operator,
        ]

    # -- up ----------------------------------------------------------------------

    def up(self) -> None:
        build()
        self.control_plane.start()
        self.control_plane.write_kubeconfig(
            self.kubeconfig, user="admin", cert=self.control_plane.admin_cert
        )
        self._start_redis()
        self._apply_crds()
        for name in RELAYS:
            self._start_relay(name)
        if operator_available():
            self._start_operator()
        else:
            print("local-fleet: `relayfleet operator` is not in this checkout yet: not started")

    def _start_redis(self) -> None:
        running = self.redis.pid() is not None
        port = _port(self.state, "redis", running)
        _save_state(self.state_file, self.state)
        if not running:
            data = self.home / "redis"
            data.mkdir(parents=True, exist_ok=True)
            executable = shutil.which("redis-server")
            if executable is None:
                raise FleetError("redis-server is not installed: run scripts/build-test-deps")
            self.redis.start(
                [
                    executable, "--bind", "127.0.0.1", "--port", str(port),
                    "--dir", str(data), "--appendonly", "yes", "--daemonize", "no",
                ],
                detached=True,
            )  # fmt: skip

        def answers() -> bool:
            try:
                with redis.Redis.from_url(self.redis_url, socket_timeout=1) as client:
                    return client.info("persistence")["loading"] == 0
            except redis.RedisError:
                return False

        wait_until_sync(
            lambda: _ready_while_running(self.redis, answers), "redis-server", timeout=READY_TIMEOUT
        )

    def _apply_crds(self) -> None:
        files = sorted([*CRDS.glob("*.yaml"), *CRDS.glob("*.yml")]) if CRDS.is_dir() else []
        if not files:
            return
        args = [arg for file in files for arg in ("-f", str(file))]
        applied = self.control_plane.kubectl("apply", "--server-side", *args, "-o", "name")
        crds = [n for n in applied.stdout.split() if n.startswith("customresourcedefinition")]
        if crds:
            self.control_plane.kubectl(
                "wait", "--for=condition=Established", "--timeout=60s", *crds, timeout=90
            )
        print(f"local-fleet: applied {', '.join(f.name for f in files)}")

    def _start_relay(self, name: str) -> None:
        relay = self.relays[name]
        if relay.pid() is None:
            relay.start(
                [
                    str(RELAYFLEET), "relay",
                    "--store", self.redis_url,
                    "--name", name,
                    "--key-file", str(self.home / f"{name}.key"),
                    "--listen", "127.0.0.1",
                    "--port", "0",
                    "--api-listen", "127.0.0.1:0",
                    "--addr", "127.0.0.1",
                    "--kubeconfig", str(self.kubeconfig),
                ],
                env=_child_env(self.kubeconfig),
                detached=True,
                separate_stdout=True,
            )  # fmt: skip
        wait_until_sync(
            lambda: _ready_while_running(relay, lambda: self.relay_info(name)),
            f"{name}'s ready line",
            timeout=READY_TIMEOUT,
        )

    def relay_info(self, name: str) -> dict | None:
        """The ready line the relay printed: its UDP port, API address and disco key."""
        try:
            lines = self.relays[name].stdout_log.read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            try:
                info = json.loads(line)
            except ValueError:
                continue
            if isinstance(info, dict) and info.get("ready"):
                return info
        return None

    def _start_operator(self) -> None:
        running = self.operator.pid() is not None
        port = _port(self.state, "operator-health", running)
        _save_state(self.state_file, self.state)
        if not running:
            self.operator.start(
                [
                    str(RELAYFLEET), "operator",
                    "--store", self.redis_url,
                    "--standalone",
                    "--liveness", f"http://127.0.0.1:{port}/healthz",
                ],
                env=_child_env(self.kubeconfig),
                detached=True,
            )  # fmt: skip

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until_sync(
            lambda: _ready_while_running(self.operator, healthy),
            "the operator's liveness endpoint",
            timeout=READY_TIMEOUT,
            interval=0.2,
        )

    # -- status and down -----------------------------------------------------------

    def describe(self, process: Process) -> str:
        plane = self.control_plane
        if process is plane.etcd:
            return plane.etcd_url if plane.ports else ""
        if process is plane.apiserver:
            return plane.server if plane.ports else ""
        if process is self.redis:
            return self.redis_url if "redis" in self.state else ""
        if process is self.operator:
            return f"store {self.redis_url}" if "redis" in self.state else ""
        info = self.relay_info(process.name) if process.pid() else None
        if not info:
            return ""
        return f"udp 127.0.0.1:{info['udp_port']}  api http://{info['api']}"

    def all_running(self) -> bool:
        """Whether every process runs (the operator only where the checkout has it)."""
        return all(
            process.pid() is not None
            for process in self.processes()
            if process is not self.operator or operator_available()
        )

    def status(self) -> bool:
        """Print a line per process; True if all of them run."""
        self.control_plane.load_state()
        rows = []
        every = True
        for process in self.processes():
            pid = process.pid()
            if pid is None and process is self.operator and not operator_available():
                rows.append((process.name, "absent", "-", "relayfleet operator not in checkout"))
                continue
            every &= pid is not None
            state = "running" if pid else "stopped"
            rows.append((process.name, state, str(pid or "-"), self.describe(process)))
        width = max(len(row[0]) for row in rows)
        for name, state, pid, where in rows:
            print(f"  {name:<{width}}  {state:<8} {pid:>7}  {where}")
        print(f"  logs: {self.logs}/")
        return every

    def down(self, purge: bool) -> None:
        for process in reversed(self.processes()):
            if process.stop():
                print(f"local-fleet: stopped {process.name}")
        if purge:
            shutil.rmtree(self.home, ignore_errors=True)
            self.kubeconfig.unlink(missing_ok=True)
            print(f"local-fleet: deleted {self.home} and {self.kubeconfig}")


def usage(kubeconfig: Path, command: str = "scripts/local-fleet") -> None:
    print(
        f"""
Use it:
  export KUBECONFIG={kubeconfig}
  kubectl apply -f examples/relayendpoint.yaml
  kubectl get rep
  kubectl get relays
  .venv/bin/relayfleet status --watch
Status: {command} status
Stop:   {command} down   (keeps the data; down --purge deletes it)"""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/local-fleet", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--home",
        type=Path,
        metavar="DIR",
        help=f"keep the fleet and its kubeconfig in DIR (default {HOME.relative_to(ROOT)}, "
        f"kubeconfig {KUBECONFIG.relative_to(ROOT)})",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("up", help="build once, start whatever is not running")
    commands.add_parser("status", help="show what runs")
    down = commands.add_parser("down", help="stop everything local-fleet started")
    down.add_argument("--purge", action="store_true", help="also delete .dev/local-fleet")
    args = parser.parse_args(argv)

    home = args.home.resolve() if args.home else None
    fleet = Fleet(home, home / "kubeconfig") if home else Fleet()
    try:
        if args.command == "up":
            if fleet.all_running():
                print("local-fleet: already up")
            else:
                fleet.up()
            fleet.status()
            usage(fleet.kubeconfig, "scripts/local-fleet" + (f" --home {home}" if home else ""))
        elif args.command == "status":
            return 0 if fleet.status() else 3
        else:
            fleet.down(args.purge)
    except (FleetError, ControlPlaneError, TimeoutError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or ""
        print(f"local-fleet: error: {exc}\n{detail}".rstrip(), file=sys.stderr)
        print(
            "local-fleet: what did start keeps running; see `scripts/local-fleet status`",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
