import pytest

from tests.relay import udp_harness


@pytest.fixture(params=["127.0.0.1", "::1"], ids=["ipv4", "ipv6"])
def host(request):
    return request.param


@pytest.fixture
def relay_settings():
    """Settings of the ``relay`` fixture beyond its defaults; a test module overrides it."""
    return {}


@pytest.fixture
async def relay(host, relay_settings):
    """A relay on loopback with short lifetimes, in this test's event loop."""
    h = await udp_harness.harness(
        host, bind_lifetime=30.0, steady_state_lifetime=300.0, **relay_settings
    )
    yield h
    await udp_harness.close(h)


@pytest.fixture
async def relay_factory():
    started = []

    async def start(host="127.0.0.1", **config):
        h = await udp_harness.harness(host, **config)
        started.append(h)
        return h

    yield start
    for h in started:
        await udp_harness.close(h)


@pytest.fixture
def pod_token(tmp_path, monkeypatch):
    """Where the relay config looks for a pod's service account token: absent unless a test
    writes it (so that tests mean the same on a host and in a pod)."""
    token = tmp_path / "serviceaccount" / "token"
    monkeypatch.setattr("relay.config.SERVICE_ACCOUNT_TOKEN", token)
    return token
