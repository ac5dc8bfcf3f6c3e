"""Server-side printing: `meta.k8s.io/v1 Table` answers for kubectl, with CRD printer columns. Pure."""

from __future__ import annotations

import datetime
import re
from typing import Any

from localcluster.resources import ResourceType

_NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}
_AGE_COLUMN = {"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}


def human_age(timestamp: str | None, now: datetime.datetime) -> str:  # noqa: PLR0911 - one per unit
    """Like kubectl: `45s`, `3m12s`, `25m`, `5h3m`, `17h`, `9d`."""
    if not timestamp:
        return "<unknown>"
    then = datetime.datetime.strptime(timestamp[:19], "%Y-%m-%dT%H:%M:%S").replace(tzinfo=datetime.UTC)
    seconds = max(0, int((now - then).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return f"{minutes}m{seconds % 60}s" if seconds % 60 else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return f"{hours}h{minutes % 60}m" if minutes % 60 else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    return f"{hours // 24}d"


def json_path(obj: Any, path: str) -> Any:
    """Evaluate the simple JSONPath forms printer columns use: `.a.b`, `.a[0]`,
    `.a[?(@.type=="Ready")].status`."""
    tokens = re.findall(r'\.([A-Za-z0-9_\-/]+)|\[(\d+)\]|\[\?\(@\.(\w+)==["\']([^"\']*)["\']\)\]', path)
    node = obj
    for key, index, filter_key, filter_value in tokens:
        if key:
            node = node.get(key) if isinstance(node, dict) else None
        elif index:
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
        else:
            node = (
                next(
                    (i for i in node if isinstance(i, dict) and str(i.get(filter_key)) == filter_value), None
                )
                if isinstance(node, list)
                else None
            )
        if node is None:
            return None
    return node


def _pod_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    spec, status, meta = obj.get("spec") or {}, obj.get("status") or {}, obj["metadata"]
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    total = len(spec.get("containers") or [])
    phase = status.get("phase", "Pending")
    reason = phase
    for cs in statuses:
        state = cs.get("state") or {}
        if "waiting" in state:
            reason = state["waiting"].get("reason") or reason
        elif "terminated" in state and phase not in {"Running"}:
            reason = state["terminated"].get("reason") or reason
    if meta.get("deletionTimestamp"):
        reason = "Terminating"
    restarts = sum(int(s.get("restartCount", 0)) for s in statuses)
    return [
        meta["name"],
        f"{ready}/{total}",
        reason,
        restarts,
        human_age(meta.get("creationTimestamp"), now),
        status.get("podIP") or "<none>",
        spec.get("nodeName") or "<none>",
    ]


def _node_cells(obj: dict[str, Any], now: datetime.datetime) -> list[Any]:
    conditions = (obj.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    state = "Ready" if ready and ready.get("status") == "True" else "NotReady"
    if (obj.get("spec") or {}).get("unschedulable"):
        state += ",SchedulingDisabled"
    version = ((obj.get("status") or {}).get("nodeInfo") or {}).get("kubeletVersion", "")
    return [
        obj["metadata"]["name"],
        state,
        "<none>",
        human_age(obj["metadata"].get("creationTimestamp"), now),
        version,
    ]


def _columns(names: list[tuple[str, int]]) -> list[dict[str, Any]]:
    return [
        {
            "name": n,
            "type": "string",
            "format": "name" if n == "Name" else "",
            "description": n,
            "priority": p,
        }
        for n, p in names
    ]


def table(
    rt: ResourceType,
    objects: list[dict[str, Any]],
    resource_version: str,
    *,
    include_object: str = "Metadata",
) -> dict[str, Any]:
    """A Table of objects, with the columns kubectl shows for this resource."""
    now = datetime.datetime.now(datetime.UTC)
    if rt.kind == "Pod" and not rt.group:
        columns = _columns(
            [("Name", 0), ("Ready", 0), ("Status", 0), ("Restarts", 0), ("Age", 0), ("IP", 1), ("Node", 1)]
        )
        rows = [_pod_cells(o, now) for o in objects]
    elif rt.kind == "Node" and not rt.group:
        columns = _columns([("Name", 0), ("Status", 0), ("Roles", 0), ("Age", 0), ("Version", 0)])
        rows = [_node_cells(o, now) for o in objects]
    elif rt.printer_columns:
        columns = [_NAME_COLUMN] + [
            {
                "name": c["name"],
                "type": c.get("type", "string"),
                "format": c.get("format", ""),
                "description": c.get("description", ""),
                "priority": c.get("priority", 0),
            }
            for c in rt.printer_columns
        ]
        rows = []
        for o in objects:
            cells: list[Any] = [o["metadata"]["name"]]
            for c in rt.printer_columns:
                value = json_path(o, c.get("jsonPath", ""))
                if c.get("type") == "date" and isinstance(value, str):
                    value = human_age(value, now)
                cells.append(value)
            rows.append(cells)
        columns = [col if col.get("type") != "date" else {**col, "type": "string"} for col in columns]
    else:
        columns = [_NAME_COLUMN, _AGE_COLUMN]
        rows = [
            [o["metadata"]["name"], human_age(o["metadata"].get("creationTimestamp"), now)] for o in objects
        ]
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns,
        "rows": [
            {"cells": cells, "object": _row_object(o, include_object)}
            for cells, o in zip(rows, objects, strict=True)
        ],
    }


def _row_object(obj: dict[str, Any], include_object: str) -> dict[str, Any] | None:
    if include_object == "None":
        return None
    if include_object == "Object":
        return obj
    return {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": obj["metadata"]}
