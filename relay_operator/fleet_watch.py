"""``relayfleet status --watch``: the fleet redrawn in the terminal every interval.

Each pass gathers the fleet as ``relayfleet status`` does (relays and
RelayEndpoints) and reads each relay's ``/metrics``: through the API server's
pod proxy for a relay in a pod (so a kubeconfig is enough, with ``get`` on
``pods/proxy``), else at the address the relay registered. Rates are the
counters' differences between two passes over the time between them; a relay
whose ``/metrics`` cannot be read shows ``-`` and a note, and the view goes on.
Drawing is rich's (a Live display of one table), not escape codes of our own.
"""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from relay.resource.definition import PHASES

COUNTERS = {
    "relayfleet_relay_forwarded_packets": "packets",
    "relayfleet_relay_forwarded_bytes": "bytes",
    "relayfleet_relay_handshakes_completed": "handshakes",
    "relayfleet_relay_dropped_packets": "drops",
}
"""The relay's counters the view turns into rates (prometheus_client's family names)."""


def read_counters(text: str) -> dict[str, float]:
    """Totals of :data:`COUNTERS` (summed over labels) and the bound endpoints, from the text
    exposition of a relay's ``/metrics``."""
    from prometheus_client.parser import text_string_to_metric_families

    totals = dict.fromkeys(COUNTERS.values(), 0.0)
    totals["bound"] = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total") and sample.name[: -len("_total")] in COUNTERS:
                totals[COUNTERS[sample.name[: -len("_total")]]] += sample.value
            elif sample.name == "relayfleet_relay_endpoints" and sample.labels["state"] == "bound":
                totals["bound"] += sample.value
    return totals


class MetricsReader:
    """Reads a relay's ``/metrics``: through the pod proxy, or at its registered address."""

    def __init__(self, kubeconfig: str | None, timeout: float = 2.0) -> None:
        self._kubeconfig = kubeconfig
        self._timeout = timeout
        self._core: Any = None

    async def read(self, relay: dict[str, Any]) -> dict[str, float]:
        """The relay's counters; raises when they cannot be read."""
        address = relay.get("metricsAddress")
        if not address:
            raise LookupError("no metrics address registered")
        host, _, port = address.rpartition(":")
        if relay.get("pod"):
            text = await asyncio.to_thread(self._through_proxy, relay["pod"], int(port))
        else:
            text = await self._direct(_reachable_host(host.strip("[]"), relay), int(port))
        return read_counters(text)

    def _through_proxy(self, pod: str, port: int) -> str:
        from kubernetes import client

        from relay.resource.client import api_client

        if self._core is None:
            self._core = client.CoreV1Api(api_client(self._kubeconfig, retries=0))
        namespace, name = pod.split("/", 1)
        return self._core.connect_get_namespaced_pod_proxy_with_path(
            f"{name}:{port}", namespace, "metrics", _request_timeout=self._timeout
        )

    async def _direct(self, host: str, port: int) -> str:
        import aiohttp

        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"
        timeout = aiohttp.ClientTimeout(total=self._timeout)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as answer:
            answer.raise_for_status()
            return await answer.text()


def _reachable_host(host: str, relay: dict[str, Any]) -> str:
    """A listener on every address (0.0.0.0, ::) is read at the relay's first address."""
    try:
        unspecified = ipaddress.ip_address(host).is_unspecified
    except ValueError:
        return host
    if unspecified and relay.get("addrPorts"):
        return relay["addrPorts"][0].rpartition(":")[0].strip("[]")
    return "127.0.0.1" if unspecified else host


@dataclass
class Rates:
    """Per-second rates of each relay's counters between its last two samples."""

    _last: dict[str, tuple[float, dict[str, float]]] = field(default_factory=dict)

    def update(self, relay: str, at: float, counters: dict[str, float]) -> dict[str, float] | None:
        """The rates since the relay's previous sample (None at its first, or after a restart
        reset its counters)."""
        previous = self._last.get(relay)
        self._last[relay] = (at, counters)
        if previous is None or at <= previous[0]:
            return None
        elapsed = at - previous[0]
        rates = {k: (counters[k] - previous[1].get(k, 0.0)) / elapsed for k in COUNTERS.values()}
        return None if any(r < 0 for r in rates.values()) else rates


