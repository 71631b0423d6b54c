import pytest

from tests.conformance.servers import ServerProcess, ensure_go_helpers


@pytest.fixture(scope="session")
def go_helpers():
    ensure_go_helpers()


@pytest.fixture(params=["ours", "reference"])
def server(request, go_helpers):
    """A fresh server process of each kind, on loopback."""
    process = ServerProcess.start(request.param)
    yield process
    process.stop()
