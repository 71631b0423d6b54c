"""Where the tests find the project and its command, in one place."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RELAYFLEET = str(Path(sys.executable).parent / "relayfleet")
