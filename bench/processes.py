"""The processes a bench measures: starting them pinned to a CPU, reading their cost, stopping them.

Every server under test (ours, a reference, the C forwarder, a redis-server
behind ours) runs pinned to ``FORWARDER_CPU`` (Go sizes GOMAXPROCS from that:
one core each, unless a :class:`Reference` sets GOMAXPROCS itself); the bench
and its load run on ``BENCH_CPU``. A child gets
SIGTERM when the bench dies, and :meth:`Forwarder.stop` always ends one
(SIGCONT, SIGTERM, then SIGKILL), so a bench leaves nothing running.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import urllib.request
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.sockets import LOOPBACK, forwarder_sockets, set_buffers
from tests.support.paths import RELAYFLEET, ROOT
from tests.support.waiting import wait_until_sync

REFSERVER = ROOT / ".dev" / "bin" / "refserver"
REFSERVER_V1 = ROOT / ".dev" / "bin" / "refserver-v1"
REFSERVER_MISSING = "reference: .dev/bin/refserver missing (run scripts/build-go-helpers)"
FORWARDER_CPU, BENCH_CPU = 1, 0
CLOCK_TICK = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1
RAISED_LIMIT = "1e9"
RAISED_LIMITS = (
    "--handshake-rate", RAISED_LIMIT,
    "--handshake-burst", RAISED_LIMIT,
    "--handshake-total-rate", RAISED_LIMIT,
)  # fmt: skip


def stop_on_sigterm() -> None:
    """SIGTERM unwinds like an exception, so every ``finally`` stops its processes."""

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)


def pin(pid: int, cpu: int) -> None:
    """Run process ``pid`` (0: this one) on ``cpu`` only, if the machine has that CPU."""
    if (os.cpu_count() or 1) > cpu:
        os.sched_setaffinity(pid, {cpu})


@contextlib.contextmanager
def affinity(cpus: Collection[int] | None) -> Iterator[None]:
    """This process runs on ``cpus`` meanwhile, so that children started then inherit them (a
    Go runtime sizes GOMAXPROCS by them); None: where it ran."""
    if cpus is None:
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pin_to(cpu: int) -> Callable[[], None]:
    """For ``preexec_fn``: the child runs on ``cpu`` and gets SIGTERM when the bench dies."""

    def child() -> None:
        pin(0, cpu)
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    return child


def user_system_seconds(pid: int | None) -> tuple[float, float]:
    """utime and stime of a process and its threads, in seconds (counted in clock ticks of
    10 ms), 0 once it is gone."""
    if pid is None:
        return 0.0, 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) / CLOCK_TICK, int(fields[12]) / CLOCK_TICK


def cpu_seconds(pid: int | None) -> float:
    """utime + stime of a process and its threads, 0 once it is gone."""
    return sum(user_system_seconds(pid))


def scheduled_ns(pid: int) -> tuple[int, int]:
    """(ns on a CPU, ns runnable but waiting for a CPU) of all threads of ``pid`` (schedstat)."""
    running = waiting = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0, 0
    for task in tasks:
        try:
            fields = Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()
        except OSError:
            continue
        running += int(fields[0])
        waiting += int(fields[1])
    return running, waiting


def machine_busy_seconds() -> float:
    """CPU seconds every core of the machine spent busy since boot (all processes)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return (sum(values[:8]) - idle) / CLOCK_TICK


