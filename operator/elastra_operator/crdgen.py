"""`elastra crds --out DIR`: the CRD manifests, generated from the pydantic models in `elastra.api`.

Pydantic's JSON Schema is turned into a Kubernetes structural schema: `$ref`s inlined, `anyOf [X, null]`
reduced to X, titles and null defaults dropped, draft-2020 `exclusiveMinimum` turned into OpenAPI v3's
boolean form. Generation is deterministic, so a test can compare it with the checked-in `crds/`.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import yaml
from pydantic import BaseModel

from elastra.api import GROUP, VERSION
from elastra.api import checkpoint as ckpt_api
from elastra.api import trainingjob as tj_api

_DROP = {"title", "$defs", "additionalProperties"}


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pure: a pydantic JSON Schema node → a Kubernetes structural-schema node."""
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"cannot express a union of {len(options)} types structurally: {schema}")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return structural({**options[0], **rest}, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROP or (key == "default" and (value is None or isinstance(value, dict | list))):
            continue
        if key == "exclusiveMinimum":
            out["minimum"] = value
            out["exclusiveMinimum"] = True
        elif key == "properties":
            out[key] = {name: structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "prefixItems"):
            sub = value[0] if isinstance(value, list) else value
            out["items"] = structural(sub, defs)
        else:
            out[key] = value
    if out.get("type") == "object" and "properties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    return structural(model.model_json_schema(by_alias=True, mode="validation"))


def _crd(
    *,
    kind: str,
    plural: str,
    short: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[dict[str, str]],
    root_rules: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    status_schema = _schema(status)
    root: dict[str, Any] = {
        "type": "object",
        "required": ["spec"],
        "properties": {"spec": _schema(spec), "status": status_schema},
    }
    if root_rules:
        root["x-kubernetes-validations"] = root_rules
    status_schema["x-kubernetes-preserve-unknown-fields"] = True  # Kopf keeps its progress here
    status_schema.pop("description", None)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["elastra"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


JOB_NAME_MAX = 52
"""Longest TrainingJob name: its worker pods `<name>-w-<index>` are their own hostnames (DNS labels,
at most 63 characters)."""
JOB_NAME_RULES = [
    {
        "rule": f"self.metadata.name.size() <= {JOB_NAME_MAX}",
        "message": f"metadata.name must be at most {JOB_NAME_MAX} characters: the worker pods "
        "<name>-w-<index> are their own hostnames (DNS labels of at most 63)",
    },
    {
        "rule": "!self.metadata.name.contains('.')",
        "message": "metadata.name must not contain '.': it names the job's headless Service and its "
        "worker pods' hostnames (DNS labels)",
    },
]
"""CEL on metadata.name: names that cannot produce valid pod names are refused by the API server."""


def trainingjob_crd() -> dict[str, Any]:
    """The TrainingJob CRD."""
    return _crd(
        root_rules=JOB_NAME_RULES,
        kind=tj_api.KIND,
        plural=tj_api.PLURAL,
        short=tj_api.SHORT_NAME,
        spec=tj_api.TrainingJobSpec,
        status=tj_api.TrainingJobStatus,
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "World", "type": "integer", "jsonPath": ".status.worldSize"},
            {"name": "Step", "type": "integer", "jsonPath": ".status.step"},
            {"name": "Checkpoint", "type": "string", "jsonPath": ".status.lastCheckpoint.name"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def checkpoint_crd() -> dict[str, Any]:
    """The Checkpoint CRD."""
    return _crd(
        kind=ckpt_api.KIND,
        plural=ckpt_api.PLURAL,
        short=ckpt_api.SHORT_NAME,
        spec=ckpt_api.CheckpointSpec,
        status=ckpt_api.CheckpointStatus,
        columns=[
            {"name": "Job", "type": "string", "jsonPath": ".spec.job"},
            {"name": "Step", "type": "integer", "jsonPath": ".spec.step"},
            {"name": "World", "type": "integer", "jsonPath": ".spec.worldSize"},
            {"name": "Bytes", "type": "integer", "jsonPath": ".spec.bytes"},
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
    )


def render() -> dict[str, str]:
    """File name → YAML text of every CRD."""
    header = "# Generated by `elastra crds` from elastra.api; do not edit by hand.\n"
    return {
        f"{crd['spec']['names']['plural']}.{GROUP}.yaml": header
        + yaml.safe_dump(crd, sort_keys=False, width=100)
        for crd in (trainingjob_crd(), checkpoint_crd())
    }


def main(argv: list[str]) -> int:
    """Write the CRD YAMLs into `--out`."""
    parser = argparse.ArgumentParser(prog="elastra crds", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="crds", help="directory to write into (default: crds)")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text, encoding="utf-8")
        print(out / name)
    return 0
