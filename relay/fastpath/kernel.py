"""The kernel fast path: bound endpoints relayed by nftables, their data never reaching Python.

Once both clients of an endpoint are bound, the data rule of docs/protocol.md "Data packets" is a
fixed rewrite: a datagram with this VNI, the control bit clear and this
source ip:port goes, unchanged, from the relay's port to the other client.
The kernel can do that at its ingress hook (relay/fastpath/rules.py has the rules),
so with ``--fast-path auto`` the relay installs rules for each bound endpoint
and its data packets no longer cost a system call, a copy or a Python loop.

What stays in user space: the handshake, expiry, the allocation API and
every packet the rules do not take. The relay polls the kernel every
:data:`POLL_INTERVAL` (less often where a poll takes long, see
:meth:`KernelFastPath._poll`): it credits the rules' counters to the core
(packets, bytes, last seen), so status, metrics and steady-state expiry see
kernel traffic as if the core had relayed it, and it removes the rules of
endpoints that expired or were removed. When ``nft`` is missing or not
permitted, the relay logs why and relays in user space; when it fails later,
user space relays until the next successful poll puts the endpoints back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from relay.aio import in_turns, stop_tasks
from relay.fastpath import rules
from relay.protocol.addresses import sockaddr_host_port
from relay.protocol.core import Endpoint, RelayCore

log = logging.getLogger(__name__)

FAST_PATH_MODES = ("off", "auto")
POLL_INTERVAL = 1.0
POLL_SHARE = 0.1  # at most this share of wall time goes to polling the kernel
MAX_RETRY_INTERVAL = 30.0
DEFAULT_MAX_ENDPOINTS = 10_000
COMMAND_TIMEOUT = 30.0


class FastPathError(Exception):
    """An ``nft`` or ``ip`` command failed; the message says which and why."""


LegKey = tuple[int, str, int]  # VNI, client ip, client port: one map element
Counts = dict[LegKey, tuple[int, int]]


@dataclass
class Installed:
    """One endpoint relayed by the kernel (by VNI and LamportID): its clients' addresses as
    the rules name them."""

    endpoint: Endpoint
    senders: tuple[tuple[str, int], tuple[str, int]]
    header_bytes: int


def count_changes(
    text: str, table: str, before: Counts
) -> tuple[Counts, list[tuple[LegKey, int, int]]]:
    """The legs' counts now, and ``(leg, new packets, new bytes)`` for each that moved.

    Pure, so that it runs off the event loop: at 10 000 endpoints the JSON is
    megabytes. A count below the last one belongs to a leg installed afresh.
    """
    now = rules.parse_legs(text, table)
    moved = []
    for key, (packets, size) in now.items():
        seen_packets, seen_bytes = before.get(key, (0, 0))
        if packets < seen_packets:
            seen_packets, seen_bytes = 0, 0
        if packets > seen_packets:
            moved.append((key, packets - seen_packets, size - seen_bytes))
    return now, moved


async def run_command(argv: list[str], stdin: str | None = None, check: bool = True) -> str:
    """Run a command to completion; its stdout, or (``check``) FastPathError with its stderr."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise FastPathError(f"{argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(
            process.communicate(None if stdin is None else stdin.encode()), COMMAND_TIMEOUT
        )
    except TimeoutError:
        process.kill()
        await process.wait()
        raise FastPathError(f"{' '.join(argv)}: no answer in {COMMAND_TIMEOUT:g} s") from None
    if check and process.returncode != 0:
        reason = err.decode(errors="replace").strip() or f"exit status {process.returncode}"
        raise FastPathError(f"{' '.join(argv)}: {reason}")
    return out.decode(errors="replace")


def client_address(address: object) -> tuple[str, int] | None:
    """A bound client's ``(ip, port)`` as rules name it; None where rules cannot
    (scoped IPv6). IPv4 peers of a dual-stack socket are unmapped."""
    host, port = sockaddr_host_port(address) if isinstance(address, bytes) else address  # type: ignore[misc]
    if "%" in host:
        return None
    ip = ipaddress.ip_address(host)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip), port


