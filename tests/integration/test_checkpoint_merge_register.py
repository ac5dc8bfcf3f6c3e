"""`elastra ckpt merge --register JOB` against localcluster's API server with the real CRDs: the merged
checkpoint shows in `kubectl get ckpt`, its object validates against the contract model, names the
job without joining its retention, and a missing job fails before any merging is done."""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import kubernetes
import polling
import pytest
import torch
import yaml

from elastra.api.checkpoint import CheckpointSpec
from elastra.api.membership import JOB_LABEL, ROLE_LABEL
from elastra.checkpoint import Checkpointer
from elastra.checkpoint.cli import main as ckpt_main

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
ROOT = pathlib.Path(__file__).resolve().parents[2]
GROUP, VERSION = "elastra.dev", "v1alpha1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Any]]:
    from localcluster import LocalCluster

    with LocalCluster(workdir=tmp_path_factory.mktemp("lc"), nodes=1) as lc:
        api = kubernetes.config.new_client_from_config(config_file=lc.kubeconfig)
        ext = kubernetes.client.ApiextensionsV1Api(api)
        for crd in sorted((ROOT / "crds").glob("*.yaml")):
            ext.create_custom_resource_definition(yaml.safe_load(crd.read_text()))
        custom = kubernetes.client.CustomObjectsApi(api)
        polling.until(lambda: _listable(custom), timeout=60)
        yield lc, custom


def _listable(custom: Any) -> bool:
    try:
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", "checkpoints")
        custom.list_namespaced_custom_object(GROUP, VERSION, "default", "trainingjobs")
        return True
    except kubernetes.client.exceptions.ApiException:
        return False


def _job(custom: Any, name: str, root: pathlib.Path) -> None:
    spec = {
        "replicas": {"min": 1, "max": 2},
        "template": {"spec": {"containers": [{"name": "trainer", "image": "x", "command": ["true"]}]}},
        "checkpoint": {"everySteps": 10, "directory": {"path": str(root)}},
    }
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "TrainingJob",
        "metadata": {"name": name},
        "spec": spec,
    }
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", "trainingjobs", body)


def _source(root: pathlib.Path, step: int, value: float) -> str:
    ckpt = Checkpointer(str(root))
    ckpt.save(step, {"model": {"w": torch.full((3, 4), value)}}).wait()
    ckpt.close()
    return str(root)


def _elastra(
    lc: Any, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str, str]:
    """`elastra ckpt ...` in this process (the CLI's own entry point), with the cluster's kubeconfig."""
    monkeypatch.setenv("KUBECONFIG", lc.kubeconfig)
    code = ckpt_main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_register_creates_a_checkpoint_object(
    cluster: tuple[Any, Any],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lc, custom = cluster
    _job(custom, "parent", tmp_path / "jobs")
    a, b = _source(tmp_path / "a", 40, 1.0), _source(tmp_path / "b", 50, 3.0)
    out = tmp_path / "merged"
    code, stdout, stderr = _elastra(lc, monkeypatch, capsys, "merge", str(out), a, b, "--weights", "0.5,0.5",
                                    "--register", "parent", "--name", "parent-soup", "--quiet")  # fmt: skip
    assert code == 0, stderr
    assert "registered Checkpoint default/parent-soup (job parent)" in stdout
    raw = custom.get_namespaced_custom_object(GROUP, VERSION, "default", "checkpoints", "parent-soup")
    spec = CheckpointSpec.model_validate(raw["spec"])
    assert (spec.job, spec.step, spec.uri, spec.world_size) == ("parent", 50, f"{out}/step-50", 1)
    manifest = (out / "step-50" / "manifest.json").read_bytes()
    assert spec.manifest_digest == "sha256:" + hashlib.sha256(manifest).hexdigest()
    assert (
        raw["metadata"]["labels"] == {ROLE_LABEL: "merged-checkpoint"}
        and JOB_LABEL not in raw["metadata"]["labels"]
    )
    assert raw["metadata"]["finalizers"] == ["elastra.dev/finalizer"]
    assert "ownerReferences" not in raw["metadata"]
    if shutil.which("kubectl"):
        kubectl = ["kubectl", "get", "ckpt"]
        env = {**os.environ, "KUBECONFIG": lc.kubeconfig}
        table = subprocess.run(
            kubectl, capture_output=True, text=True, check=True, timeout=60, env=env
        ).stdout
        row = next(line.split() for line in table.splitlines() if line.startswith("parent-soup"))
        assert row[1:3] == ["parent", "50"]


def test_register_under_a_missing_job_fails_before_merging(
    cluster: tuple[Any, Any],
    tmp_path: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lc, _ = cluster
    a, b = _source(tmp_path / "a", 1, 1.0), _source(tmp_path / "b", 1, 3.0)
    out = str(tmp_path / "out")
    code, _, stderr = _elastra(
        lc, monkeypatch, capsys, "merge", out, a, b, "--weights", "1,1", "--register", "nope"
    )
    assert code == 1
    assert "TrainingJob default/nope does not exist" in stderr
    assert not (tmp_path / "out").exists()
