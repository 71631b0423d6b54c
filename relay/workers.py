"""A relay over several processes: ``relayfleet relay --workers N``.

Python relays on one core, so a relay uses more than one by running N worker
processes on one UDP port. The parent (:class:`WorkerPool`, driven by
:class:`relay.server.RelayServer`) opens the port's N sockets in one
SO_REUSEPORT group whose BPF program hands each datagram to the worker that
owns its VNI (relay/shells/reuseport.py), so both clients of an endpoint,
data and control, always reach the same worker. Each worker is a
:class:`RelayServer` in the :class:`WorkerRole`: it relays on its socket and
installs, from the store, only the allocations whose VNI it owns.

Rule 1: the parent keeps every socket open for the pool's life, so the group's
order (which the BPF program's answer indexes) never changes: a worker that
dies is started again on the same socket, and what arrived meanwhile waits in
its receive queue. The new worker reads its allocations from the store.
Rule 2: to the outside it is one relay: the parent alone registers and
heart-beats it (its load the workers' endpoints summed), and serves one HTTP
API whose ``/metrics`` sums the workers' (each serves its own on a Unix
socket in the pool's directory).

Rule 3: an allocation made through the parent's HTTP API is answered once the
worker owning its VNI serves it (the parent asks it to install it from the
store), so the client's first bind never races the store's announcement.

Rule 4: one status reporter, in the parent, reads the endpoints from a copy
(:class:`WorkersView`) that it refreshes before each pass: each worker sends
(:class:`EndpointChanges`) the endpoints whose reported state changed since it
was last asked, those it no longer serves and those it expired; a worker
started again sends all of its endpoints. The pickles go over the workers'
Unix sockets, in a directory only this user may enter.

Rule 5: each worker keeps its own kernel fast path (a table of its own, for the
endpoints it owns, hooked at the relay's devices), as it keeps its own core.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import pickle
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from relay.config import RelayConfig
from relay.protocol.core import Endpoint, RelayCore
from relay.reporter import endpoint_snapshot
from relay.shells.keyfile import RelaySecrets
from relay.shells.reuseport import open_worker_sockets, worker_for_vni
from relay.shells.summed_metrics import sum_expositions

log = logging.getLogger(__name__)

WORKER_ENTRY = "from relay.cli import run_worker; run_worker()"
"""What a worker process runs (the command's entry, which reads a :class:`WorkerSpec` from
standard input)."""
RESTART_DELAY = (0.2, 5.0)
"""A dead worker is started again after the first delay, doubling up to the second while
it keeps dying within a minute."""
WORKER_TIMEOUT = 2.0
START_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1
ENDPOINTS_FAMILY = "relayfleet_relay_endpoints"


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process is given on its standard input."""

    config: RelayConfig
    secrets: RelaySecrets
    index: int
    count: int
    fd: int
    control_path: str
    parent: int


@dataclass(frozen=True)
class WorkerRole:
    """A :class:`relay.server.RelayServer` that is worker ``index`` of ``count``: it relays on
    ``sock`` (the parent's socket ``index``) and serves ``/metrics`` on ``control_path``."""

    index: int
    count: int
    sock: socket.socket
    control_path: str

    def owns(self, vni: int) -> bool:
        return worker_for_vni(vni, self.count) == self.index

    @classmethod
    def from_spec(cls, spec: WorkerSpec) -> WorkerRole:
        sock = socket.socket(fileno=spec.fd)
        sock.setblocking(False)
        return cls(spec.index, spec.count, sock, spec.control_path)


