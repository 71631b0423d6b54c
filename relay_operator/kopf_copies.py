"""Two of kopf's deep copies of a whole resource, cut to what kopf then uses.

On every watch event kopf builds the resource's essence, what its change
handlers compare against the last handled one: it deep-copies the whole body
and then throws away the metadata (managedFields included) and the status. And
on every patch it writes, it deep-copies the whole body once more to turn the
patch's leftover transformations into JSON-patch operations, before it looks
whether there are any (there never are for ours). In a burst of RelayEndpoints
the two were about a tenth of the operator's CPU (docs/performance.md, "The
operator at 10 000 RelayEndpoints").

:class:`EssenceDiffBaseStorage` is kopf's annotation diff-base storage, given a
body without the parts the essence drops: the same essence, from a copy of the
spec, the labels and the annotations only. :func:`skip_copying_empty_patches`
has kopf answer "no operations" for a patch with nothing in it without copying
the body first, as it answers after.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import kopf

TRACKED_METADATA = ("labels", "annotations")
"""The metadata kopf keeps in a resource's essence; the rest of it and the status it drops."""
TRACKED_PATHS = [(name,) for name in TRACKED_METADATA]


def _path(field: Any) -> tuple[str, ...]:
    return tuple(field.split(".")) if isinstance(field, str) else tuple(field)


def essential_parts(body: Mapping[str, Any], extra_fields: Iterable[Any] | None) -> dict[str, Any]:
    """The parts of ``body`` kopf's essence is built from: everything but the status and the
    metadata it drops, unless a change handler watches a field there (``extra_fields``)."""
    fields = [_path(field) for field in extra_fields or ()]
    parts = {key: value for key, value in body.items() if key not in ("metadata", "status")}
    metadata = body.get("metadata")
    if metadata is not None:
        watched = any(f[0] == "metadata" and f[1:2] not in TRACKED_PATHS for f in fields if f)
        parts["metadata"] = (
            metadata if watched else {k: metadata[k] for k in TRACKED_METADATA if k in metadata}
        )
    if "status" in body and any(f[:1] == ("status",) for f in fields):
        parts["status"] = body["status"]
    return parts


class EssenceDiffBaseStorage(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff-base storage, building the same essence from fewer copies."""

    def build(self, *, body: kopf.Body, extra_fields: Iterable[Any] | None = None) -> Any:
        parts = kopf.Body(essential_parts(body, extra_fields))
        return super().build(body=parts, extra_fields=extra_fields)


def skip_copying_empty_patches() -> None:
    """Have kopf's ``Patch.as_json_patch`` answer ``[]`` for an empty patch before it copies the
    body (kopf 1.45 copies first, then answers ``[]``). Idempotent."""
    from kopf._cogs.structs import patches

    original = patches.Patch.as_json_patch
    if getattr(original, "skips_empty", False):
        return

    def as_json_patch(self: Any, body: Any = None) -> Any:
        return [] if not self else original(self, body)

    as_json_patch.skips_empty = True  # type: ignore[attr-defined]
    patches.Patch.as_json_patch = as_json_patch  # type: ignore[method-assign]
