"""Server-side printing: `meta.k8s.io/v1 Table` answers for kubectl, with CRD printer columns. Pure.

Built-in kinds get their columns from `printers`; other kinds print NAME and AGE."""

from __future__ import annotations

import datetime
import re
from typing import Any

from localcluster.printers import PRINTERS, human_age
from localcluster.resources import ResourceType

_NAME_COLUMN = {"name": "Name", "type": "string", "format": "name", "description": "Name", "priority": 0}
_AGE_COLUMN = {"name": "Age", "type": "string", "format": "", "description": "Age", "priority": 0}


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


def table(
    rt: ResourceType,
    objects: list[dict[str, Any]],
    resource_version: str,
    *,
    include_object: str = "Metadata",
) -> dict[str, Any]:
    """A Table of objects, with the columns kubectl shows for this resource."""
    now = datetime.datetime.now(datetime.UTC)
    printer = PRINTERS.get((rt.group, rt.kind))
    if printer is not None:
        columns = [c.definition() for c in printer.columns]
        rows = [printer.cells(o, now) for o in objects]
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
