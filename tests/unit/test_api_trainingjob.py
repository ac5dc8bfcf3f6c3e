"""TrainingJob and Checkpoint models: defaults, field-level errors, derived values."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from pydantic import ValidationError

from elastra.api.checkpoint import CheckpointSpec, checkpoint_name
from elastra.api.trainingjob import Phase, TrainingJobSpec, TrainingJobStatus


def _spec(**over: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": {"min": 1, "max": 3},
        "template": {"spec": {"containers": [{"name": "trainer", "image": "x"}]}},
        "checkpoint": {"everySteps": 10, "directory": {"path": "/ckpt"}},
    }
    spec.update(over)
    return spec


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param(_spec(), None, id="minimal-valid"),
        pytest.param(
            _spec(replicas={"min": 4, "max": 2}),
            "replicas.min \\(4\\) must be <= replicas.max",
            id="min-gt-max",
        ),
        pytest.param(_spec(replicas={"min": 0, "max": 2}), "replicas.min", id="min-zero"),
        pytest.param(_spec(nprocPerPod=0), "nprocPerPod", id="nproc-zero"),
        pytest.param(
            _spec(checkpoint={"directory": {"path": "/c"}}),
            "everySteps and/or everySeconds",
            id="no-interval",
        ),
        pytest.param(
            _spec(checkpoint={"everySteps": 0, "directory": {"path": "/c"}}), "everySteps", id="zero-steps"
        ),
        pytest.param(
            _spec(checkpoint={"everySeconds": 0, "directory": {"path": "/c"}}),
            "everySeconds",
            id="zero-seconds",
        ),
        pytest.param(_spec(checkpoint={"everySteps": 5}), "exactly one durable tier", id="no-durable-tier"),
        pytest.param(
            _spec(checkpoint={"everySteps": 5, "directory": {"path": "/c"}, "s3": {"bucket": "bkt"}}),
            "exactly one durable tier",
            id="two-durable-tiers",
        ),
        pytest.param(
            _spec(checkpoint={"everySteps": 5, "directory": {"path": "rel"}}), "path", id="relative-path"
        ),
        pytest.param({"replicas": {"min": 1, "max": 1}}, "template", id="missing-template"),
        pytest.param(
            _spec(elastic={"nodeLossTimeoutSeconds": 0}), "nodeLossTimeoutSeconds", id="zero-node-loss"
        ),
        pytest.param(_spec(replicaz=1), "replicaz", id="typo-is-reported"),
        pytest.param(_spec(runPolicy={"retryableExitCodes": [0]}), "retryableExitCodes", id="exit-code-zero"),
    ],
)
def test_spec_validation_is_field_level(raw: dict[str, Any], error: str | None) -> None:
    if error is None:
        TrainingJobSpec.model_validate(raw)
        return
    with pytest.raises(ValidationError, match=error):
        TrainingJobSpec.model_validate(raw)


def test_defaults() -> None:
    spec = TrainingJobSpec.model_validate(_spec())
    assert spec.elastic.node_loss_timeout_seconds == 30
    assert spec.elastic.checkpoint_deadline_seconds == 120
    assert spec.run_policy.backoff_limit == 6
    assert spec.run_policy.suspend is False
    assert spec.nproc_per_pod == 1


@pytest.mark.parametrize(
    ("checkpoint", "root", "keep"),
    [
        pytest.param(
            {"everySteps": 1, "directory": {"path": "/data/ck/", "keep": 2}}, "/data/ck/ns/j", 2, id="dir"
        ),
        pytest.param(
            {"everySteps": 1, "s3": {"bucket": "bkt", "prefix": "/p/q/"}}, "s3://bkt/p/q/ns/j", 3, id="s3"
        ),
        pytest.param({"everySteps": 1, "s3": {"bucket": "bkt"}}, "s3://bkt/ns/j", 3, id="s3-no-prefix"),
    ],
)
def test_root_uri_and_keep(checkpoint: dict[str, Any], root: str, keep: int) -> None:
    spec = TrainingJobSpec.model_validate(_spec(checkpoint=checkpoint))
    assert spec.checkpoint.root_uri("ns", "j") == root
    assert spec.checkpoint.keep == keep


@pytest.mark.parametrize(
    ("restore_from", "pretrained", "checkpoint", "error"),
    [
        pytest.param("gpt2-step-40", None, "gpt2-step-40", None, id="checkpoint-object"),
        pytest.param("/models/gpt2", "/models/gpt2", None, None, id="directory"),
        pytest.param("s3://hub/models/gpt2", "s3://hub/models/gpt2", None, None, id="s3-prefix"),
        pytest.param("/models/../etc", None, None, "'..'", id="dotdot"),
        pytest.param("s3:///gpt2", None, None, "bucket", id="s3-without-bucket"),
    ],
)
def test_restore_from_is_a_checkpoint_or_a_pretrained_location(
    restore_from: str, pretrained: str | None, checkpoint: str | None, error: str | None
) -> None:
    from elastra.api.trainingjob import CheckpointPolicy

    raw = {"everySteps": 5, "directory": {"path": "/ck"}, "restoreFrom": restore_from}
    if error is not None:
        with pytest.raises(ValidationError, match=error):
            CheckpointPolicy.model_validate(raw)
        return
    policy = CheckpointPolicy.model_validate(raw)
    assert (policy.pretrained_uri, policy.restore_checkpoint) == (pretrained, checkpoint)


def test_status_round_trip_ignores_unknown_keys() -> None:
    status = TrainingJobStatus.model_validate({"phase": "Running", "worldSize": 2, "kopf": {"x": 1}})
    assert status.phase is Phase.RUNNING
    assert status.model_dump(by_alias=True, exclude_none=True)["worldSize"] == 2


def _ckpt(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "job": "j",
        "step": 10,
        "worldSize": 2,
        "formatVersion": 1,
        "uri": "/ck/ns/j/step-10",
        "manifestDigest": "sha256:ab12",
        "committedAt": dt.datetime(2026, 1, 1, tzinfo=dt.UTC).isoformat(),
    }
    raw.update(over)
    return raw


@pytest.mark.parametrize(
    ("raw", "error"),
    [
        pytest.param(_ckpt(), None, id="directory-uri"),
        pytest.param(_ckpt(uri="s3://b/k/step-10/"), None, id="s3-uri"),
        pytest.param(_ckpt(uri="/"), "step-N directory", id="root-is-refused"),
        pytest.param(_ckpt(uri="/ck/ns/j"), "step-N directory", id="job-root-is-refused"),
        pytest.param(_ckpt(uri="rel/step-1"), "absolute path", id="relative-uri"),
        pytest.param(_ckpt(manifestDigest="md5:1"), "manifestDigest", id="bad-digest"),
    ],
)
def test_checkpoint_spec(raw: dict[str, Any], error: str | None) -> None:
    if error is None:
        CheckpointSpec.model_validate(raw)
    else:
        with pytest.raises(ValidationError, match=error):
            CheckpointSpec.model_validate(raw)


def test_checkpoint_name() -> None:
    assert checkpoint_name("tj", 120) == "tj-step-120"
