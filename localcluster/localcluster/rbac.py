"""RBAC authorization: Role, ClusterRole, RoleBinding and ClusterRoleBinding, evaluated per request as
the real API server's RBAC authorizer does (verbs, API groups, resources, subresources, resourceNames,
nonResourceURLs, namespaces). Aggregated ClusterRoles are not computed. `system:masters` bypasses RBAC.

`request_attributes` turns an HTTP request into authorizer attributes (pure); `Authorizer` decides
against the stored RBAC objects; `bootstrap_objects` are the defaults a new cluster has
(`cluster-admin`, discovery for authenticated users, health and version for everybody).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from localcluster.auth import AUTHENTICATED, MASTERS, SERVICEACCOUNT_PREFIX, UNAUTHENTICATED, UserInfo
from localcluster.errors import ApiError

RBAC_GROUP = "rbac.authorization.k8s.io"

ListFn = Callable[[str, str | None], list[dict[str, Any]]]
"""(plural of an RBAC kind, namespace or None for all) -> stored objects."""


@dataclass(frozen=True, slots=True)
class Attributes:
    """What a request asks to do, as the authorizer sees it."""

    verb: str
    """get, list, watch, create, update, patch, delete, deletecollection (non-resource: the method)."""
    resource_request: bool = True
    """False for non-resource URLs (discovery, /version, /healthz, control endpoints)."""
    api_group: str = ""
    """The resource's API group (`""` for core)."""
    resource: str = ""
    """The resource's plural, e.g. `pods`."""
    subresource: str = ""
    """e.g. `status`, `log`, `eviction`, `token`."""
    namespace: str = ""
    """The request's namespace; empty for cluster-scoped requests."""
    name: str = ""
    """The object's name; for list/watch the `metadata.name` field selector, when there is one."""
    path: str = ""
    """The URL path of a non-resource request."""


_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def _name_from_selector(selector: str | None) -> str:
    for term in (selector or "").split(","):
        key, sep, value = term.partition("=")
        if key.strip() == "metadata.name" and sep and not value.startswith("="):
            return value.strip()
        if key.strip() == "metadata.name" and value.startswith("="):
            return value[1:].strip()
    return ""


def request_attributes(method: str, path: str, query: Mapping[str, str]) -> Attributes:
    """The authorizer attributes of an HTTP request. Pure."""
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] not in {"api", "apis"}:
        return Attributes(method.lower(), resource_request=False, path=path)
    group, rest = ("", parts[1:]) if parts[0] == "api" else (parts[1] if len(parts) > 1 else "", parts[2:])
    if len(rest) < 2:  # /api, /api/v1, /apis, /apis/g, /apis/g/v: discovery
        return Attributes(method.lower(), resource_request=False, path=path)
    rest = rest[1:]  # drop the version
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in {"status", "finalize"}:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0]
    name = rest[1] if len(rest) > 1 else ""
    subresource = rest[2] if len(rest) > 2 else ""
    if resource == "namespaces" and name:
        namespace = name  # a namespace object lives "in" itself for RoleBindings
    watch = query.get("watch", "").lower() in {"1", "true"}
    if method == "GET":
        verb = "watch" if watch else "get" if name else "list"
    elif method == "DELETE":
        verb = "delete" if name else "deletecollection"
    else:
        verb = _METHOD_VERBS.get(method, method.lower())
    if verb in {"list", "watch"} and not name:
        name = _name_from_selector(query.get("fieldSelector"))
    return Attributes(verb, True, group, resource, subresource, namespace, name)


def _matches(values: Iterable[str], wanted: str) -> bool:
    return any(v in {"*", wanted} for v in values)


def rule_allows(rule: Mapping[str, Any], attrs: Attributes) -> bool:
    """Whether one PolicyRule grants the request. Pure."""
    if not _matches(rule.get("verbs") or (), attrs.verb):
        return False
    if not attrs.resource_request:
        return any(
            u == attrs.path or (u.endswith("*") and attrs.path.startswith(u[:-1]))
            for u in rule.get("nonResourceURLs") or ()
        )
    if not _matches(rule.get("apiGroups") or (), attrs.api_group):
        return False
    combined = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    resources = rule.get("resources") or ()
    if not any(
        r in {"*", combined}
        or (attrs.subresource and r == f"*/{attrs.subresource}")
        or (r.endswith("/*") and r[:-2] == attrs.resource and attrs.subresource)
        for r in resources
    ):
        return False
    names = rule.get("resourceNames") or ()
    return not names or (bool(attrs.name) and attrs.name in names)


