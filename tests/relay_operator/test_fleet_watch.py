"""The live view's pure parts: counters from /metrics text, rates, one frame."""

from __future__ import annotations

from prometheus_client import generate_latest
from rich.console import Console

from relay.protocol.core import RelayCore
from relay.protocol.keys import DiscoPrivateKey
from relay_operator.fleet_watch import Rates, read_counters, render

METRICS = """\
# TYPE relayfleet_relay_forwarded_packets counter
relayfleet_relay_forwarded_packets_total 1000.0
# TYPE relayfleet_relay_forwarded_bytes counter
relayfleet_relay_forwarded_bytes_total 200000.0
# TYPE relayfleet_relay_dropped_packets counter
relayfleet_relay_dropped_packets_total{reason="short"} 3.0
relayfleet_relay_dropped_packets_total{reason="data_from_unknown_source"} 4.0
# TYPE relayfleet_relay_handshakes_completed counter
relayfleet_relay_handshakes_completed_total{version="0"} 1.0
relayfleet_relay_handshakes_completed_total{version="1"} 5.0
# TYPE relayfleet_relay_endpoints gauge
relayfleet_relay_endpoints{state="allocated"} 2.0
relayfleet_relay_endpoints{state="bound"} 7.0
"""


def test_counters_are_summed_over_their_labels():
    assert read_counters(METRICS) == {
        "packets": 1000.0, "bytes": 200000.0, "handshakes": 6.0, "drops": 7.0, "bound": 7.0,
    }  # fmt: skip


def test_the_relays_own_metrics_have_every_counter_the_view_reads():
    """A renamed metric in relay/shells/metrics.py fails here."""
    from relay.shells.metrics import relay_registry

    class State:
        name = "r"
        core = RelayCore(DiscoPrivateKey.generate(), b"s" * 32)
        agent = None
        fast_path = None
        receive_errors = send_errors = gso_sends = trains_received = gro_sockets = 0
        allocations_refused: dict = {}  # noqa: RUF012
        api_errors: dict = {}  # noqa: RUF012

    text = generate_latest(relay_registry(State())).decode()
    names = {line.split()[0].split("{")[0] for line in text.splitlines() if line[:1] != "#"}
    for family in ("forwarded_packets", "forwarded_bytes", "handshakes_completed",
                   "dropped_packets"):  # fmt: skip
        assert f"relayfleet_relay_{family}_total" in names
    assert "relayfleet_relay_endpoints" in names


def test_rates_are_differences_over_time_and_a_restart_gives_none():
    rates = Rates()
    first = read_counters(METRICS)
    assert rates.update("r", 10.0, first) is None
    later = {**first, "packets": 1500.0, "bytes": 300000.0}
    assert rates.update("r", 12.0, later) == {
        "packets": 250.0, "bytes": 50000.0, "handshakes": 0.0, "drops": 0.0,
    }  # fmt: skip
    restarted = dict.fromkeys(first, 0.0)
    assert rates.update("r", 14.0, restarted) is None


def test_a_frame_shows_each_relay_its_state_and_rates_and_the_endpoints():
    fleet = {
        "relaysFrom": "kubernetes",
        "relays": [
            {
                "name": "relay-a",
                "alive": True,
                "load": 3,
                "capacity": 100,
                "heartbeatAgeSeconds": 1.0,
            },
            {
                "name": "relay-b",
                "alive": False,
                "load": 0,
                "capacity": 100,
                "heartbeatAgeSeconds": 90.0,
            },
        ],
        "endpoints": {"byPhase": {"Bound": 2, "Pending": 1}, "total": 3, "fromTailnet": 1},
    }
    counters = read_counters(METRICS)
    rates = {"packets": 12500.0, "bytes": 2.5e6, "handshakes": 2.0, "drops": 0.0}
    console = Console(width=120, record=True, color_system=None)
    console.print(render(fleet, {"relay-a": (counters, rates, None)}, 2.0))
    text = console.export_text()
    a = next(line for line in text.splitlines() if "relay-a" in line)
    assert "alive" in a and "3/100" in a and "12.5k" in a and "2.5MB" in a
    b = next(line for line in text.splitlines() if "relay-b" in line)
    assert "dead" in b and "90s ago" in b
    assert "Pending 1  Allocated 0  Bound 2  Expired 0  (total 3, 1 from a tailnet)" in text
