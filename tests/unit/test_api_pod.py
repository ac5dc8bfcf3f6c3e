"""The worker pod contract: one model for the operator's manifests and the pod's readers."""

from __future__ import annotations

from typing import Any

import pytest

from elastra.api.pod import SERVICEACCOUNT_DIR, PodContract
from elastra.api.trainingjob import TrainingJobSpec

SPEC = TrainingJobSpec.model_validate(
    {
        "replicas": {"min": 1, "max": 2},
        "nprocPerPod": 2,
        "template": {"spec": {"containers": [{"name": "t", "image": "i"}]}},
        "checkpoint": {
            "everySteps": 50,
            "local": {"path": "/nvme"},
            "s3": {"bucket": "bkt", "endpoint": "http://minio:9000", "credentialsSecret": "creds", "keep": 4},
        },
    }
)


def test_round_trip_through_the_environment() -> None:
    sent = PodContract.from_spec(namespace="ns", job="tj", pod="tj-w-1", spec=SPEC, grace_seconds=45)
    env = sent.to_env()
    values = {e["name"]: e["value"] for e in env if "value" in e}
    refs = {e["name"]: e["valueFrom"] for e in env if "valueFrom" in e}
    assert refs["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert refs["AWS_SECRET_ACCESS_KEY"] == {
        "secretKeyRef": {"name": "creds", "key": "AWS_SECRET_ACCESS_KEY"}
    }
    assert values["ELASTRA_SERVICEACCOUNT_DIR"] == SERVICEACCOUNT_DIR
    # what the kubelet fills in, then what the pod reads back
    got = PodContract.from_env({**values, "POD_IP": "10.0.0.7", "NODE_NAME": "n1"})
    assert got.model_dump(exclude={"pod_ip", "node"}) == sent.model_dump(exclude={"pod_ip", "node"})
    assert (got.pod_ip, got.checkpoint_uri, got.checkpoint_keep) == ("10.0.0.7", "s3://bkt/ns/tj", 4)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        pytest.param({"ELASTRA_NPROC_PER_POD": "0"}, "ELASTRA_NPROC_PER_POD", id="zero-nproc"),
        pytest.param({"ELASTRA_CHECKPOINT_KEEP": "many"}, "ELASTRA_CHECKPOINT_KEEP", id="not-a-number"),
        pytest.param({"ELASTRA_CHECKPOINT_EVERY_SECONDS": "-1"}, "EVERY_SECONDS", id="negative"),
        pytest.param({"ELASTRA_TERMINATION_GRACE_SECONDS": "1e999"}, "GRACE", id="overflow"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        PodContract.from_env(env)


def test_empty_means_unset_and_defaults_hold() -> None:
    got: Any = PodContract.from_env({"ELASTRA_CHECKPOINT_URI": " ", "ELASTRA_JOB": "tj"})
    assert got.checkpoint_uri is None and got.nproc_per_pod == 1 and got.checkpoint_keep == 3
