"""The checked-in CRDs are exactly what `elastra crds` generates, and they are valid structural schemas."""

from __future__ import annotations

import pathlib
from typing import Any

import pytest
import yaml

from elastra_operator import crdgen


@pytest.mark.parametrize("name", sorted(crdgen.render()), ids=lambda n: n.split(".")[0])
def test_checked_in_crds_do_not_drift(repo_root: pathlib.Path, name: str) -> None:
    checked_in = (repo_root / "crds" / name).read_text(encoding="utf-8")
    assert checked_in == crdgen.render()[name], f"crds/{name} is stale: run `elastra crds --out crds`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.items():
            out.extend(_walk(value, f"{path}.{key}"))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            out.extend(_walk(value, f"{path}[{i}]"))
    return out


@pytest.mark.parametrize("crd", [crdgen.trainingjob_crd(), crdgen.checkpoint_crd()], ids=["tj", "ckpt"])
def test_schema_is_structural(crd: dict[str, Any]) -> None:
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        if path.endswith(".properties") or ".x-kubernetes-validations" in path:
            continue
        assert "$ref" not in node and "anyOf" not in node and "$defs" not in node, path
        assert "title" not in node, path
        if "properties" in node:
            assert node.get("type") == "object", f"{path} has properties but no type object"


def test_crd_manifests_validate_against_kubernetes_schema() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    for text in crdgen.render().values():
        kubernetes_validate.validate(yaml.safe_load(text), "1.30", strict=True)


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        pytest.param(
            crdgen.trainingjob_crd(), ["Phase", "World", "Step", "Checkpoint", "Age"], id="tj-columns"
        ),
        pytest.param(
            crdgen.checkpoint_crd(), ["Job", "Step", "World", "Bytes", "Phase", "Age"], id="ckpt-columns"
        ),
    ],
)
def test_printer_columns(columns: dict[str, Any], expected: list[str]) -> None:
    assert [c["name"] for c in columns["spec"]["versions"][0]["additionalPrinterColumns"]] == expected


def test_short_names() -> None:
    assert crdgen.trainingjob_crd()["spec"]["names"]["shortNames"] == ["tj"]
    assert crdgen.checkpoint_crd()["spec"]["names"]["shortNames"] == ["ckpt"]


def test_cli_writes_the_files(tmp_path: pathlib.Path) -> None:
    assert crdgen.main(["--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(crdgen.render())
    for p in tmp_path.iterdir():
        assert yaml.safe_load(p.read_text())["kind"] == "CustomResourceDefinition"
