"""The benches' C programs, kept as ``.c`` files here and built with gcc when a bench runs.

* ``forwarder.c``: the minimal user-space relay (recvmmsg/sendmmsg, batches of 64,
  source checked) that bench.dataplane and bench.fastpath measure beside ours;
* ``forwarder_gso.c``: the same with UDP GRO on receive and UDP GSO on send, batched as
  tailscale.com v1.102.5 batches (bench.dataplane's "C GRO/GSO"); both take their
  arguments and open their socket with ``forwarder_socket.h``;
* ``sender.c``: bench.fastpath's load, paced or unpaced sendmmsg;
* ``spinner.c``: bench.fastpath's meter of a CPU's idle time.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

SOURCES = Path(__file__).resolve().parent


def build_program(name: str, directory: str | Path) -> Path:
    """Compile ``name``.c with ``gcc -O2 -Wall`` into ``directory``; the executable's path."""
    binary = Path(directory) / name
    subprocess.run(
        ["gcc", "-O2", "-Wall", "-o", str(binary), str(SOURCES / f"{name}.c")], check=True
    )
    return binary
