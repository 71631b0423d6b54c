"""relays.tailnet: the relays join a tailnet (issue 18) with their node keys from a Secret,
the pre-auth key from the user's Secret, and a Role to make RelayEndpoints in the release's
namespace; without it, nothing of the tailnet is rendered."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml

from relay.tailnet.identity_file import load_or_create_identity
from tests.charts.helm import ROOT, by_kind, find, template
from tests.charts.test_render import VALUE_SETS

FULLNAME = "rf-relay-fleet"


def _relay(objects: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The relay pod's spec and its one container."""
    pod = find(objects, "StatefulSet", f"{FULLNAME}-relay")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return pod, container


def _mounted(pod: dict[str, Any], container: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume a file path of the container is in, asserting the mount is read-only."""
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    assert mount["readOnly"] is True, path
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    return volume


def _tailnet_env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container["env"] if e["name"].startswith("RELAYFLEET_TAILNET_")}


def test_default_render_has_nothing_of_the_tailnet() -> None:
    objects = template()
    pod, container = _relay(objects)
    assert _tailnet_env(container) == {}
    assert not [v for v in pod["volumes"] if v["name"].startswith("tailnet")]
    assert not [o for o in objects if "tailnet" in o["metadata"]["name"]]
    assert not by_kind(objects, "Role") and not by_kind(objects, "RoleBinding")


def test_relays_join_the_tailnet_with_their_own_keys() -> None:
    objects = template(VALUE_SETS["tailnet"])
    pod, container = _relay(objects)
    env = _tailnet_env(container)
    assert {name: e.get("value") for name, e in env.items()} == {
        "RELAYFLEET_TAILNET_LOGIN_SERVER": "https://headscale.example",
        "RELAYFLEET_TAILNET_AUTH_KEY_FILE": "/etc/relayfleet/tailnet-auth/authkey",
        "RELAYFLEET_TAILNET_KEY_FILE": (
            "/etc/relayfleet/tailnet-keys/$(RELAYFLEET_NAME).tailnet-key"
        ),
        "RELAYFLEET_TAILNET_NAMESPACE": "$(POD_NAMESPACE)",
    }
    # $(VAR) expands only from variables defined before it.
    names = [e["name"] for e in container["env"]]
    assert names.index("RELAYFLEET_NAME") < names.index("RELAYFLEET_TAILNET_KEY_FILE")
    assert names.index("POD_NAMESPACE") < names.index("RELAYFLEET_TAILNET_NAMESPACE")
    (namespace,) = [e for e in container["env"] if e["name"] == "POD_NAMESPACE"]
    assert namespace["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"

    auth = _mounted(pod, container, env["RELAYFLEET_TAILNET_AUTH_KEY_FILE"]["value"])
    assert auth["secret"]["secretName"] == "tailnet-authkey"
    assert auth["secret"]["items"] == [{"key": "authkey", "path": "authkey"}]
    keys = _mounted(pod, container, env["RELAYFLEET_TAILNET_KEY_FILE"]["value"])
    assert keys["secret"]["secretName"] == f"{FULLNAME}-relay-tailnet-keys"

    secret = find(objects, "Secret", f"{FULLNAME}-relay-tailnet-keys")
    assert set(secret["data"]) == {
        f"{FULLNAME}-relay-0.tailnet-key",
        f"{FULLNAME}-relay-1.tailnet-key",
    }
    # The pre-auth key is the user's: the chart makes no Secret for it.
    assert not [s for s in by_kind(objects, "Secret") if "auth" in s["metadata"]["name"]]


def test_generated_tailnet_keys_load(tmp_path: Path) -> None:
    objects = template({**VALUE_SETS["tailnet"], "relays.replicas": 3})
    secret = find(objects, "Secret", f"{FULLNAME}-relay-tailnet-keys")
    assert len(secret["data"]) == 3
    seen = set()
    for name, encoded in secret["data"].items():
        path = tmp_path / name
        path.write_bytes(base64.b64decode(encoded))
        identity, created = load_or_create_identity(path)
        assert created is False, name
        seen |= {
            str(identity.machine_key.public),
            str(identity.node_key.public),
            str(identity.disco_key.public),
        }
    assert len(seen) == 9  # every key of every relay its own


def test_every_tailnet_value_reaches_the_relay() -> None:
    objects = template(VALUE_SETS["tailnet-everything"])
    pod, container = _relay(objects)
    env = {name: e.get("value") for name, e in _tailnet_env(container).items()}
    assert env["RELAYFLEET_TAILNET_LOGIN_SERVER"] == "http://headscale.example:8080"
    assert env["RELAYFLEET_TAILNET_HOSTNAME"] == "eu1-$(RELAYFLEET_NAME)"
    assert env["RELAYFLEET_TAILNET_CA_FILE"] == "/etc/relayfleet/tailnet-ca/ca.crt"
    ca = _mounted(pod, container, env["RELAYFLEET_TAILNET_CA_FILE"])
    assert ca["configMap"] == {
        "name": "tailnet-ca",
        "items": [{"key": "root.pem", "path": "ca.crt"}],
    }
    auth = _mounted(pod, container, env["RELAYFLEET_TAILNET_AUTH_KEY_FILE"])
    assert auth["secret"]["items"] == [{"key": "key", "path": "authkey"}]
    keys = _mounted(pod, container, env["RELAYFLEET_TAILNET_KEY_FILE"])
    assert keys["secret"]["secretName"] == "tailnet-nodes"
    # The node keys are the user's: the chart generates none.
    assert not [o for o in by_kind(objects, "Secret") if "tailnet" in o["metadata"]["name"]]
    # The relays' NetworkPolicy leaves egress open: they reach the control server and DERP.
    policy = find(objects, "NetworkPolicy", f"{FULLNAME}-relay")
    assert "Egress" not in policy["spec"]["policyTypes"]


def test_the_relays_may_make_read_and_delete_relay_endpoints_in_the_release_namespace_only() -> (
    None
):
    source = {
        doc["metadata"]["name"]: doc["rules"]
        for doc in yaml.safe_load_all((ROOT / "deploy" / "rbac.yaml").read_text())
        if doc and doc["kind"] == "ClusterRole"
    }
    assert source["relayfleet-relay-tailnet"] == [
        {
            "apiGroups": ["relayfleet.io"],
            "resources": ["relayendpoints"],
            "verbs": ["get", "create", "delete"],
        }
    ]
    objects = template(VALUE_SETS["tailnet"])
    (role,) = by_kind(objects, "Role")
    assert (role["metadata"]["name"], role["metadata"]["namespace"]) == (
        f"{FULLNAME}-relay-tailnet",
        "fleet",
    )
    assert role["rules"] == source["relayfleet-relay-tailnet"]
    (binding,) = by_kind(objects, "RoleBinding")
    assert binding["metadata"]["namespace"] == "fleet"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": f"{FULLNAME}-relay-tailnet",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{FULLNAME}-relay", "namespace": "fleet"}
    ]
    # The relays' ClusterRole stays deploy/rbac.yaml's read-only one.
    relay_role = find(objects, "ClusterRole", f"{FULLNAME}-relay")
    assert relay_role["rules"] == source["relayfleet-relay"]
    assert {b["roleRef"]["name"] for b in by_kind(objects, "ClusterRoleBinding")} == {
        f"{FULLNAME}-relay",
        f"{FULLNAME}-operator",
    }