def die_with_parent(parent: int) -> None:
    """Have the kernel SIGKILL this worker when its parent dies (SIGKILL included), so that
    no orphan keeps serving a relay that is gone; exits at once if it already has."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        log.warning("cannot tie this worker to its parent: %s", os.strerror(ctypes.get_errno()))
    if os.getppid() != parent:
        os._exit(1)


class WorkerPool:
    """The parent's side: the sockets, the worker processes, and what they report."""

    def __init__(self, config: RelayConfig, secrets: RelaySecrets, count: int) -> None:
        self._config = config
        self._secrets = secrets
        self.count = count
        self._sockets: list[socket.socket] = []
        self._processes: list[asyncio.subprocess.Process | None] = [None] * self.count
        self._watchers: list[asyncio.Task[None]] = []
        self._directory = tempfile.TemporaryDirectory(prefix="relayfleet-workers-")
        self.restarts = 0
        self.closing = False
        self.texts: list[str] = []
        """The workers' last ``/metrics`` texts (:meth:`scrape`)."""

    @property
    def port(self) -> int:
        return self._sockets[0].getsockname()[1]

    def control_path(self, index: int) -> str:
        return str(Path(self._directory.name) / f"worker-{index}.sock")

    async def start(self) -> None:
        """Open the sockets and start every worker. OSError where the kernel refuses the
        steering program (the caller runs one worker instead)."""
        self._sockets = open_worker_sockets(self._config.listen, self._config.port, self.count)
        for index in range(self.count):
            await self._spawn(index)
            self._watchers.append(
                asyncio.create_task(self._watch(index), name=f"worker-{index}-watch")
            )
        await self._until_answering(range(self.count))

    async def _until_answering(self, indexes: range | list[int]) -> None:
        """Until each of those workers answers on its Unix socket (it serves from then on);
        RuntimeError if one has not within :data:`START_TIMEOUT`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        for index in indexes:
            while await self._request(index, "GET", "/healthz") is None:
                if loop.time() > deadline:
                    raise RuntimeError(f"worker {index} did not start within {START_TIMEOUT:g} s")
                await asyncio.sleep(0.05)

    async def _spawn(self, index: int) -> None:
        fd = self._sockets[index].fileno()
        spec = WorkerSpec(
            self._config, self._secrets, index, self.count, fd, self.control_path(index),
            os.getpid(),
        )  # fmt: skip
        with contextlib.suppress(FileNotFoundError):
            os.unlink(spec.control_path)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", WORKER_ENTRY,
            stdin=asyncio.subprocess.PIPE, pass_fds=(fd,),
        )  # fmt: skip
        assert process.stdin is not None
        process.stdin.write(pickle.dumps(spec))
        await process.stdin.drain()
        process.stdin.close()
        self._processes[index] = process
        log.info("worker %d of %d started (pid %d)", index, self.count, process.pid)

    async def _watch(self, index: int) -> None:
        delay = RESTART_DELAY[0]
        loop = asyncio.get_running_loop()
        while True:
            process = self._processes[index]
            assert process is not None
            started = loop.time()
            code = await process.wait()
            if self.closing:
                return
            log.warning("worker %d (pid %d) exited with %s; starting it again",
                        index, process.pid, code)  # fmt: skip
            delay = RESTART_DELAY[0] if loop.time() - started > 60 else delay
            await asyncio.sleep(delay)
            delay = min(delay * 2, RESTART_DELAY[1])
            self.restarts += 1
            await self._spawn(index)

    def pids(self) -> list[int | None]:
        return [p.pid if p is not None and p.returncode is None else None for p in self._processes]

    async def install(self, vni: int, lamport_id: int) -> None:
        """Have the worker owning ``vni`` serve that allocation now (it would from the store's
        announcement, a moment later); a worker that does not answer serves it once back."""
        index = worker_for_vni(vni, self.count)
        await self._request(index, "POST", f"/v0/worker/install/{vni}/{lamport_id}")

    async def flush_bound(self, vni: int) -> None:
        """Have the worker owning ``vni`` write its bound marks to the store now."""
        await self._request(worker_for_vni(vni, self.count), "POST", "/v0/worker/flush-bound")

    async def endpoints_json(self) -> list[dict[str, Any]]:
        """Every worker's endpoints, as ``GET /v0/relay/endpoints`` lists them."""
        answers = await asyncio.gather(
            *(self._request(i, "GET", "/v0/relay/endpoints") for i in range(self.count))
        )
        return [e for answer in answers if answer for e in json.loads(answer)["Endpoints"]]

    async def changes(self, index: int) -> dict[str, Any] | None:
        """Worker ``index``'s :meth:`EndpointChanges.take`, or None if it does not answer."""
        answer = await self._request(index, "GET", "/v0/worker/changes", binary=True)
        return pickle.loads(answer) if answer is not None else None

    async def scrape(self) -> list[str]:
        """Every live worker's ``/metrics``, kept as :attr:`texts`; a worker that does not
        answer is left out."""
        texts = await asyncio.gather(*(self._scrape(i) for i in range(self.count)))
        self.texts = [text for text in texts if text is not None]
        return self.texts

    async def _scrape(self, index: int) -> str | None:
        return await self._request(index, "GET", "/metrics")

    async def _request(self, index: int, method: str, path: str, binary: bool = False) -> Any:
        """A request to worker ``index`` on its Unix socket: the answer's text (its bytes if
        ``binary``), or None when it does not answer 200 within :data:`WORKER_TIMEOUT`."""
        connector = aiohttp.UnixConnector(path=self.control_path(index))
        timeout = aiohttp.ClientTimeout(total=WORKER_TIMEOUT)
        try:
            async with (
                aiohttp.ClientSession(connector=connector, timeout=timeout) as session,
                session.request(method, f"http://worker{path}") as response,
            ):
                if response.status != 200:
                    return None
                return await (response.read() if binary else response.text())
        except (aiohttp.ClientError, OSError, TimeoutError):
            return None

    def load(self) -> int:
        """The endpoints the workers serve, from their last ``/metrics``."""
        return int(sum(
            sample.value
            for family in sum_expositions(self.texts)
            if family.name == ENDPOINTS_FAMILY
            for sample in family.samples
        ))  # fmt: skip

    async def close(self, timeout: float) -> None:
        """SIGTERM to every worker (each writes its pending state, as one relay would), then
        SIGKILL to any still running after ``timeout``; the sockets closed last."""
        self.closing = True
        for watcher in self._watchers:
            watcher.cancel()
        running = [p for p in self._processes if p is not None and p.returncode is None]
        for process in running:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in running)), timeout)
        except TimeoutError:
            log.warning("shutdown: workers still running after %.0f s; killed", timeout)
            for process in running:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
            await asyncio.gather(*(p.wait() for p in running))
        for sock in self._sockets:
            sock.close()
        self._directory.cleanup()


