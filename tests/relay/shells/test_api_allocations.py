"""``--api-allocations``: a relay of a Kubernetes fleet refuses allocations through its API.

In a fleet the operator owns the store's allocations, each belonging to a
RelayEndpoint; one made through a relay's API would belong to none. So
``auto`` (the default) allocates only where the relay does not report to
Kubernetes. The decision is tested on the configuration as ``relayfleet
relay`` makes it, then on real relays over a real redis-server, given a
kubeconfig that names an API server nobody runs (the relay only reports with
it, and those reports fail and are logged).
"""

from __future__ import annotations

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from relay.cli import build_parser
from relay.config import RelayConfig
from relay.flags import from_args
from relay.protocol.keys import DiscoPrivateKey
from relay.store.redis import RedisStore
from tests.relay.relay_process import RelayProcess
from tests.support.ports import free_port

FLEET_REFUSAL = (
    "this relay serves a Kubernetes fleet: allocate with a RelayEndpoint (kubectl apply), "
    "or start it with --api-allocations on\n"
)
REDIS = ("--store", "redis://127.0.0.1:6379")

# The relay config must not see this host's (or a pod's) service account token.
pytestmark = pytest.mark.usefixtures("pod_token")


def relay_config(*args: str, **environ: str) -> RelayConfig:
    return from_args(RelayConfig, build_parser(environ).parse_args(["relay", *args]))


def new_keys() -> list[str]:
    return [str(DiscoPrivateKey.generate().public) for _ in range(2)]


@pytest.fixture
def kubeconfig(tmp_path):
    """A kubeconfig naming an API server on a loopback port nobody listens on."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        f"""apiVersion: v1
kind: Config
clusters:
- name: nowhere
  cluster: {{server: "https://127.0.0.1:{free_port()}", insecure-skip-tls-verify: true}}
users:
- name: nobody
  user: {{token: not-a-token}}
contexts:
- name: nowhere
  context: {{cluster: nowhere, user: nobody}}
