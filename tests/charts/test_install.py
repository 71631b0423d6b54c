"""`helm install` of charts/relay-fleet into a real kube-apiserver, and `helm uninstall`.

No kubelet runs, so no pod ever starts: the test checks that the API server
accepts every object (server-side validation, admission, RBAC's escalation
check on the ClusterRoles), that the CRDs are established, and that uninstall
removes everything but the CRDs.
"""

from __future__ import annotations

import json

from tests.charts.helm import CHART, helm
from tests.support.controlplane import ControlPlane

CRDS = ("relayendpoints.relayfleet.io", "clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev")
NAMESPACED = (
    "deployments,statefulsets,services,secrets,configmaps,serviceaccounts,poddisruptionbudgets,"
    "roles,rolebindings"
)


def _names(plane: ControlPlane, kinds: str, namespace: str | None, release: str) -> set[str]:
    scope = ["-n", namespace] if namespace else []
    out = plane.kubectl(
        "get", kinds, *scope, "-l", f"app.kubernetes.io/instance={release}", "-o", "json"
    ).stdout
    return {f"{o['kind']}/{o['metadata']['name']}" for o in json.loads(out)["items"]}


def test_install_and_uninstall(control_plane: ControlPlane, kube_namespace: str) -> None:
    release = "rf" + kube_namespace[-6:]
    kube = ["--kubeconfig", str(control_plane.kubeconfig), "--namespace", kube_namespace]
    installed = helm("install", release, str(CHART), *kube, "--timeout", "60s")
    assert "STATUS: deployed" in installed.stdout
    assert "kubectl get rep alice-bob" in installed.stdout  # NOTES.txt

    for crd in CRDS:
        control_plane.kubectl("wait", "--for=condition=Established", f"crd/{crd}", "--timeout=30s")
    full = f"{release}-relay-fleet"
    objects = _names(control_plane, NAMESPACED, kube_namespace, release)
    assert {
        f"Deployment/{full}-operator",
        f"StatefulSet/{full}-relay",
        f"StatefulSet/{full}-redis",
        f"Service/{full}-relay-0",
        f"Service/{full}-relay-1",
        f"Secret/{full}-relay-keys",
        f"Secret/{full}-redis",
        f"ServiceAccount/{full}-operator",
        f"ServiceAccount/{full}-relay",
        f"PodDisruptionBudget/{full}-relay",
    } <= objects
    cluster = _names(control_plane, "clusterroles,clusterrolebindings", None, release)
    assert cluster == {
        f"ClusterRole/{full}-operator",
        f"ClusterRole/{full}-relay",
        f"ClusterRoleBinding/{full}-operator",
        f"ClusterRoleBinding/{full}-relay",
    }
    # The service accounts can do what deploy/rbac.yaml grants, and no more.
    sa = f"system:serviceaccount:{kube_namespace}:{full}"
    can = lambda who, *what: control_plane.kubectl(  # noqa: E731
        "auth", "can-i", *what, f"--as={sa}-{who}", check=False
    ).stdout.strip()
    assert can("operator", "patch", "relayendpoints.relayfleet.io", "-A") == "yes"
    assert can("operator", "delete", "relayendpoints.relayfleet.io", "-A") == "no"
    assert can("relay", "list", "relayendpoints.relayfleet.io", "-A") == "yes"
    assert can("relay", "patch", "relayendpoints.relayfleet.io", "-A") == "no"

    # The allocation API is off by default: no token Secret.
    assert f"Secret/{full}-relay-api-token" not in objects
    assert "allocation API is off" in installed.stdout  # NOTES.txt

    # An upgrade keeps the generated Redis password and relay keys; turning the API on
    # generates its token, which the next upgrade keeps.
    def secret(name: str) -> dict[str, str]:
        out = control_plane.kubectl("get", "secret", name, "-n", kube_namespace, "-o", "json")
        return json.loads(out.stdout)["data"]

    before = secret(f"{full}-relay-keys"), secret(f"{full}-redis")
    upgraded = helm(
        "upgrade", release, str(CHART), *kube, "--set", "relays.replicas=3",
        "--set", "relays.api.enabled=true",
    )  # fmt: skip
    assert f"port-forward pod/{full}-relay-0" in upgraded.stdout  # NOTES.txt
    after = secret(f"{full}-relay-keys"), secret(f"{full}-redis")
    assert after[1] == before[1]
    assert {k: after[0][k] for k in before[0]} == before[0]
    assert len(after[0]) == 3
    token = secret(f"{full}-relay-api-token")
    assert set(token) == {"token"}
    helm("upgrade", release, str(CHART), *kube, "--reuse-values", "--set", "relays.logLevel=debug")
    assert secret(f"{full}-relay-api-token") == token
    assert secret(f"{full}-relay-keys") == after[0]

    # relays.tailnet: the API server accepts its objects (the pre-auth key's Secret is the
    # user's; no pod starts here to miss it), the relays may get, create and delete
    # RelayEndpoints in the release's namespace only, and an upgrade keeps their node keys.
    tailnet = helm(
        "upgrade", release, str(CHART), *kube, "--reuse-values",
        "--set", "relays.tailnet.enabled=true",
        "--set", "relays.tailnet.loginServer=https://headscale.example",
        "--set", "relays.tailnet.authKey.existingSecret=tailnet-authkey",
    )  # fmt: skip
    assert "get rep -l relayfleet.io/origin=tailnet" in tailnet.stdout  # NOTES.txt
    assert {
        f"Role/{full}-relay-tailnet",
        f"RoleBinding/{full}-relay-tailnet",
        f"Secret/{full}-relay-tailnet-keys",
    } <= _names(control_plane, NAMESPACED, kube_namespace, release)
    nodes = secret(f"{full}-relay-tailnet-keys")
    assert len(nodes) == 3
    for verb in ("get", "create", "delete"):
        what = (verb, "relayendpoints.relayfleet.io")
        assert can("relay", *what, "-n", kube_namespace) == "yes"
        assert can("relay", *what, "-n", "default") == "no"
        # the operator's own role: get, but neither create nor delete
        assert can("operator", *what, "-n", kube_namespace) == ("yes" if verb == "get" else "no")
    assert can("relay", "patch", "relayendpoints.relayfleet.io", "-n", kube_namespace) == "no"
    helm("upgrade", release, str(CHART), *kube, "--reuse-values", "--set", "relays.logLevel=info")
    assert secret(f"{full}-relay-tailnet-keys") == nodes

    helm("uninstall", release, *kube)
    assert _names(control_plane, NAMESPACED, kube_namespace, release) == set()
    assert _names(control_plane, "clusterroles,clusterrolebindings", None, release) == set()
    for crd in CRDS:
        control_plane.kubectl("get", f"crd/{crd}")
