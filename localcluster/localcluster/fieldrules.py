"""Field rules kube-apiserver applies on every write, which localcluster follows to the letter.

- `.status` sent on create is dropped when the type has the status subresource (custom resources:
  the apiextensions strategy resets it; the status subresource is the only way to write it).
- No new finalizers may be added to an object that is being deleted (422, `metadata.finalizers`).
- `metadata.generation` counts changes of the spec only: all but `metadata` and, when the status
  subresource is on, `.status`, compared AFTER defaulting (a PUT that omits a defaulted field is no
  change). Pods included; a binding (the scheduler's `spec.nodeName`) is not a spec update. Marking
  an object for deletion (the first `deletionTimestamp`) bumps it too, as `rest.BeforeDelete` does.

All pure: they return new data or raise `ApiError`.
"""

from __future__ import annotations

from typing import Any

from localcluster.errors import ApiError
from localcluster.resources import ResourceType


def on_create(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    """`obj` as the create strategy leaves it: no `.status` on a custom resource with the status
    subresource. Pure."""
    if rt.schema is not None and rt.has_status and "status" in obj:
        return {k: v for k, v in obj.items() if k != "status"}
    return obj


def check_finalizers(rt: ResourceType, old: dict[str, Any], new: dict[str, Any]) -> None:
    """422 when `new` adds finalizers to an object `old` that is already being deleted. Pure."""
    if not old["metadata"].get("deletionTimestamp"):
        return
    before = set(old["metadata"].get("finalizers") or [])
    added = [f for f in new["metadata"].get("finalizers") or [] if f not in before]
    if not added:
        return
    name = old["metadata"].get("name", "")
    listed = ", ".join(f'"{f}"' for f in added)
    message = (
        "Forbidden: no new finalizers can be added if the object is being deleted, "
        f"found new finalizers []string{{{listed}}}"
    )
    kind = f"{rt.kind}.{rt.group}" if rt.group else rt.kind
    raise ApiError(
        422,
        f'{kind} "{name}" is invalid: metadata.finalizers: {message}',
        details={
            "name": name,
            "group": rt.group,
            "kind": rt.kind,
            "causes": [{"reason": "FieldValueForbidden", "message": message, "field": "metadata.finalizers"}],
        },
    )


def generation(rt: ResourceType, old: dict[str, Any], new: dict[str, Any], *, subresource: str | None) -> int:
    """`metadata.generation` of `new` (already defaulted) replacing `old`. Pure."""
    current = int(old["metadata"].get("generation") or 1)
    if subresource in {"status", "binding"}:
        return current
    return current + (1 if _spec_of(rt, new) != _spec_of(rt, old) else 0)


def generation_on_delete(old: dict[str, Any]) -> int:
    """`metadata.generation` once `old` is marked for deletion: one more the first time. Pure."""
    current = int(old["metadata"].get("generation") or 0)
    first = not old["metadata"].get("deletionTimestamp")
    return current + 1 if first and current > 0 else current


def _spec_of(rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
    skip = {"metadata", "apiVersion", "kind"} | ({"status"} if rt.has_status else set())
    return {k: v for k, v in obj.items() if k not in skip}
