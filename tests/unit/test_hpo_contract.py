"""A trial loss travels with the commit: CommitReport.loss -> Checkpoint spec.loss (read by elastra.hpo)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError
from test_operator_support import commit, job

from elastra.api.checkpoint import CheckpointSpec
from elastra.api.membership import CommitReport
from elastra_operator.reconcile import manifests


@pytest.mark.parametrize(
    ("loss", "expected"),
    [
        pytest.param(2.5, 2.5, id="reported-loss-copied"),
        pytest.param(None, None, id="no-loss-no-field"),
    ],
)
def test_checkpoint_object_carries_the_commit_loss(loss: float | None, expected: float | None) -> None:
    report = commit(40).model_copy(update={"loss": loss})
    spec = manifests.checkpoint_object(job(), report)["spec"]
    assert spec.get("loss") == expected
    assert CheckpointSpec.model_validate(spec).loss == expected


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(float("nan"), id="nan"),
        pytest.param(float("inf"), id="inf"),
        pytest.param("low", id="not-a-number"),
    ],
)
def test_a_hostile_loss_in_a_commit_report_is_rejected(bad: Any) -> None:
    raw = commit(40).model_dump(mode="json", by_alias=True)
    with pytest.raises(ValidationError):
        CommitReport.model_validate({**raw, "loss": bad})
