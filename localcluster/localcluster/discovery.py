"""Discovery documents (`/version`, `/api`, `/apis`, resource lists) and the small OpenAPI v3 documents
kubectl reads to learn that the server validates fields itself. Pure: built from resource types.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from typing import Any

from localcluster.resources import VERBS, ResourceType

VERSION_INFO = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-localcluster",
    "gitCommit": "localcluster",
    "gitTreeState": "clean",
    "buildDate": "2025-01-01T00:00:00Z",
    "goVersion": "go1.23",
    "compiler": "gc",
    "platform": "linux/amd64",
}

_SUBRESOURCE_VERBS = {
    "status": ["get", "patch", "update"],
    "scale": ["get", "patch", "update"],
    "log": ["get"],
    "eviction": ["create"],
    "binding": ["create"],
}


def _version_rank(version: str) -> tuple[int, int, int]:
    """Kubernetes version priority: GA > beta > alpha, then by number (higher first when sorted)."""
    match = re.fullmatch(r"v(\d+)(?:(alpha|beta)(\d+))?", version)
    if not match:
        return (0, 0, 0)
    major, stage, minor = match.groups()
    return (int(major), {"alpha": 1, "beta": 2, None: 3}[stage], int(minor or 0))


def group_list(types: list[ResourceType]) -> dict[str, Any]:
    """`/apis`: every non-core group with its versions, the preferred one first."""
    versions: dict[str, set[str]] = defaultdict(set)
    for rt in types:
        if rt.group:
            versions[rt.group].add(rt.version)
    groups = []
    for group in sorted(versions):
        ordered = sorted(versions[group], key=_version_rank, reverse=True)
        entries = [{"groupVersion": f"{group}/{v}", "version": v} for v in ordered]
        groups.append({"name": group, "versions": entries, "preferredVersion": entries[0]})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def group_info(types: list[ResourceType], group: str) -> dict[str, Any] | None:
    """`/apis/<group>`: one APIGroup, or None if not served."""
    for entry in group_list(types)["groups"]:
        if entry["name"] == group:
            return {"kind": "APIGroup", "apiVersion": "v1", **entry}
    return None


def core_versions(server_address: str) -> dict[str, Any]:
    """`/api`."""
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def resource_list(types: list[ResourceType], group: str, version: str) -> dict[str, Any] | None:
    """`/api/v1` or `/apis/<group>/<version>`: the resources with verbs, kinds, short names and
    subresources; None if that group/version is not served."""
    served = sorted(
        (rt for rt in types if rt.group == group and rt.version == version), key=lambda t: t.plural
    )
    if not served:
        return None
    entries: list[dict[str, Any]] = []
    for rt in served:
        entry: dict[str, Any] = {
            "name": rt.plural,
            "singularName": rt.singular,
            "namespaced": rt.namespaced,
            "kind": rt.kind,
            "verbs": list(VERBS),
        }
        if rt.short_names:
            entry["shortNames"] = list(rt.short_names)
        if rt.categories:
            entry["categories"] = list(rt.categories)
        entries.append(entry)
        for sub in rt.subresources:
            entries.append(
                {
                    "name": f"{rt.plural}/{sub}",
                    "singularName": "",
                    "namespaced": rt.namespaced,
                    "kind": "Eviction" if sub == "eviction" else rt.kind,
                    "verbs": _SUBRESOURCE_VERBS.get(sub, ["get"]),
                }
            )
    group_version = f"{group}/{version}" if group else version
    return {
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": entries,
    }


def _gv_path(group: str, version: str) -> str:
    return f"apis/{group}/{version}" if group else f"api/{version}"


def openapi_v3_root(types: list[ResourceType]) -> dict[str, Any]:
    """`/openapi/v3`: one entry per group/version, each with a content hash as kubectl expects."""
    paths = {}
    for gv in sorted({(rt.group, rt.version) for rt in types}):
        doc = openapi_v3_group_version(types, *gv)
        digest = hashlib.sha256(repr(sorted(doc["paths"])).encode()).hexdigest()[:16].upper()
        paths[_gv_path(*gv)] = {"serverRelativeURL": f"/openapi/v3/{_gv_path(*gv)}?hash={digest}"}
    return {"paths": paths}


def openapi_v3_group_version(types: list[ResourceType], group: str, version: str) -> dict[str, Any]:
    """One group/version's document: a PATCH operation per resource that names its kind and accepts
    `fieldValidation`, so kubectl leaves validation to the server. No component schemas: kubectl then
    computes apply patches from its built-in types (core kinds) or as merge patches (CRDs)."""
    paths: dict[str, Any] = {}
    for rt in types:
        if rt.group != group or rt.version != version:
            continue
        prefix = "/" + _gv_path(group, version)
        path = (
            f"{prefix}/namespaces/{{namespace}}/{rt.plural}/{{name}}"
            if rt.namespaced
            else f"{prefix}/{rt.plural}/{{name}}"
        )
        gvk = {"group": group, "version": version, "kind": rt.kind}
        params = [
            {"name": p, "in": "query", "schema": {"type": "string", "uniqueItems": True}}
            for p in ("dryRun", "fieldManager", "fieldValidation", "force")
        ]
        paths[path] = {
            "patch": {
                "operationId": f"patch{rt.kind}",
                "x-kubernetes-group-version-kind": gvk,
                "parameters": params,
                "responses": {},
            },
            "get": {"operationId": f"read{rt.kind}", "x-kubernetes-group-version-kind": gvk, "responses": {}},
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": VERSION_INFO["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }
