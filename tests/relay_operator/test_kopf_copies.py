"""kopf's essence and patches from fewer copies: the same results as kopf's own."""

import copy

import kopf
import pytest

from relay.resource.definition import RELAY_LABEL
from relay_operator.handlers import registry
from relay_operator.kopf_copies import EssenceDiffBaseStorage, skip_copying_empty_patches
from relay_operator.main import PROGRESS_PREFIX

BODY = {
    "apiVersion": "relayfleet.io/v1alpha1",
    "kind": "RelayEndpoint",
    "metadata": {
        "name": "alice-bob",
        "namespace": "default",
        "uid": "uid-1",
        "generation": 2,
        "finalizers": ["relayfleet.io/free"],
        "labels": {RELAY_LABEL: "relay-1", "team": "a"},
        "annotations": {
            f"{PROGRESS_PREFIX}/last-handled-configuration": '{"spec": {}}',
            "relayfleet.io/reallocate": "1",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            "note": "kept",
        },
        "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {"f:relay": {}}}}],
    },
    "spec": {"discoKeys": ["discokey:a", "discokey:b"], "relay": "relay-1"},
    "status": {"phase": "Allocated", "vni": 7, "conditions": [{"type": "Ready"}]},
}


def storages() -> tuple[kopf.AnnotationsDiffBaseStorage, EssenceDiffBaseStorage]:
    arguments = {
        "prefix": PROGRESS_PREFIX,
        "key": "last-handled-configuration",
        "ignored_fields": [("metadata", "labels", RELAY_LABEL), ("status",)],
    }
    return kopf.AnnotationsDiffBaseStorage(**arguments), EssenceDiffBaseStorage(**arguments)


def handler_fields() -> list[tuple[str, ...]]:
    return [h.field for h in registry._changing.get_all_handlers() if h.field]


@pytest.mark.parametrize(
    "extra_fields",
    [
        None,
        "handlers",
        [("status", "vni")],
        [("metadata", "finalizers")],
        ["metadata.generation", "spec.relay"],
    ],
)
def test_the_essence_is_kopf_s_own(extra_fields: object) -> None:
    fields = handler_fields() if extra_fields == "handlers" else extra_fields
    theirs, ours = storages()
    body = copy.deepcopy(BODY)
    assert ours.build(body=kopf.Body(body), extra_fields=fields) == theirs.build(
        body=kopf.Body(copy.deepcopy(BODY)), extra_fields=fields
    )
    assert body == BODY  # not changed in place


def test_the_operator_s_change_handlers_watch_fields_the_essence_keeps() -> None:
    assert handler_fields()  # else the test above compares nothing of the handlers'
    assert all(f[0] == "spec" or f[:2] == ("metadata", "annotations") for f in handler_fields())


class Uncopyable:
    def __deepcopy__(self, memo: object) -> object:
        raise AssertionError("copied")


def test_an_empty_patch_has_no_operations_and_copies_nothing() -> None:
    skip_copying_empty_patches()
    skip_copying_empty_patches()  # idempotent
    assert kopf.Patch().as_json_patch({"spec": Uncopyable()}) == []


def test_a_patch_with_changes_still_has_its_operations() -> None:
    skip_copying_empty_patches()
    patch = kopf.Patch()
    patch.status["phase"] = "Bound"
    assert patch.as_json_patch({"status": {"phase": "Allocated"}}) == [
        {"op": "replace", "path": "/status/phase", "value": "Bound"}
    ]
