"""Object names and pod paths, checked as a real API server checks them. Pure: no I/O.

Names become folder names here (pod folders, logs), so a name the real server would refuse must be
refused here too: `x/../../etc` would otherwise resolve outside the state folder. The same holds for
paths inside pod specs (hostPath, configMap/secret item paths, subPath): the real server refuses `..`
in them, and so does this one.
"""

from __future__ import annotations

import re
from typing import Any

from localcluster.errors import ApiError
from localcluster.resources import ResourceType

DNS1123_LABEL_MAX = 63
DNS1123_SUBDOMAIN_MAX = 253
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035 = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")

LABEL_KINDS = frozenset({"Namespace"})
"""Kinds whose names must be DNS-1123 labels (no dots, at most 63 characters)."""
DNS1035_KINDS = frozenset({"Service"})
"""Kinds whose names must be DNS-1035 labels (a label that starts with a letter)."""
PATH_SEGMENT_KINDS = frozenset({"Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"})
"""Kinds whose names need only be a valid path segment (RBAC names such as `system:discovery`)."""


def dns1123_label(value: str) -> str | None:
    """Why `value` is not a DNS-1123 label, or None when it is."""
    if len(value) > DNS1123_LABEL_MAX:
        return f"must be no more than {DNS1123_LABEL_MAX} characters"
    if not _LABEL.fullmatch(value):
        return (
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', "
            "and must start and end with an alphanumeric character"
        )
    return None


def dns1035_label(value: str) -> str | None:
    """Why `value` is not a DNS-1035 label, or None when it is."""
    if len(value) > DNS1123_LABEL_MAX:
        return f"must be no more than {DNS1123_LABEL_MAX} characters"
    if not _DNS1035.fullmatch(value):
        return (
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an "
            "alphabetic character, and end with an alphanumeric character"
        )
    return None


def dns1123_subdomain(value: str) -> str | None:
    """Why `value` is not a DNS-1123 subdomain, or None when it is."""
    if len(value) > DNS1123_SUBDOMAIN_MAX:
        return f"must be no more than {DNS1123_SUBDOMAIN_MAX} characters"
    if not _SUBDOMAIN.fullmatch(value):
        return (
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or "
            "'.', and must start and end with an alphanumeric character"
        )
    return None


def path_segment(value: str) -> str | None:
    """Why `value` cannot be one URL path segment, or None when it can."""
    if value in {".", ".."}:
        return f"may not be '{value}'"
    for bad in ("/", "%"):
        if bad in value:
            return f"may not contain '{bad}'"
    return None


def name_problem(kind: str, name: str) -> str | None:
    """Why `name` is not a valid name for an object of `kind`, or None when it is."""
    if kind in PATH_SEGMENT_KINDS:
        return path_segment(name)
    if kind in LABEL_KINDS:
        return dns1123_label(name)
    if kind in DNS1035_KINDS:
        return dns1035_label(name)
    return dns1123_subdomain(name)


def _invalid(rt: ResourceType, name: str, causes: list[tuple[str, str, str]]) -> ApiError:
    group = f".{rt.group}" if rt.group else ""
    summary = ", ".join(f'{field}: Invalid value: "{value}": {why}' for field, value, why in causes)
    return ApiError(
        422,
        f'{rt.kind}{group} "{name}" is invalid: {summary}',
        details={
            "name": name,
            "group": rt.group,
            "kind": rt.kind,
            "causes": [
                {"reason": "FieldValueInvalid", "message": f'Invalid value: "{v}": {w}', "field": f}
                for f, v, w in causes
            ],
        },
    )


def check_name(rt: ResourceType, name: object) -> None:
    """422 unless `name` is valid for `rt`'s kind."""
    problem = "must be a string" if not isinstance(name, str) else name_problem(rt.kind, name)
    if problem:
        raise _invalid(rt, str(name), [("metadata.name", str(name), problem)])


def check_namespace(namespace: str) -> None:
    """404 for a namespace that cannot exist (e.g. `..` in a URL), as the real server answers."""
    if dns1123_label(namespace):
        raise ApiError(404, f'namespaces "{namespace}" not found')


def descending_path(value: object) -> str | None:
    """Why `value` is not a relative path that stays below its folder (no `..`), or None."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if value.startswith("/"):
        return "must be a relative path"
    if ".." in value.split("/"):
        return "must not contain '..'"
    return None


def no_backsteps(value: object) -> str | None:
    """Why a hostPath `value` is refused (a `..` element), or None."""
    if not isinstance(value, str) or not value:
        return "must be a non-empty string"
    if ".." in value.split("/"):
        return "must not contain '..'"
    return None


def _volume_problems(spec: dict[str, Any]) -> list[tuple[str, str, str]]:
    problems: list[tuple[str, str, str]] = []
    for i, volume in enumerate(spec.get("volumes") or []):
        where = f"spec.volumes[{i}]"
        host = volume.get("hostPath")
        if host is not None:
            why = no_backsteps(host.get("path"))
            if why:
                problems.append((f"{where}.hostPath.path", str(host.get("path")), why))
        sources = [volume.get("configMap"), volume.get("secret")]
        sources += [s.get(kind) for s in (volume.get("projected") or {}).get("sources") or [] for kind in s]
        for source in sources:
            for j, item in enumerate((source or {}).get("items") or []):
                why = descending_path(item.get("path"))
                if why:
                    problems.append((f"{where}.items[{j}].path", str(item.get("path")), why))
        for source in (volume.get("projected") or {}).get("sources") or []:
            token = source.get("serviceAccountToken")
            if token is not None:
                why = descending_path(token.get("path"))
                if why:
                    problems.append((f"{where}.serviceAccountToken.path", str(token.get("path")), why))
    return problems


def pod_path_problems(pod: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(field, value, why) for every path in a pod spec that could leave its folder. Pure."""
    spec = pod.get("spec") or {}
    problems = _volume_problems(spec)
    for group in ("initContainers", "containers"):
        for i, container in enumerate(spec.get(group) or []):
            for j, mount in enumerate(container.get("volumeMounts") or []):
                sub = mount.get("subPath")
                if sub:
                    why = descending_path(sub)
                    if why:
                        problems.append((f"spec.{group}[{i}].volumeMounts[{j}].subPath", str(sub), why))
    hostname = spec.get("hostname")
    if hostname is not None:
        why = dns1123_label(str(hostname))
        if why:
            problems.append(("spec.hostname", str(hostname), why))
    return problems


def check_pod_paths(rt: ResourceType, pod: dict[str, Any]) -> None:
    """422 listing every path of the pod that could escape its folder."""
    problems = pod_path_problems(pod)
    if problems:
        raise _invalid(rt, str(pod.get("metadata", {}).get("name", "")), problems)