class EndpointChanges:
    """A worker's side of :class:`WorkersView`: what changed in its endpoints since its parent
    last asked."""

    def __init__(self, core: RelayCore) -> None:
        self._core = core
        self._sent: dict[int, tuple[int, Any]] = {}
        self._expired: list[Endpoint] = []
        self._first = True

    def note_expired(self, endpoints: list[Endpoint]) -> None:
        self._expired.extend(endpoints)

    def take(self) -> dict[str, Any]:
        """``full`` (the first answer: everything this worker serves), ``changed`` (endpoints
        whose reported state changed), ``removed`` (VNIs no longer served), ``expired``."""
        changed: list[Endpoint] = []
        served: set[int] = set()
        for endpoint in self._core.endpoints():
            vni = endpoint.allocation.vni
            served.add(vni)
            snapshot = (endpoint.allocation.lamport_id, endpoint_snapshot(endpoint))
            if self._sent.get(vni) != snapshot:
                self._sent[vni] = snapshot
                changed.append(endpoint)
        removed = [vni for vni in self._sent if vni not in served]
        for vni in removed:
            del self._sent[vni]
        expired, self._expired = self._expired, []
        full, self._first = self._first, False
        return {"full": full, "changed": changed, "removed": removed, "expired": expired}


class WorkersView:
    """The parent's copy of its workers' endpoints: what its status reporter reads."""

    def __init__(self, pool: WorkerPool) -> None:
        self._pool = pool
        self._endpoints: dict[int, Endpoint] = {}

    def endpoint(self, vni: int) -> Endpoint | None:
        return self._endpoints.get(vni)

    async def refresh(self, note_expired: Callable[[list[Endpoint]], None]) -> None:
        """Every worker's changes since the last refresh; a worker that does not answer keeps
        what was last known of it."""
        count = self._pool.count
        answers = await asyncio.gather(*(self._pool.changes(i) for i in range(count)))
        for index, changes in enumerate(answers):
            if changes is None:
                continue
            if changes["full"]:
                for vni in [v for v in self._endpoints if worker_for_vni(v, count) == index]:
                    del self._endpoints[vni]
            for endpoint in changes["changed"]:
                self._endpoints[endpoint.allocation.vni] = endpoint
            for vni in changes["removed"]:
                self._endpoints.pop(vni, None)
            if changes["expired"]:
                note_expired(changes["expired"])