current-context: nowhere
"""
    )
    return path


# -- the decision ---------------------------------------------------------------------------


def test_auto_allocates_unless_the_relay_reports_to_kubernetes(kubeconfig, pod_token):
    assert relay_config().api_allocations == "auto"
    assert relay_config().allocates_through_api()
    assert relay_config(*REDIS).allocates_through_api()
    assert relay_config("--kubeconfig", str(kubeconfig)).allocates_through_api()
    fleet = relay_config(*REDIS, KUBECONFIG=str(kubeconfig))
    assert fleet.reports_status() and not fleet.allocates_through_api()
    reporting_off = relay_config(*REDIS, "--report-status", "off", KUBECONFIG=str(kubeconfig))
    assert reporting_off.allocates_through_api()
    pod_token.parent.mkdir()
    pod_token.write_text("token")
    assert not relay_config(*REDIS).allocates_through_api()


def test_on_and_off_are_what_they_say_and_come_from_the_environment(kubeconfig):
    fleet = ("--kubeconfig", str(kubeconfig), *REDIS)
    assert relay_config(*fleet, "--api-allocations", "on").allocates_through_api()
    assert not relay_config("--api-allocations", "off").allocates_through_api()
    assert relay_config(*fleet, RELAYFLEET_API_ALLOCATIONS="on").allocates_through_api()
    assert not relay_config(RELAYFLEET_API_ALLOCATIONS="off").allocates_through_api()


def test_the_listener_and_limit_flags_and_their_defaults():
    config = relay_config()
    assert config.api_listen == ("127.0.0.1", 8080)
    assert config.metrics_listen is None
    assert (config.api_rate, config.api_burst, config.api_max_per_pair) == (10, 20, 4)
    assert relay_config("--api-listen", "off").api_listen is None
    assert relay_config("--api-listen", "OFF").api_listen is None
    assert relay_config(RELAYFLEET_API_LISTEN="off").api_listen is None
    split = relay_config(
        RELAYFLEET_METRICS_LISTEN="0.0.0.0:9090",
        RELAYFLEET_API_RATE="2",
        RELAYFLEET_API_BURST="3",
        RELAYFLEET_API_MAX_PER_PAIR="1",
    )
    assert split.metrics_listen == ("0.0.0.0", 9090)
    assert (split.api_rate, split.api_burst, split.api_max_per_pair) == (2, 3, 1)


@pytest.mark.parametrize(
    "args",
    [
        ("--api-listen", "nowhere"),
        ("--metrics-listen", "off"),
        ("--api-allocations", "maybe"),
        ("--api-rate", "0"),
        ("--api-max-per-pair", "0"),
    ],
)
def test_bad_values_are_refused(args, capsys):
    with pytest.raises(SystemExit):
        relay_config(*args)
    assert args[0] in capsys.readouterr().err


# -- over real relays and a real redis-server ---------------------------------------------


async def refused(relay: RelayProcess) -> dict[str, float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{relay.ready['api']}/metrics") as response,
    ):
        text = await response.text()
    return {
        sample.labels.get("reason", sample.labels.get("code")): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if family.name in ("relayfleet_relay_allocations_refused", "relayfleet_relay_api_errors")
    }


async def endpoint_table(relay: RelayProcess) -> tuple[int, dict]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://{relay.ready['api']}/v0/relay/endpoints") as response,
    ):
        return response.status, await response.json()


async def test_a_relay_of_a_fleet_refuses_api_allocations_with_403_by_default(
    redis_server, kubeconfig
):
    relay = await RelayProcess.start(
        "--store", redis_server.url(), "--name", "relay-k", "--kubeconfig", str(kubeconfig),
    )  # fmt: skip
    store = RedisStore.from_url(redis_server.url())
    try:
        status, text = await relay.allocate(new_keys())
        assert (status, text) == (403, FLEET_REFUSAL)
        assert (await endpoint_table(relay))[0] == 200
        counts = await refused(relay)
        assert counts["allocations_off"] == 1 and counts["403"] == 1
        assert await store.allocations("relay-k") == []
    finally:
        await store.close()
        code, log = await relay.stop()
    assert code == 0
    assert "(allocations off)" in log


async def test_a_relay_of_a_fleet_started_with_api_allocations_on_allocates(
    redis_server, kubeconfig
):
    relay = await RelayProcess.start(
        "--store", redis_server.url(), "--name", "relay-k", "--kubeconfig", str(kubeconfig),
        "--api-allocations", "on",
    )  # fmt: skip
    store = RedisStore.from_url(redis_server.url())
    try:
        status, body = await relay.allocate(new_keys())
        assert status == 200, body
        (allocation,) = await store.allocations("relay-k")
        assert (allocation.vni, allocation.lamport_id) == (body["VNI"], body["LamportID"])
    finally:
        await store.close()
        code, _ = await relay.stop()
    assert code == 0


async def test_relays_sharing_redis_without_reporting_to_kubernetes_allocate_by_default(
    redis_server,
):
    """Relays sharing a Redis with no operator (README, "State in Redis"); reporting is off
    by flag so that the test means the same in a pod, whose service account turns it on."""
    relay = await RelayProcess.start(
        "--store", redis_server.url(), "--name", "relay-r", "--report-status", "off"
    )
    try:
        status, body = await relay.allocate(new_keys())
        assert status == 200, body
    finally:
        code, _ = await relay.stop()
    assert code == 0


async def test_api_allocations_off_refuses_on_a_standalone_relay_too():
    relay = await RelayProcess.start("--api-allocations", "off")
    try:
        status, text = await relay.allocate(new_keys())
        assert (status, text) == (
            403,
            "this relay takes no allocations through its API (--api-allocations off)\n",
        )
        assert (await endpoint_table(relay))[0] == 200
    finally:
        code, _ = await relay.stop()
    assert code == 0
