"""``relayfleet status --watch`` in a real terminal (tmux), with a kubeconfig alone."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.relay.relay_process import RelayProcess
from tests.relay_operator.e2e_support import bind_and_relay, endpoint_yaml, new_keys, phase_is
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

RELAYFLEET = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "relayfleet"
WIDTH, HEIGHT = 132, 30
COLUMNS = ["RELAY", "STATE", "ENDPOINTS", "BOUND", "PACKETS/S", "BYTES/S", "HANDSHAKES/S",
           "DROPS/S", "HEARTBEAT"]  # fmt: skip


class Tmux:
    """A tmux server of the test's own, one session of a fixed size running ``command``."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        if shutil.which("tmux") is None:
            raise RuntimeError("tmux not found: scripts/build-test-deps installs it")
        self.socket = f"relayfleet-test-{uuid.uuid4().hex[:8]}"
        exports = " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())
        # COLUMNS and LINES unset: the program asks the terminal for its size.
        script = (
            f"env -u COLUMNS -u LINES {exports} {shlex.join(command)}; echo EXITED $?; sleep 600"
        )
        self._tmux("new-session", "-d", "-s", "watch", "-x", str(WIDTH), "-y", str(HEIGHT), script)

    def _tmux(self, *args: str) -> str:
        return subprocess.run(
            ["tmux", "-L", self.socket, *args], capture_output=True, text=True, timeout=30,
            check=True,
        ).stdout  # fmt: skip

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-t", "watch")

    async def wait_for(self, condition, what: str):
        """``wait_until`` on the screen; the screen is in the error when it times out."""
        try:
            return await wait_until(lambda: condition(self.screen()), what)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; the screen:\n{self.screen()}") from None

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.socket, "kill-server"], capture_output=True, timeout=30)


def row(screen: str, name: str) -> list[str] | None:
    for line in screen.splitlines():
        cells = line.replace("│", " ").replace("┃", " ").split()
        if cells and cells[0] == name:
            return cells
    return None


def both_relays(screen: str) -> str | None:
    return screen if row(screen, "watch-a") and row(screen, "watch-b") else None


async def start_relay(cp, redis_server, name: str) -> RelayProcess:
    return await RelayProcess.start(
        "--store", redis_server.url(), "--name", name, "--addr", "127.0.0.1",
        "--heartbeat-interval", "300ms", "--kubeconfig", str(cp.kubeconfig),
        "--report-interval", "200ms",
    )  # fmt: skip


async def test_the_watch_redraws_the_fleet_and_shows_a_relay_dying(
    crd, redis_server, start_operator, kube_namespace, tmp_path
):
    cp = crd
    start_operator("operator", "--standalone", "--relay-object-refresh", "1s")
    relays = [await start_relay(cp, redis_server, name) for name in ("watch-a", "watch-b")]
    keys = new_keys()
    yaml = endpoint_yaml("watched", [str(k.public) for k in keys], relay="watch-a")
    cp.kubectl("-n", kube_namespace, "apply", "-f", "-", input=yaml)
    status = (await wait_until(phase_is(cp, kube_namespace, "watched", "Allocated"), "allocated"))[
        "status"
    ]
    await bind_and_relay(status, keys)

    env = {"KUBECONFIG": str(cp.kubeconfig), "PATH": os.environ["PATH"], "TERM": "xterm-256color"}
    tmux = Tmux([str(RELAYFLEET), "status", "--watch", "--interval", "500ms"], env)
    try:
        screen = await tmux.wait_for(both_relays, "both relays on the screen")
        header = next(line for line in screen.splitlines() if "RELAY" in line)
        positions = [header.index(column) for column in COLUMNS]
        assert positions == sorted(positions), header
        assert all(len(line) <= WIDTH for line in screen.splitlines())
        assert "RelayEndpoints:" in screen
        alive = await tmux.wait_for(
            # The load comes from the relay's workers within a second or two.
            lambda screen: (r := row(screen, "watch-a")) and r[4] != "-" and r[2][0] != "0" and r,
            "watch-a's rates read from its /metrics, and its endpoint counted",
        )
        assert alive[1] == "alive"
        assert alive[2] == "1/16777215"
        assert alive[3] == "1"  # bound endpoints, as the relay's own gauge counts them

        await relays[0].stop()
        await tmux.wait_for(
            lambda screen: (r := row(screen, "watch-a")) and r[1] == "dead", "watch-a shown dead"
        )
        screen = tmux.screen()
        assert row(screen, "watch-b")[1] == "alive"
        assert "Traceback" not in screen and "EXITED" not in screen
    finally:
        tmux.close()
        for relay in relays:
            await relay.stop()