def subject_matches(subject: Mapping[str, Any], user: UserInfo, binding_namespace: str) -> bool:
    """Whether a binding's subject is this user. Pure."""
    kind, name = subject.get("kind"), subject.get("name", "")
    if kind == "User":
        return bool(name == user.name)
    if kind == "Group":
        return name in user.groups
    if kind == "ServiceAccount":
        namespace = subject.get("namespace") or binding_namespace
        return user.name == f"{SERVICEACCOUNT_PREFIX}{namespace}:{name}"
    return False


class Authorizer:
    """Decides requests against the stored RBAC objects."""

    def __init__(self, list_objects: ListFn) -> None:
        self.list_objects = list_objects

    def _role_rules(self, ref: Mapping[str, Any], namespace: str) -> list[dict[str, Any]]:
        kind, name = ref.get("kind"), ref.get("name")
        plural, ns = ("clusterroles", None) if kind == "ClusterRole" else ("roles", namespace)
        for role in self.list_objects(plural, ns):
            if role["metadata"]["name"] == name:
                return list(role.get("rules") or [])
        return []

    def allowed(self, user: UserInfo, attrs: Attributes) -> bool:
        """Whether some binding grants `user` the request."""
        if user.is_admin:
            return True
        for binding in self.list_objects("clusterrolebindings", None):
            if any(subject_matches(s, user, "") for s in binding.get("subjects") or []) and any(
                rule_allows(r, attrs) for r in self._role_rules(binding.get("roleRef") or {}, "")
            ):
                return True
        if not attrs.resource_request or not attrs.namespace:
            return False
        for binding in self.list_objects("rolebindings", attrs.namespace):
            ns = binding["metadata"].get("namespace", "")
            if any(subject_matches(s, user, ns) for s in binding.get("subjects") or []) and any(
                rule_allows(r, attrs) for r in self._role_rules(binding.get("roleRef") or {}, ns)
            ):
                return True
        return False

    def authorize(self, user: UserInfo, attrs: Attributes) -> None:
        """403 unless allowed, worded like the real server."""
        if not self.allowed(user, attrs):
            raise forbidden(user, attrs)


def forbidden(user: UserInfo, attrs: Attributes) -> ApiError:
    """The real server's 403 text."""
    if not attrs.resource_request:
        return ApiError(
            403,
            f'forbidden: User "{user.name}" cannot {attrs.verb} path "{attrs.path}"',
            reason="Forbidden",
            details={},
        )
    resource = f"{attrs.resource}/{attrs.subresource}" if attrs.subresource else attrs.resource
    qualified = f"{attrs.resource}.{attrs.api_group}" if attrs.api_group else attrs.resource
    subject = f'{qualified} "{attrs.name}"' if attrs.name else qualified
    scope = f'in the namespace "{attrs.namespace}"' if attrs.namespace else "at the cluster scope"
    return ApiError(
        403,
        f'{subject} is forbidden: User "{user.name}" cannot {attrs.verb} resource "{resource}" '
        f'in API group "{attrs.api_group}" {scope}',
        reason="Forbidden",
        details={"name": attrs.name, "group": attrs.api_group, "kind": attrs.resource},
    )


def bootstrap_objects() -> list[tuple[str, dict[str, Any]]]:
    """(plural, object) of the RBAC defaults a new cluster has."""
    labels = {"kubernetes.io/bootstrapping": "rbac-defaults"}

    def role(name: str, rules: list[dict[str, Any]]) -> tuple[str, dict[str, Any]]:
        return "clusterroles", {"metadata": {"name": name, "labels": labels}, "rules": rules}

    def binding(name: str, groups: list[str]) -> tuple[str, dict[str, Any]]:
        subjects = [{"kind": "Group", "apiGroup": RBAC_GROUP, "name": g} for g in groups]
        ref = {"apiGroup": RBAC_GROUP, "kind": "ClusterRole", "name": name}
        return "clusterrolebindings", {
            "metadata": {"name": name, "labels": labels},
            "roleRef": ref,
            "subjects": subjects,
        }

    everything = [
        {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
        {"nonResourceURLs": ["*"], "verbs": ["*"]},
    ]
    discovery_urls = ["/api", "/api/*", "/apis", "/apis/*", "/openapi", "/openapi/*", "/version", "/version/"]
    health_urls = ["/healthz", "/livez", "/readyz", "/version", "/version/"]
    return [
        role("cluster-admin", everything),
        binding("cluster-admin", [MASTERS]),
        role("system:discovery", [{"nonResourceURLs": discovery_urls, "verbs": ["get"]}]),
        binding("system:discovery", [AUTHENTICATED]),
        role("system:public-info-viewer", [{"nonResourceURLs": health_urls, "verbs": ["get"]}]),
        binding("system:public-info-viewer", [AUTHENTICATED, UNAUTHENTICATED]),
    ]