def rss_bytes(pid: int) -> int:
    """Resident memory of a process (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


# The API's per-address rate limit and per-pair cap guard a relay from other callers;
# a bench is the only caller and measures the relay, not the limiter.
NO_API_LIMITS = ("--api-rate", "1000000000", "--api-burst", "1000000000",
                 "--api-max-per-pair", "16777215")  # fmt: skip


def ours_command(*extra: str) -> list[str]:
    """``relayfleet relay`` on loopback, memory store, ephemeral ports, plus ``extra`` flags."""
    return [
        RELAYFLEET, "relay", "--listen", LOOPBACK, "--port", "0",
        "--api-listen", "127.0.0.1:0", *NO_API_LIMITS, "--addr", LOOPBACK,
        "--log-level", "warning", *extra,
    ]  # fmt: skip


def reference_command(binary: Path = REFSERVER) -> list[str]:
    """A reference Go server (v1.84.0 unless ``binary`` says otherwise) on loopback, ephemeral
    ports."""
    return [str(binary), "--port", "0", "--api-listen", "127.0.0.1:0", "--addr", LOOPBACK]


@dataclass(frozen=True)
class Reference:
    """One way of running a reference Go server: which build, its clients' protocol version,
    and the environment it runs in (GOMAXPROCS, tailscale.com's debug switches)."""

    name: str
    binary: Path
    protocol: int
    env: tuple[tuple[str, str], ...] = ()

    def command(self) -> list[str]:
        return reference_command(self.binary)

    def environment(self) -> dict[str, str]:
        return dict(self.env)

    @property
    def missing(self) -> str:
        """Why it cannot run, or "" when its binary is built."""
        if self.binary.exists():
            return ""
        return (
            f"{self.name}: {self.binary.relative_to(ROOT)} missing (run scripts/build-go-helpers)"
        )


REFERENCE_V0 = Reference("ref v1.84.0", REFSERVER, protocol=0)
# v1.102.5 opens min(16, GOMAXPROCS) SO_REUSEPORT sockets per address family and turns
# UDP_GRO on unless TS_DEBUG_DISABLE_UDP_GRO is set; it always sends with UDP GSO.
ONE_SOCKET = ("GOMAXPROCS", "1")
TWO_SOCKETS = ("GOMAXPROCS", "2")
GRO_OFF = ("TS_DEBUG_DISABLE_UDP_GRO", "1")
REFERENCE_V1 = Reference("ref v1.102.5", REFSERVER_V1, 1, (ONE_SOCKET,))
REFERENCE_V1_GRO_OFF = Reference("ref v1.102.5 GRO off", REFSERVER_V1, 1, (ONE_SOCKET, GRO_OFF))
REFERENCE_V1_VARIANTS = (
    REFERENCE_V1,
    REFERENCE_V1_GRO_OFF,
    Reference("ref v1.102.5 2 sockets", REFSERVER_V1, 1, (TWO_SOCKETS,)),
    Reference("ref v1.102.5 2 sockets GRO off", REFSERVER_V1, 1, (TWO_SOCKETS, GRO_OFF)),
)


def process_state(pid: int) -> str:
    """The kernel's state letter of a process (``T``: stopped), or ``gone``."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


@dataclass
class Forwarder:
    """A server process pinned to the forwarder CPU, with what its JSON ready line said."""

    name: str
    process: subprocess.Popen
    ready: dict
    sockets: list[socket.socket] = field(default_factory=list)

    @classmethod
    def start(
        cls,
        name: str,
        command: list[str],
        started: list[Forwarder],
        env: dict[str, str] | None = None,
    ) -> Forwarder:
        """Start ``command`` (with ``env`` added to this environment) and wait for its JSON
        ready line; it is appended to ``started``."""
        process = subprocess.Popen(
            command,
            env={**os.environ, **env} if env else None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            preexec_fn=pin_to(FORWARDER_CPU),
            # a process group of its own: were it in the bench's, and the shell that started
            # the bench exited while this one was stopped for a pre-load, the kernel would
            # send the orphaned group SIGHUP
            start_new_session=True,
        )
        forwarder = cls(name, process, {})
        started.append(forwarder)
        line = process.stdout.readline()
        if not line:
            raise RuntimeError(f"{name} did not start (exit {process.wait(10)})")
        forwarder.ready = json.loads(line)
        return forwarder

    @property
    def udp(self) -> tuple[str, int]:
        return LOOPBACK, self.ready["udp_port"]

    @property
    def api(self) -> str:
        return self.ready["api"]

    @property
    def server_key(self) -> bytes:
        return bytes.fromhex(self.ready["server_disco"].removeprefix("discokey:"))

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.process.pid)

    def scheduled_ns(self) -> tuple[int, int]:
        return scheduled_ns(self.process.pid)

    def user_system_seconds(self) -> tuple[float, float]:
        return user_system_seconds(self.process.pid)

    def take_sockets(self, buffer: int) -> None:
        """Hold duplicates of the forwarder's UDP sockets and give them ``buffer``-byte queues."""
        self.sockets = forwarder_sockets(self.process.pid, self.ready["udp_port"])
        for sock in self.sockets:
            set_buffers(sock, buffer)

    def metrics(self) -> dict[str, float]:
        """``relayfleet relay``'s /metrics as {'name{labels}': value}."""
        with urllib.request.urlopen(f"http://{self.api}/metrics", timeout=30) as response:
            text = response.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                values[name] = float(value)
        return values

    def pause(self) -> None:
        """SIGSTOP, and wait until the kernel shows the process stopped."""
        os.kill(self.process.pid, signal.SIGSTOP)
        wait_until_sync(
            self._stopped,
            f"{self.name} to stop",
            timeout=5,
            interval=0.001,
        )

    def _stopped(self) -> bool:
        """Whether the kernel shows the process stopped; raises if it exited, as then it
        never will be."""
        if self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited (status {self.process.returncode})")
        return process_state(self.process.pid) == "T"

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def stop(self) -> None:
        for sock in self.sockets:
            sock.close()
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGCONT)
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()


def stop_all(started: list[Forwarder]) -> None:
    """Stop every forwarder in ``started``, the last started first."""
    while started:
        started.pop().stop()
