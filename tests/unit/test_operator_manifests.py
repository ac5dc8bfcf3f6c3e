"""The objects the operator creates: worker pods, the headless Service, Checkpoints."""

from __future__ import annotations

from typing import Any

import pytest
from test_operator_support import commit, job

from elastra_operator.reconcile import manifests


def _env(pod: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in pod["spec"]["containers"][0]["env"]}


def test_worker_pod_identity_and_placement() -> None:
    pod = manifests.worker_pod(job(), 2)
    assert pod["metadata"]["name"] == "tj-w-2"
    assert pod["metadata"]["labels"] == {"elastra.dev/job": "tj", "elastra.dev/role": "worker"}
    assert pod["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert pod["spec"]["restartPolicy"] == "Never"
    anti = pod["spec"]["affinity"]["podAntiAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][0]
    assert anti["topologyKey"] == "kubernetes.io/hostname"
    env = _env(pod)
    assert env["POD_NAME"] == "tj-w-2" and env["ELASTRA_JOB"] == "tj" and env["POD_NAMESPACE"] == "ns"
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["ELASTRA_CHECKPOINT_URI"] == "/ck/ns/tj"
    assert env["ELASTRA_CHECKPOINT_EVERY_STEPS"] == "10" and env["ELASTRA_CHECKPOINT_KEEP"] == "2"
    assert env["ELASTRA_TERMINATION_GRACE_SECONDS"] == "30"


def test_worker_pod_keeps_the_template_and_adds_tiers() -> None:
    template = {
        "metadata": {"labels": {"team": "a"}},
        "spec": {
            "nodeSelector": {"gpu": "h100"},
            "containers": [{"name": "t", "image": "i", "env": [{"name": "MINE", "value": "1"}]}],
        },
    }
    checkpoint = {
        "everySeconds": 30,
        "local": {"path": "/nvme"},
        "s3": {"bucket": "bkt", "endpoint": "http://s3", "credentialsSecret": "creds"},
        "directory": None,
    }
    pod = manifests.worker_pod(job(template=template, checkpoint=checkpoint), 0)
    assert pod["metadata"]["labels"]["team"] == "a" and pod["spec"]["nodeSelector"] == {"gpu": "h100"}
    env = _env(pod)
    assert (
        env["MINE"] == "1"
        and env["ELASTRA_LOCAL_DIR"] == "/nvme"
        and env["ELASTRA_LOCAL_KEEP"] == "2"  # local.keep's default: the trainers prune that tier
        and env["ELASTRA_CHECKPOINT_EVERY_SECONDS"] == "30.0"
    )
    assert env["ELASTRA_CHECKPOINT_URI"] == "s3://bkt/ns/tj" and env["AWS_ENDPOINT_URL_S3"] == "http://s3"
    assert env["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {"name": "creds", "key": "AWS_ACCESS_KEY_ID"}}
    # one node folder per job (namespace, name and uid): another job's retention cannot reach it
    host = {"path": "/nvme/ns/tj-uid-1", "type": "DirectoryOrCreate"}
    assert {"name": "elastra-local", "hostPath": host} in pod["spec"]["volumes"]
    assert {"name": "elastra-local", "mountPath": "/nvme"} in pod["spec"]["containers"][0]["volumeMounts"]


def test_template_is_not_mutated() -> None:
    view = job()
    assert view.spec is not None
    before = repr(view.spec.template)
    manifests.worker_pod(view, 0)
    assert repr(view.spec.template) == before


def test_headless_service_selects_workers() -> None:
    svc = manifests.headless_service(job())
    assert svc["spec"]["clusterIP"] == "None" and svc["spec"]["selector"]["elastra.dev/role"] == "worker"


def test_checkpoint_object_has_finalizer_and_owner() -> None:
    obj = manifests.checkpoint_object(job(), commit(60))
    assert obj["metadata"]["name"] == "tj-step-60"
    assert obj["metadata"]["finalizers"] == [manifests.FINALIZER]
    assert obj["metadata"]["ownerReferences"][0]["kind"] == "TrainingJob"
    assert obj["spec"]["uri"] == "/ck/ns/tj/step-60" and obj["spec"]["manifestDigest"] == "sha256:00ff"


@pytest.mark.parametrize(
    ("template", "gpus"),
    [
        pytest.param(
            {"spec": {"containers": [{"resources": {"limits": {"nvidia.com/gpu": "2"}}}]}}, 2, id="limits"
        ),
        pytest.param(
            {"spec": {"containers": [{"resources": {"requests": {"nvidia.com/gpu": 1}}}]}}, 1, id="requests"
        ),
        pytest.param(
            {"spec": {"containers": [{}, {"resources": {"limits": {"nvidia.com/gpu": 1}}}]}}, 1, id="sidecar"
        ),
        pytest.param({"spec": {"containers": [{"name": "cpu"}]}}, 0, id="cpu-only"),
    ],
)
def test_gpu_request(template: dict[str, Any], gpus: int) -> None:
    assert manifests.gpu_request(template) == gpus


@pytest.mark.parametrize(
    ("name", "index"),
    [
        pytest.param("tj-w-3", 3, id="ours"),
        pytest.param("tj-w-x", None, id="not-a-number"),
        pytest.param("other-w-3", None, id="other-job"),
    ],
)
def test_pod_index(name: str, index: int | None) -> None:
    assert manifests.pod_index("tj", name) == index


@pytest.mark.parametrize(
    ("tolerations", "taint", "ok"),
    [
        pytest.param([], ("gpu", "h100", "NoSchedule"), False, id="none"),
        pytest.param(
            [{"key": "gpu", "value": "h100"}], ("gpu", "h100", "NoSchedule"), True, id="equal-any-effect"
        ),
        pytest.param(
            [{"key": "gpu", "value": "a100"}], ("gpu", "h100", "NoSchedule"), False, id="other-value"
        ),
        pytest.param(
            [{"key": "gpu", "operator": "Exists"}], ("gpu", "h100", "NoExecute"), True, id="exists-key"
        ),
        pytest.param([{"operator": "Exists"}], ("anything", "", "NoSchedule"), True, id="exists-all"),
        pytest.param(
            [{"key": "gpu", "operator": "Exists", "effect": "NoExecute"}],
            ("gpu", "", "NoSchedule"),
            False,
            id="other-effect",
        ),
    ],
)
def test_tolerates(tolerations: list[dict[str, str]], taint: tuple[str, str, str], ok: bool) -> None:
    assert manifests.tolerates({"spec": {"tolerations": tolerations}}, taint) is ok


def _local_host(name: str, uid: str, namespace: str = "ns") -> str:
    from dataclasses import replace

    checkpoint = {"local": {"path": "/nvme", "keep": 1}, "directory": {"path": "/shared"}}
    view = replace(job(checkpoint=checkpoint), name=name, uid=uid, namespace=namespace)
    pod = manifests.worker_pod(view, 0)
    return next(v["hostPath"]["path"] for v in pod["spec"]["volumes"] if v["name"] == "elastra-local")


@pytest.mark.parametrize(
    ("other", "why"),
    [
        pytest.param(("b", "uid-1", "ns"), "another job", id="other-job"),
        pytest.param(("tj", "uid-2", "ns"), "the same name recreated", id="recreated"),
        pytest.param(("tj", "uid-1", "other"), "another namespace", id="other-namespace"),
    ],
)
def test_local_tier_is_one_folder_per_job(other: tuple[str, str, str], why: str) -> None:
    assert _local_host("tj", "uid-1") != _local_host(*other), why
    assert _local_host("tj", "uid-1") == "/nvme/ns/tj-uid-1"


def test_local_tier_folder_is_private(tmp_path: Any) -> None:
    from elastra.storage.local import make_private

    folder = tmp_path / "ns" / "tj-uid"
    make_private(str(folder))
    assert folder.stat().st_mode & 0o777 == 0o700
    folder.chmod(0o755)
    make_private(str(folder))
    assert folder.stat().st_mode & 0o777 == 0o700


def test_worker_pods_run_as_the_jobs_identity() -> None:
    view = job()
    pod = manifests.worker_pod(view, 3)
    assert pod["spec"]["serviceAccountName"] == "tj-worker"
    account, role, binding = manifests.worker_identity(view, manifests.identity_names("tj", 3, 2))
    pods_rule, cm_rule = role["rules"]
    assert pods_rule["resourceNames"] == [f"tj-w-{i}" for i in range(6)] and pods_rule["verbs"] == [
        "get",
        "patch",
    ]
    assert cm_rule["resourceNames"] == ["tj-membership"] and "patch" not in cm_rule["verbs"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "tj-worker", "namespace": "ns"}]
    assert all(o["metadata"]["ownerReferences"][0]["uid"] == "uid-1" for o in (account, role, binding))
    assert len(manifests.identity_names("tj", 9, 2)) == 10, "a higher index widens the Role"
