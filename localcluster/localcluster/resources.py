"""The resource types the emulator serves: the built-in kinds and those CRDs add. Pure: no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")


@dataclass(frozen=True, slots=True)
class ResourceType:
    """One served resource of one group/version."""

    group: str
    """API group; `""` for the core group."""
    version: str
    """API version within the group, e.g. `v1`."""
    plural: str
    """The URL segment, e.g. `pods`."""
    kind: str
    """The object kind, e.g. `Pod`."""
    namespaced: bool
    """Whether objects live in a namespace."""
    short_names: tuple[str, ...] = ()
    """kubectl aliases, e.g. `po`."""
    subresources: tuple[str, ...] = ()
    """Served subresources, e.g. `status`, `log`, `scale`."""
    categories: tuple[str, ...] = ()
    """kubectl categories, e.g. `all`."""
    schema: dict[str, Any] | None = field(default=None, compare=False, hash=False)
    """A CRD version's openAPIV3Schema; None for built-in kinds (not validated)."""
    printer_columns: tuple[dict[str, Any], ...] = field(default=(), compare=False, hash=False)
    """A CRD version's additionalPrinterColumns."""

    @property
    def api_version(self) -> str:
        """`v1` for the core group, otherwise `group/version`."""
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        """The lower-case kind, as discovery reports it."""
        return self.kind.lower()

    @property
    def storage_key(self) -> tuple[str, str]:
        """Objects are stored per (group, plural): every served version sees the same objects."""
        return (self.group, self.plural)

    @property
    def has_status(self) -> bool:
        """Whether writes to the main resource leave `.status` alone."""
        return "status" in self.subresources


def _rt(
    group: str, version: str, plural: str, kind: str, namespaced: bool, *extra: Any, **kw: Any
) -> ResourceType:
    return ResourceType(group, version, plural, kind, namespaced, *extra, **kw)


BUILTIN_TYPES: tuple[ResourceType, ...] = (
    _rt("", "v1", "pods", "Pod", True, ("po",), ("status", "log", "eviction", "binding"), ("all",)),
    _rt("", "v1", "nodes", "Node", False, ("no",), ("status",)),
    _rt("", "v1", "services", "Service", True, ("svc",), ("status",), ("all",)),
    _rt("", "v1", "endpoints", "Endpoints", True, ("ep",)),
    _rt("", "v1", "configmaps", "ConfigMap", True, ("cm",)),
    _rt("", "v1", "secrets", "Secret", True),
    _rt("", "v1", "events", "Event", True, ("ev",)),
    _rt("", "v1", "namespaces", "Namespace", False, ("ns",), ("status",)),
    _rt("", "v1", "serviceaccounts", "ServiceAccount", True, ("sa",), ("token",)),
    _rt("", "v1", "persistentvolumeclaims", "PersistentVolumeClaim", True, ("pvc",), ("status",)),
    _rt("events.k8s.io", "v1", "events", "Event", True, ("ev",)),
    _rt("coordination.k8s.io", "v1", "leases", "Lease", True),
    _rt("apps", "v1", "deployments", "Deployment", True, ("deploy",), ("status", "scale"), ("all",)),
    _rt("apps", "v1", "statefulsets", "StatefulSet", True, ("sts",), ("status", "scale"), ("all",)),
    _rt("apps", "v1", "daemonsets", "DaemonSet", True, ("ds",), ("status",), ("all",)),
    _rt("policy", "v1", "poddisruptionbudgets", "PodDisruptionBudget", True, ("pdb",), ("status",)),
    _rt("rbac.authorization.k8s.io", "v1", "roles", "Role", True),
    _rt("rbac.authorization.k8s.io", "v1", "rolebindings", "RoleBinding", True),
    _rt("rbac.authorization.k8s.io", "v1", "clusterroles", "ClusterRole", False),
    _rt("rbac.authorization.k8s.io", "v1", "clusterrolebindings", "ClusterRoleBinding", False),
    _rt("scheduling.k8s.io", "v1", "priorityclasses", "PriorityClass", False, ("pc",)),
    _rt("monitoring.coreos.com", "v1", "servicemonitors", "ServiceMonitor", True, ("smon",)),
    _rt(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        False,
    ),
    _rt(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        False,
    ),
    _rt(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        ("crd", "crds"),
        ("status",),
    ),
)


class CRDError(ValueError):
    """A CustomResourceDefinition the emulator cannot serve."""


def types_from_crd(crd: dict[str, Any]) -> list[ResourceType]:
    """The resource types a CRD serves (one per served version)."""
    spec = crd.get("spec") or {}
    names = spec.get("names") or {}
    group = spec.get("group")
    plural = names.get("plural")
    kind = names.get("kind")
    if not group or not plural or not kind:
        raise CRDError("spec.group, spec.names.plural and spec.names.kind are required")
    if crd.get("metadata", {}).get("name") != f"{plural}.{group}":
        raise CRDError(f'metadata.name must be "{plural}.{group}"')
    namespaced = spec.get("scope", "Namespaced") == "Namespaced"
    types = []
    for version in spec.get("versions") or []:
        if not version.get("served", True):
            continue
        subresources = tuple(sorted((version.get("subresources") or {}).keys()))
        schema = (version.get("schema") or {}).get("openAPIV3Schema")
        types.append(
            ResourceType(
                group,
                version["name"],
                plural,
                kind,
                namespaced,
                tuple(names.get("shortNames") or ()),
                subresources,
                tuple(names.get("categories") or ()),
                schema=schema,
                printer_columns=tuple(version.get("additionalPrinterColumns") or ()),
            )
        )
    if not types:
        raise CRDError("spec.versions must have at least one served version")
    return types


def crd_accepted_status(crd: dict[str, Any]) -> dict[str, Any]:
    """The status a real API server writes once it serves a CRD (kubectl wait and Helm look at it)."""
    names = dict((crd.get("spec") or {}).get("names") or {})
    names.setdefault("singular", str(names.get("kind", "")).lower())
    names.setdefault("listKind", f"{names.get('kind', '')}List")
    conditions = [
        {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found"},
        {
            "type": "Established",
            "status": "True",
            "reason": "InitialNamesAccepted",
            "message": "the initial names have been accepted",
        },
    ]
    stored = [v["name"] for v in (crd.get("spec") or {}).get("versions") or [] if v.get("storage")]
    return {"acceptedNames": names, "conditions": conditions, "storedVersions": stored}
