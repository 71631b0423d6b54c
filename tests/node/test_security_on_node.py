"""Another workload in the cluster, against the chart's defaults (docs/security.md).

Issue 16: before, any pod could ``POST /v0/relay/endpoint`` through the relays'
metrics Service and allocate behind the operator's back. Here a pod in another
namespace tries exactly that against every TCP port of every Service of the
release, and of every pod, by cluster DNS name and by address, and none of
them allocates.
"""

from __future__ import annotations

import json

import pytest

from relay.protocol.keys import DiscoPrivateKey
from tests.node.fleet import HelmFleet
from tests.support.local_cluster import LocalCluster, load_images
from tests.support.waiting import wait_until_sync

NAMESPACE = "relayfleet-security"
INTRUDER_NAMESPACE = "relayfleet-intruder"

# Run in the intruder pod: POST an allocation to each URL, print what answered.
PROBE = """
import json, sys, urllib.error, urllib.request
body = json.dumps({"DiscoKeys": sys.argv[1:3]}).encode()
results = {}
for url in sys.argv[3:]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=3) as response:
            results[url] = response.status
    except urllib.error.HTTPError as exc:
        results[url] = exc.code
    except OSError as exc:
        results[url] = type(exc).__name__
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def fleet(cluster: LocalCluster):
    fleet = HelmFleet(cluster, NAMESPACE)
    fleet.claim()
    fleet.install()
    yield fleet
    fleet.remove()
    cluster.kubectl("delete", "namespace", INTRUDER_NAMESPACE, "--ignore-not-found")


def _targets(fleet: HelmFleet) -> list[str]:
    urls = []
    for service in fleet.get("services")["items"]:
        name = service["metadata"]["name"]
        for port in service["spec"]["ports"]:
            if port.get("protocol", "TCP") == "TCP":
                host = f"{name}.{NAMESPACE}.svc.cluster.local"
                urls.append(f"http://{host}:{port['port']}/v0/relay/endpoint")
    for pod in fleet.get("pods")["items"]:
        ip = pod["status"]["podIP"]
        for container in pod["spec"]["containers"]:
            for port in container.get("ports", []):
                if port.get("protocol", "TCP") == "TCP":
                    urls.append(f"http://{ip}:{port['containerPort']}/v0/relay/endpoint")
    return urls


def test_no_service_of_the_chart_allocates_from_another_namespace(fleet: HelmFleet):
    targets = _targets(fleet)
    assert any("relay-metrics" in url for url in targets)
    keys = [str(DiscoPrivateKey.generate().public) for _ in range(2)]
    image = load_images()["relayfleet"]["ref"]
    cluster = fleet.cluster
    cluster.kubectl("create", "namespace", INTRUDER_NAMESPACE, check=False)
    cluster.kubectl(
        "-n", INTRUDER_NAMESPACE, "run", "intruder", f"--image={image}",
        "--image-pull-policy=Never", "--restart=Never", "--command", "--",
        "python3", "-c", PROBE, *keys, *targets,
    )  # fmt: skip

    def finished() -> str | None:
        pod = cluster.kubectl("-n", INTRUDER_NAMESPACE, "get", "pod", "intruder", "-o", "json")
        phase = json.loads(pod.stdout)["status"].get("phase")
        return phase if phase in ("Succeeded", "Failed") else None

    assert wait_until_sync(finished, "the intruder pod to finish", timeout=180) == "Succeeded"
    logs = cluster.kubectl("-n", INTRUDER_NAMESPACE, "logs", "intruder").stdout
    results = json.loads(logs.strip().splitlines()[-1])
    assert set(results) == set(targets)
    allocated = {url: code for url, code in results.items() if code in (200, 201)}
    assert not allocated
    # The metrics listener answered (so the probe did reach the relays) and refused.
    metrics = [code for url, code in results.items() if "relay-metrics" in url]
    assert metrics and all(code == 404 for code in metrics)
    rep = fleet.get("rep").get("items", [])
    assert rep == []
