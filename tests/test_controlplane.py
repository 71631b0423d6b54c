"""Smoke tests proving the ``control_plane`` fixture is a real Kubernetes API server.

The operator's end-to-end tests rely on what a real one does and a mock would
not: the pinned release answering kubectl, CustomResourceDefinitions becoming
Established, OpenAPI and CEL validation refusing objects on the server,
status subresources, RBAC for least-privilege identities, and
service-account tokens.
"""

from __future__ import annotations

import json
import re
import subprocess
import uuid
from pathlib import Path

import pytest

from tests.support.controlplane import ControlPlane
from tests.support.waiting import wait_until_sync

GO_MOD = Path(__file__).resolve().parents[1] / "tools" / "controlplane" / "go.mod"
GROUP = "smoke.relayfleet.test"
CEL_MESSAGE = "spec.min must not exceed spec.max"


def pinned_kubernetes_version() -> str:
    match = re.search(r"^\s*k8s\.io/kubernetes (v\S+)$", GO_MOD.read_text(), re.MULTILINE)
    assert match, f"no k8s.io/kubernetes requirement in {GO_MOD}"
    return match.group(1)


def crd(plural: str) -> dict:
    """A namespaced CRD with a status subresource and a CEL rule across two spec fields."""
    kind = plural.capitalize().removesuffix("s")
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"plural": plural, "singular": plural[:-1], "kind": kind},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "required": ["min", "max"],
                                    "properties": {
                                        "min": {"type": "integer"},
                                        "max": {"type": "integer"},
                                    },
                                    "x-kubernetes-validations": [
                                        {"rule": "self.min <= self.max", "message": CEL_MESSAGE}
                                    ],
                                },
                                "status": {
                                    "type": "object",
                                    "properties": {"phase": {"type": "string"}},
                                },
                            },
                        }
                    },
                }
            ],
        },
    }


def custom_object(kind: str, name: str, namespace: str, lo: int, hi: int) -> dict:
    return {
        "apiVersion": f"{GROUP}/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"min": lo, "max": hi},
    }


@pytest.fixture(scope="module")
def widgets(control_plane: ControlPlane) -> dict:
    """The test CRD, applied and Established."""
    definition = crd(f"widgets{uuid.uuid4().hex[:6]}")
    control_plane.kubectl("apply", "-f", "-", input=json.dumps(definition))
    name = definition["metadata"]["name"]
    control_plane.kubectl(
        "wait", "--for=condition=Established", f"crd/{name}", "--timeout=30s", timeout=40
    )
    return definition


def apply_until_served(control_plane: ControlPlane, manifest: dict) -> None:
    """kubectl apply, retried only while discovery has not caught up with a new CRD."""

    def attempt() -> bool:
        result = control_plane.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
        if result.returncode == 0:
            return True
        if "no matches for kind" in result.stderr or "could not find" in result.stderr:
            return False
        raise AssertionError(f"kubectl apply failed: {result.stderr}")

    wait_until_sync(attempt, f"{manifest['kind']} to be served", timeout=30, interval=0.2)


def test_kubectl_version_talks_to_the_pinned_release(control_plane: ControlPlane) -> None:
    result = control_plane.kubectl("version", "-o", "json")
    server = json.loads(result.stdout)["serverVersion"]
    assert server["gitVersion"] == pinned_kubernetes_version()
    assert (server["major"], server["minor"]) == tuple(server["gitVersion"][1:].split(".")[:2])
    assert control_plane.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"


def test_crd_with_cel_rule_validates_on_the_server(
    control_plane: ControlPlane, widgets: dict, kube_namespace: str
) -> None:
    kind = widgets["spec"]["names"]["kind"]
    plural = widgets["spec"]["names"]["plural"]
    established = control_plane.kubectl(
        "get", f"crd/{widgets['metadata']['name']}", "-o", "json"
    ).stdout
    conditions = {c["type"]: c["status"] for c in json.loads(established)["status"]["conditions"]}
    assert conditions["Established"] == "True"

    apply_until_served(control_plane, custom_object(kind, "good", kube_namespace, 1, 2))
    stored = control_plane.kubectl("get", plural, "good", "-n", kube_namespace, "-o", "json")
    assert json.loads(stored.stdout)["spec"] == {"min": 1, "max": 2}

    # --validate=false: kubectl checks nothing itself; the refusal is the server's.
    bad = custom_object(kind, "bad", kube_namespace, 5, 1)
    refused = control_plane.kubectl(
        "apply", "--validate=false", "-f", "-", input=json.dumps(bad), check=False
    )
    assert refused.returncode != 0
    assert CEL_MESSAGE in refused.stderr
    status, body = control_plane.request(
        "POST", f"/apis/{GROUP}/v1/namespaces/{kube_namespace}/{plural}", bad
    )
    assert status == 422
    details = json.loads(body)
    assert details["reason"] == "Invalid"
    assert CEL_MESSAGE in details["message"]
    assert any(cause.get("field") == "spec" for cause in details["details"]["causes"])
    missing = control_plane.kubectl(
        "get", plural, "bad", "-n", kube_namespace, "--ignore-not-found", "-o", "name"
    )
    assert missing.stdout == ""

    schema_bad = custom_object(kind, "typo", kube_namespace, 1, 2)
    schema_bad["spec"]["max"] = "two"
    status, body = control_plane.request(
        "POST", f"/apis/{GROUP}/v1/namespaces/{kube_namespace}/{plural}", schema_bad
    )
    assert status == 422
    assert "spec.max" in json.loads(body)["message"]


