"""The chart ships the CRDs generated from elastra.api (top-level crds/) unchanged, and Kopf's peering
CRDs from its kopf-peering subchart, so that Helm installs all of them before any template."""

from __future__ import annotations

import pathlib

import helm_python as helm
import kubernetes_validate
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "elastra"
MANIFEST_SUFFIXES = {".yaml", ".yml", ".json"}


def manifests(folder: pathlib.Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.suffix in MANIFEST_SUFFIXES}


def test_chart_crds_are_the_generated_crds() -> None:
    generated = manifests(ROOT / "crds")
    shipped = manifests(CHART / "crds")
    assert generated, "crds/ is empty: run `make crds`"
    assert sorted(shipped) == sorted(generated), "run charts/elastra/sync-crds.sh"
    for name, data in generated.items():
        assert shipped[name] == data, f"charts/elastra/crds/{name} differs from crds/{name}: run sync-crds.sh"


def test_helm_installs_the_elastra_and_kopf_peering_crds() -> None:
    with helm.Chart.load(CHART) as chart:
        crd_files = chart.crds
    names = {
        doc["metadata"]["name"]
        for crd_file in crd_files
        for doc in yaml.safe_load_all(crd_file["data"])
        if doc and doc["kind"] == "CustomResourceDefinition"
    }
    generated = {
        doc["metadata"]["name"]
        for path in (ROOT / "crds").glob("*.yaml")
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    }
    assert {"trainingjobs.elastra.dev", "checkpoints.elastra.dev"} <= generated
    assert names == generated | {"clusterkopfpeerings.kopf.dev", "kopfpeerings.kopf.dev"}


def test_kopf_peering_crds_can_be_left_out() -> None:
    """peering.installCRDs=false drops the subchart, for clusters where Kopf's CRDs already exist."""
    with helm.Chart.load(CHART) as chart:
        metadata = chart.metadata
    (dependency,) = metadata["dependencies"]
    assert dependency["name"] == "kopf-peering"
    assert dependency["condition"] == "peering.installCRDs"
    statuses = {d["name"]: d["status"] for d in helm.dependency_list(CHART)}
    assert statuses == {"kopf-peering": "unpacked"}


def test_every_shipped_crd_validates_against_the_kubernetes_schema() -> None:
    with helm.Chart.load(CHART) as chart:
        crd_files = chart.crds
    for crd_file in crd_files:
        for doc in yaml.safe_load_all(crd_file["data"]):
            if doc:
                for version in ("1.27.0", kubernetes_validate.latest_version()):
                    kubernetes_validate.validate(doc, version, strict=True)
