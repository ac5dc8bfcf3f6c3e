"""Discovery documents (`/version`, `/api`, `/apis`, resource lists) and the small OpenAPI v3 documents
kubectl reads to learn that the server validates fields itself. Pure: built from resource types.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import defaultdict
from typing import Any

from localcluster import openapi
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
    "token": ["create"],
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
                    "kind": {"eviction": "Eviction", "token": "TokenRequest"}.get(sub, rt.kind),
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
        canonical = json.dumps(doc, sort_keys=True).encode()  # kubectl caches each document by this hash
        digest = hashlib.sha256(canonical).hexdigest()[:16].upper()
        paths[_gv_path(*gv)] = {"serverRelativeURL": f"/openapi/v3/{_gv_path(*gv)}?hash={digest}"}
    return {"paths": paths}


def openapi_v3_group_version(types: list[ResourceType], group: str, version: str) -> dict[str, Any]:
    """One group/version's document: a PATCH operation per resource that names its kind and accepts
    `fieldValidation`, so kubectl leaves validation to the server; component schemas for the kinds that
    have one (CRDs: `kubectl explain`). A custom resource's PATCH lists its request body types, without
    strategic merge, and built-in kinds list none: kubectl then computes apply patches from its built-in
    types (core kinds) or as merge patches (CRDs), as it does against a real server."""
    paths: dict[str, Any] = {}
    schemas: dict[str, Any] = {}
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
        patch: dict[str, Any] = {
            "operationId": f"patch{rt.kind}",
            "x-kubernetes-group-version-kind": gvk,
            "parameters": params,
            "responses": {},
        }
        schema = openapi.kind_schema(rt, v2=False)
        if schema is not None:
            name = openapi.definition_name(rt)
            schemas[name] = schema
            ref = {"schema": {"$ref": f"#/components/schemas/{name}"}}
            patch["requestBody"] = {
                "content": {
                    media: {"schema": {"type": "object"}} for media in openapi.CUSTOM_RESOURCE_PATCH_TYPES
                }
            }
            patch["responses"] = {"200": {"description": "OK", "content": {"application/json": ref}}}
        paths[path] = {
            "patch": patch,
            "get": {"operationId": f"read{rt.kind}", "x-kubernetes-group-version-kind": gvk, "responses": {}},
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": VERSION_INFO["gitVersion"]},
        "paths": paths,
        "components": {"schemas": schemas},
    }