def test_status_is_a_subresource(
    control_plane: ControlPlane, widgets: dict, kube_namespace: str
) -> None:
    kind = widgets["spec"]["names"]["kind"]
    plural = widgets["spec"]["names"]["plural"]
    apply_until_served(control_plane, custom_object(kind, "w", kube_namespace, 0, 0))
    path = f"/apis/{GROUP}/v1/namespaces/{kube_namespace}/{plural}/w"
    control_plane.kubectl(
        "patch", plural, "w", "-n", kube_namespace, "--type=merge",
        "-p", '{"status": {"phase": "ignored"}}',
    )  # fmt: skip
    _, body = control_plane.request("GET", path)
    assert "status" not in json.loads(body)
    control_plane.kubectl(
        "patch", plural, "w", "-n", kube_namespace, "--subresource=status", "--type=merge",
        "-p", '{"status": {"phase": "Ready"}}',
    )  # fmt: skip
    _, body = control_plane.request("GET", path)
    assert json.loads(body)["status"] == {"phase": "Ready"}


def test_rbac_is_enforced_for_a_minted_user(
    control_plane: ControlPlane, widgets: dict, kube_namespace: str
) -> None:
    kind = widgets["spec"]["names"]["kind"]
    plural = widgets["spec"]["names"]["plural"]
    apply_until_served(control_plane, custom_object(kind, "w", kube_namespace, 1, 1))
    user = f"viewer-{uuid.uuid4().hex[:6]}"
    kubeconfig = control_plane.kubeconfig_for_user(user, ["relayfleet:smoke"])

    whoami = json.loads(
        control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout
    )
    assert whoami["status"]["userInfo"]["username"] == user
    assert "relayfleet:smoke" in whoami["status"]["userInfo"]["groups"]

    def get_widget() -> subprocess.CompletedProcess[str]:
        return control_plane.kubectl(
            "get", plural, "w", "-n", kube_namespace, "-o", "name",
            kubeconfig=kubeconfig, check=False,
        )  # fmt: skip

    denied = get_widget()
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()
    assert user in denied.stderr

    control_plane.kubectl(
        "create", "role", "widget-getter", "-n", kube_namespace,
        "--verb=get", f"--resource={plural}.{GROUP}",
    )  # fmt: skip
    control_plane.kubectl(
        "create", "rolebinding", "widget-getter", "-n", kube_namespace,
        "--role=widget-getter", f"--user={user}",
    )  # fmt: skip
    granted = wait_until_sync(
        lambda: (r := get_widget()).returncode == 0 and r,
        "the RoleBinding to take effect",
        timeout=20,
    )
    assert granted.stdout.strip() == f"{plural}.{GROUP}/w"

    listing = control_plane.kubectl(
        "get", plural, "-n", kube_namespace, kubeconfig=kubeconfig, check=False
    )
    assert listing.returncode != 0 and "forbidden" in listing.stderr.lower()
    elsewhere = control_plane.kubectl(
        "get", plural, "w", "-n", "default", kubeconfig=kubeconfig, check=False
    )
    assert elsewhere.returncode != 0 and "forbidden" in elsewhere.stderr.lower()


def test_service_account_token_authenticates(
    control_plane: ControlPlane, kube_namespace: str
) -> None:
    control_plane.kubectl("create", "serviceaccount", "relay", "-n", kube_namespace)
    kubeconfig = control_plane.kubeconfig_for_service_account(kube_namespace, "relay")
    whoami = json.loads(
        control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout
    )
    user = whoami["status"]["userInfo"]
    assert user["username"] == f"system:serviceaccount:{kube_namespace}:relay"
    assert f"system:serviceaccounts:{kube_namespace}" in user["groups"]
    denied = control_plane.kubectl("get", "configmaps", kubeconfig=kubeconfig, check=False)
    assert "forbidden" in denied.stderr.lower()


def test_static_admin_token(control_plane: ControlPlane, tmp_path: Path) -> None:
    kubeconfig = control_plane.kubeconfig_for_token(
        control_plane.admin_token, "admin-token", tmp_path / "kubeconfig"
    )
    namespaces = control_plane.kubectl("get", "namespaces", "-o", "name", kubeconfig=kubeconfig)
    assert "namespace/default" in namespaces.stdout.split()