class KernelFastPath:
    """Keeps the kernel's rules in step with the core's bound endpoints."""

    def __init__(
        self,
        core: RelayCore,
        port: int,
        listen: str,
        max_endpoints: int = DEFAULT_MAX_ENDPOINTS,
        clock: Callable[[], float] = time.time,
        worker: int | None = None,
    ) -> None:
        """``worker``: the index of the worker this runs in, in a relay of several (its own
        table); None for a relay of one process."""
        self._core = core
        self._port = port
        self._listen = None if listen in ("::", "0.0.0.0") else listen
        self.max_endpoints = max_endpoints
        self._clock = clock
        self.table = rules.table_name(port, worker)
        self._newly_bound = core.watch_bound()
        self._moved_now = asyncio.Event()
        self._moved = core.watch_moves(self._moved_now.set)
        self._waiting: list[Endpoint] = []
        self._prune_waiting_at = max_endpoints
        self._installed: dict[tuple[int, int], Installed] = {}
        self._legs: dict[LegKey, tuple[Installed, int]] = {}
        self._counts: Counts = {}
        self._hooked: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.active = False
        self.errors = 0
        self.not_installed = 0

    @property
    def installed(self) -> int:
        """Endpoints the kernel relays now."""
        return len(self._installed)

    async def start(self) -> bool:
        """Create this relay's table and start polling; False (logged) where nftables fails."""
        try:
            await self._nft(rules.create_table(self.table))
        except FastPathError as exc:
            log.warning("kernel fast path unavailable, relaying in user space: %s", exc)
            self._core.unwatch(self._newly_bound)
            self._core.unwatch(self._moved)
            return False
        self.active = True
        self._core.last_seen_lag = POLL_INTERVAL
        self._task = asyncio.create_task(self._poll(), name="fast-path")
        log.info("kernel fast path on: nftables table netdev %s", self.table)
        return True

    async def close(self) -> None:
        """Credit the last counts, then remove the table: the socket gets every packet again."""
        if self._task is not None:
            await stop_tasks(self._task)
            self._task = None
        if not self.active:
            return
        self.active = False
        with contextlib.suppress(FastPathError):
            await self._read_counters()
        try:
            await self._nft(rules.delete_table(self.table))
        except FastPathError as exc:
            log.warning("could not remove nftables table %s: %s", self.table, exc)
        self._installed.clear()
        self._legs.clear()
        self._core.last_seen_lag = 0.0

    async def _poll(self) -> None:
        """Sync every :data:`POLL_INTERVAL`, or less often where a sync takes long (``nft``
        lists 20 000 counters in about 0.5 s), so that polling stays under :data:`POLL_SHARE`;
        and at once when a client moved (a version 1 re-bind), so that the kernel stops
        sending its peer's packets to the old address within milliseconds."""
        interval = POLL_INTERVAL
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved_now.wait(), interval)
            self._moved_now.clear()
            started = time.monotonic()
            try:
                await self.sync()
            except Exception:
                self.errors += 1
                log.exception("kernel fast path: unexpected error; endpoints go back to user space")
                await self._reset()
            spent = time.monotonic() - started
            if self._failing:
                interval = min(MAX_RETRY_INTERVAL, 2 * interval)
            else:
                interval = max(POLL_INTERVAL, spent / POLL_SHARE)
            self._core.last_seen_lag = interval + spent

    async def sync(self) -> None:
        """Credit the counters, drop rules of endpoints gone, add rules for endpoints bound."""
        fresh: list[Installed] = []
        try:
            await self._read_counters()
            removals = await self._removals()
            installs, fresh = await self._installs()
            if removals or installs:
                await self._nft(removals + installs)
            for entry in fresh:
                self._record(entry)
            if self._failing:
                log.info("kernel fast path working again")
                self._failing = False
        except FastPathError as exc:
            self.errors += 1
            if not self._failing:
                log.warning("kernel fast path failed, endpoints go back to user space: %s", exc)
                self._failing = True
            self._waiting.extend(entry.endpoint for entry in fresh)
            await self._reset()

    async def _reset(self) -> None:
        """Start from an empty table: user space relays every endpoint until the next
        successful poll puts them back in the kernel (polls back off while failing)."""
        self._waiting.extend(entry.endpoint for entry in self._installed.values())
        self._installed.clear()
        self._legs.clear()
        self._hooked.clear()
        self._counts = {}
        with contextlib.suppress(FastPathError):
            await self._nft(rules.create_table(self.table))

    async def _nft(self, script: str) -> None:
        await run_command(["nft", "-f", "-"], script)

    async def _read_counters(self) -> None:
        if not self._installed:
            return
        text = await run_command(["nft", "-j", "list", "maps", "netdev"])
        self._counts, moved = await asyncio.to_thread(count_changes, text, self.table, self._counts)
        if not self._counts:
            raise FastPathError(f"nftables table netdev {self.table} is gone or was emptied")
        now = self._clock()
        for key, packets, size in moved:
            leg = self._legs.get(key)
            if leg is not None:
                entry, index = leg
                payload = size - packets * entry.header_bytes
                self._core.credit(entry.endpoint, index, packets, payload, now)

    async def _removals(self) -> str:
        """Rules to remove: of endpoints no longer served, and of endpoints a client moved
        away from (a version 1 re-bind), which go back to be installed at their new address
        in the same nft transaction."""
        script = []
        moved = {id(endpoint) for endpoint in self._moved}
        self._moved.clear()
        async for key, entry in in_turns(list(self._installed.items())):
            allocation = entry.endpoint.allocation
            served = self._core.endpoint(allocation.vni) is entry.endpoint
            if not served or id(entry.endpoint) in moved:
                if served:
                    self._newly_bound.append(entry.endpoint)
                script.append(
                    rules.remove_endpoint(
                        self.table, allocation.vni, allocation.lamport_id, entry.senders
                    )
                )
                del self._installed[key]
                for sender in entry.senders:
                    self._legs.pop((allocation.vni, *sender), None)
        return "".join(script)

    async def _installs(self) -> tuple[str, list[Installed]]:
        """Rules for endpoints bound since the last poll, and for those that waited: for room
        under ``max_endpoints``, or for the kernel after a failure."""
        bound = self._newly_bound[:]
        self._newly_bound.clear()
        if len(self._waiting) > self._prune_waiting_at:
            self._waiting = [e for e in self._waiting if self._core.endpoint(e.allocation.vni) is e]
            self._prune_waiting_at = max(self.max_endpoints, 2 * len(self._waiting))
        if self._waiting and len(self._installed) < self.max_endpoints:
            bound, self._waiting = self._waiting + bound, []
        wanted: list[tuple[Endpoint, tuple[str, int], tuple[str, int]]] = []
        async for endpoint in in_turns(bound):
            if self._core.endpoint(endpoint.allocation.vni) is not endpoint:
                continue
            if len(self._installed) + len(wanted) >= self.max_endpoints:
                self._waiting.append(endpoint)
                continue
            a, b = (client_address(client.addr) for client in endpoint.clients)
            if a is None or b is None or a == b or rules.family(a[0]) != rules.family(b[0]):
                self.not_installed += 1
                continue
            wanted.append((endpoint, a, b))
        if not wanted:
            return "", []
        try:
            routes = await self._routes({ip for _, a, b in wanted for ip in (a[0], b[0])})
        except FastPathError:
            self._waiting.extend(endpoint for endpoint, _, _ in wanted)
            raise
        script: list[str] = []
        fresh: list[Installed] = []
        async for endpoint, a, b in in_turns(wanted):
            if a[0] not in routes or b[0] not in routes:
                self.not_installed += 1
                continue
            for address in (a, b):
                script.append(self._hook(routes[address[0]].device))
            legs = (
                rules.Leg(sender=a, receiver=b, route=routes[b[0]]),
                rules.Leg(sender=b, receiver=a, route=routes[a[0]]),
            )
            allocation = endpoint.allocation
            script.append(
                rules.install_endpoint(
                    self.table, allocation.vni, allocation.lamport_id, self._port, legs
                )
            )
            fresh.append(Installed(endpoint, (a, b), rules.header_bytes(a[0])))
        return "".join(script), fresh

    def _record(self, entry: Installed) -> None:
        """Count an endpoint as the kernel's once its rules are in (not before: the metric
        and the counters must never claim rules that a failed or unfinished ``nft`` lacks)."""
        allocation = entry.endpoint.allocation
        self._installed[(allocation.vni, allocation.lamport_id)] = entry
        for index, sender in enumerate(entry.senders):
            self._legs[(allocation.vni, *sender)] = (entry, index)

    def _hook(self, device: str) -> str:
        """The script that hooks ``device``'s ingress, the first time it is needed."""
        if device in self._hooked:
            return ""
        chain = self._hooked[device] = f"in_{len(self._hooked)}"
        return rules.hook_device(self.table, chain, device, self._port, self._listen)

    async def _routes(self, ips: set[str]) -> dict[str, rules.Route]:
        """Routes to ``ips``; one that has none (unreachable) is left out."""
        lines = "".join(f"route get {ip}\n" for ip in sorted(ips))
        text = await run_command(["ip", "-j", "-force", "-batch", "-"], lines, check=False)
        return rules.parse_routes(text)
