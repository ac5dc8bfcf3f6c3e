"""Admission: what the API server does to an object before storing it.

`admit` applies a custom resource's structural schema (defaults, pruning, validation, CEL rules) and
the built-in kinds' defaults (Pod, Namespace, Service); `crd_types` reads the types a CRD serves.
Both are pure: they return new data or raise `ApiError` (422 with field causes), and touch no store.
`RuleWarnings` logs, once each, the CEL rules localcluster does not evaluate.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from localcluster import celrules, resources, schema
from localcluster.errors import ApiError
from localcluster.resources import ResourceType

log = logging.getLogger(__name__)


def admit(
    rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, *, validation_rules: bool
) -> dict[str, Any]:
    """`obj` with schema and kind defaults applied, or 422 listing every schema/rule violation.
    Pure. `old` is the stored object on an update (None on create)."""
    if rt.schema is not None:
        obj = schema.apply_defaults(rt.schema, obj)
        errors = schema.validate(rt.schema, obj)
        if validation_rules:
            errors += celrules.check(rt.schema, obj, old, skip_status=rt.has_status)
        if errors:
            name = obj["metadata"].get("name", "")
            summary = ", ".join(f"{e.field}: {e.message}" for e in errors)
            raise ApiError(
                422,
                f'{rt.kind}.{rt.group} "{name}" is invalid: {summary}',
                details={
                    "name": name,
                    "group": rt.group,
                    "kind": rt.kind,
                    "causes": [{"reason": e.reason, "message": e.message, "field": e.field} for e in errors],
                },
            )
    if rt.kind == "Pod":
        # defaults apply to every write (as decoding does on the real server); status only on create
        spec = obj.setdefault("spec", {})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("schedulerName", "default-scheduler")
        if old is None:
            obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
    elif rt.kind == "Namespace":
        obj.setdefault("status", {}).setdefault("phase", "Active")
        obj.setdefault("spec", {}).setdefault("finalizers", ["kubernetes"])
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    elif rt.kind == "Secret" and obj.get("stringData"):
        # stringData is write-only: the real server merges it into data (base64) and drops it
        data = dict(obj.get("data") or {})
        for key, value in obj.pop("stringData").items():
            data[key] = base64.b64encode(str(value).encode()).decode()
        obj["data"] = data
    elif rt.kind == "Service" and old is None:
        obj.setdefault("spec", {}).setdefault("clusterIP", "None")
    return obj


def crd_types(crd: dict[str, Any]) -> list[ResourceType]:
    """The types a CustomResourceDefinition serves, or 422 saying why it is invalid. Pure."""
    try:
        return resources.types_from_crd(crd)
    except resources.CRDError as exc:
        name = crd["metadata"].get("name", "")
        raise ApiError(
            422, f'CustomResourceDefinition.apiextensions.k8s.io "{name}" is invalid: {exc}'
        ) from exc


class RuleWarnings:
    """Logs each CRD validation rule that localcluster will not evaluate, once per CRD and rule."""

    def __init__(self) -> None:
        self._seen: set[tuple[str, str, str]] = set()

    def warn(self, crd_name: str, served: list[ResourceType]) -> None:
        """Log the rules of `served` that do not compile and were not logged before."""
        for served_type in served:
            for skipped in celrules.unsupported_rules(served_type.schema or {}):
                key = (crd_name, skipped.field, skipped.rule)
                if key not in self._seen:
                    self._seen.add(key)
                    log.warning(
                        "CRD %s %s: validation rule %r at %s is not evaluated by localcluster: %s",
                        crd_name,
                        served_type.version,
                        skipped.rule,
                        skipped.field,
                        skipped.reason,
                    )