def _rate(rates: dict[str, float] | None, key: str, unit: str = "") -> str:
    if rates is None:
        return "-"
    value = rates[key]
    for scale, prefix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= scale:
            return f"{value / scale:.1f}{prefix}{unit}"
    return f"{value:.0f}{unit}"


def render(
    fleet: dict[str, Any],
    samples: dict[str, tuple[dict[str, float] | None, dict[str, float] | None, str | None]],
    interval: float,
) -> Group:
    """One frame: the relays with their rates, then the RelayEndpoints by phase.

    ``samples`` maps a relay's name to (its counters, its rates, why they are missing)."""
    title = (
        f"relay-fleet: {len(fleet['relays'])} relays (from {fleet.get('relaysFrom', '?')}), "
        f"every {interval:g}s, {time.strftime('%H:%M:%S')}"
    )
    table = Table(title=title, title_justify="left", expand=False)
    for column, justify in (
        ("RELAY", "left"), ("STATE", "left"), ("ENDPOINTS", "right"), ("BOUND", "right"),
        ("PACKETS/S", "right"), ("BYTES/S", "right"), ("HANDSHAKES/S", "right"),
        ("DROPS/S", "right"), ("HEARTBEAT", "right"),
    ):  # fmt: skip
        table.add_column(column, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    notes = []
    for relay in fleet["relays"]:
        counters, rates, problem = samples.get(relay["name"], (None, None, None))
        alive = relay["alive"]
        age = relay["heartbeatAgeSeconds"]
        table.add_row(
            relay["name"],
            Text("alive", style="green") if alive else Text("dead", style="bold red"),
            f"{relay['load']}/{relay['capacity']}",
            "-" if counters is None else f"{counters['bound']:.0f}",
            _rate(rates, "packets"),
            _rate(rates, "bytes", "B"),
            _rate(rates, "handshakes"),
            _rate(rates, "drops"),
            "-" if age is None else f"{age:.0f}s ago",
        )
        if problem and alive:
            notes.append(f"{relay['name']}: metrics unavailable ({problem})")
    if not fleet["relays"]:
        notes.append("no relay registered")
    endpoints = fleet["endpoints"]
    if "error" in endpoints:
        summary = Text(f"RelayEndpoints: unknown ({endpoints['error']})")
    else:
        phases = "  ".join(f"{p} {endpoints['byPhase'].get(p, 0)}" for p in PHASES)
        summary = Text(
            f"RelayEndpoints: {phases}  (total {endpoints['total']}, "
            f"{endpoints.get('fromTailnet', 0)} from a tailnet)"
        )
    return Group(table, summary, *(Text(note, style="yellow") for note in notes))


async def sample(
    fleet: dict[str, Any], reader: MetricsReader, rates: Rates, now: float
) -> dict[str, tuple[dict[str, float] | None, dict[str, float] | None, str | None]]:
    """Every live relay's counters and rates, read at once."""

    async def one(relay: dict[str, Any]):
        if not relay["alive"]:
            return None, None, "dead"
        try:
            counters = await reader.read(relay)
        except Exception as exc:
            return None, None, f"{type(exc).__name__}: {exc}".splitlines()[0][:80]
        return counters, rates.update(relay["name"], now, counters), None

    results = await asyncio.gather(*(one(r) for r in fleet["relays"]))
    return {r["name"]: result for r, result in zip(fleet["relays"], results, strict=True)}


async def watch(
    gather: Callable[[], Awaitable[dict[str, Any]]],
    reader: MetricsReader,
    interval: float,
    console: Console | None = None,
    passes: int | None = None,
) -> None:
    """Redraw the fleet every ``interval`` seconds, ``passes`` times (None: until cancelled).
    A pass that cannot gather the fleet shows why, and the next one tries again."""
    rates = Rates()
    with Live(console=console, auto_refresh=False) as live:
        done = 0
        while passes is None or done < passes:
            started = time.monotonic()
            try:
                fleet = await gather()
                frame: Any = render(fleet, await sample(fleet, reader, rates, started), interval)
            except Exception as exc:  # the API server or Redis may be away: say so, go on
                frame = Text(f"cannot read the fleet: {exc}".splitlines()[0], style="bold red")
            live.update(frame, refresh=True)
            done += 1
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
