"""A restore that fell back past a bad checkpoint: the operator marks it `Verified=False` (plus an Event)
and never restores it again; retention is the operator's alone and never deletes the current restore
point or a checkpoint a generation restored."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from test_operator_support import agent, ckpt, job, membership, pod

from elastra.api.membership import RestoreSkip
from elastra_operator.reconcile.actions import DeleteCheckpoint, Event, MarkUnverified
from elastra_operator.reconcile.commits import record
from elastra_operator.reconcile.generations import restore_point
from elastra_operator.reconcile.views import CheckpointView

PODS = ["tj-w-0", "tj-w-1"]


def fell_back(generation: int, restored: int, *skipped: int) -> dict[str, Any]:
    return {
        "restored_step": restored,
        "restore_skipped": [RestoreSkip(step=s, reason=f"step {s}: checksum mismatch") for s in skipped],
    }


def unverified(c: CheckpointView) -> CheckpointView:
    return dataclasses.replace(c, verified=False)


@pytest.mark.parametrize(
    ("restore", "reports", "known", "marked", "deleted"),
    [
        pytest.param(
            60, [agent(2, "Running", **fell_back(2, 50, 60))] * 2, [ckpt(40), ckpt(50), ckpt(60)],
            ["tj-step-60"], [],
            id="skipped-restore-point-is-marked-once-by-both-reports-and-the-restored-one-kept",
        ),
        pytest.param(
            60, [agent(2, "Running", **fell_back(2, 50, 60)), None],
            [ckpt(40), ckpt(50), unverified(ckpt(60))],
            [], [],
            id="already-unverified-is-not-marked-again-and-does-not-count-toward-keep",
        ),
        pytest.param(
            60, [agent(1, "Running", **fell_back(1, 50, 60)), None], [ckpt(40), ckpt(50), ckpt(60)],
            [], ["tj-step-40"],
            id="report-about-an-older-generation-is-not-acted-on",
        ),
        pytest.param(
            40, [agent(2, "Restoring"), None], [ckpt(40), ckpt(50), ckpt(60)],
            [], [],
            id="retention-never-deletes-the-current-restore-point",
        ),
        pytest.param(
            60, [agent(2, "Running", **fell_back(2, 40, 60, 50)), None],
            [ckpt(40), ckpt(50), ckpt(60), ckpt(70), ckpt(80)],
            ["tj-step-50", "tj-step-60"], ["tj-step-50"],
            id="retention-never-deletes-the-step-a-generation-restored-after-falling-back",
        ),
        pytest.param(
            None, [agent(2, "Running"), None], [ckpt(30), ckpt(40), ckpt(50)],
            [], ["tj-step-30"],
            id="plain-retention-keeps-the-newest-two",
        ),
    ],
)  # fmt: skip
def test_fallback_marks_and_retention(
    restore: int | None,
    reports: list[Any],
    known: list[CheckpointView],
    marked: list[str],
    deleted: list[str],
) -> None:
    j = job(m=membership(2, PODS, restore=restore))  # keep: 2
    pods = [pod(i, report=r) for i, r in enumerate(reports)]
    found = record(j, pods, known)
    assert sorted(a.name for a in found.marks if isinstance(a, MarkUnverified)) == marked
    unusable = [e for e in found.events if isinstance(e, Event) and e.reason == "CheckpointUnusable"]
    assert len(unusable) == len(marked) and all(e.warning for e in unusable)
    assert sorted(a.name for a in found.deletes if isinstance(a, DeleteCheckpoint)) == deleted
    for name in marked:
        view = next(c for c in found.checkpoints if c.name == name)
        assert not view.verified
    point = restore_point(found.checkpoints, None)
    assert point is None or point.checkpoint not in marked, "a marked checkpoint is never picked again"


def test_another_jobs_checkpoint_is_never_marked() -> None:
    """A fork's restore point is the parent job's Checkpoint: this job's reports never mark it."""
    j = job(m=membership(1, PODS, restore=None))
    pods = [pod(0, report=agent(1, "Running", **fell_back(1, 0, 40)))]
    found = record(j, pods, [ckpt(40, job_name="parent")])
    assert not found.marks


def test_restore_point_skips_unverified_checkpoints() -> None:
    point = restore_point([ckpt(40), ckpt(50), unverified(ckpt(60))], None)
    assert point is not None and point.step == 50
