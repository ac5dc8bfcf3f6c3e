"""A restore that fell back past a bad checkpoint: the operator marks it `Verified=False` (plus an Event)
and never restores it again; retention is the operator's alone and never deletes the current restore
point or a checkpoint a generation restored."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from test_operator_support import agent, ckpt, commit, job, membership, pod

from elastra.api.membership import CommitReport, RestoreSkip
from elastra_operator.reconcile.actions import DeleteCheckpoint, Event, MarkUnverified, Reverify
from elastra_operator.reconcile.commits import record
from elastra_operator.reconcile.generations import restore_point
from elastra_operator.reconcile.manifests import checkpoint_object
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


OLD, NEW = "sha256:0a0a", "sha256:0b0b"


def saved(step: int, digest: str, generation: int, *, verified: bool = True, **over: Any) -> CheckpointView:
    """The Checkpoint of one save of `step`; unverified as a restore marks it (reason RestoreFailed)."""
    c = dataclasses.replace(
        ckpt(step), manifest_digest=digest, generation=generation, verified=verified,
        unverified_reason=None if verified else "RestoreFailed",
    )  # fmt: skip
    return dataclasses.replace(c, **over)


def resave(step: int, digest: str, generation: int) -> CommitReport:
    return commit(step).model_copy(update={"manifest_digest": digest, "generation": generation})


# Generation 2 fell back past step 60 (saved by generation 1, digest OLD) to 50 and trains on.
FELL_BACK = agent(2, "Running", **fell_back(2, 50, 60))


@pytest.mark.parametrize(
    ("known60", "report", "commit_on", "reverified", "events"),
    [
        pytest.param(
            saved(60, OLD, 1, verified=False), resave(60, NEW, 2), 0, True, ["CheckpointRecommitted"],
            id="unverified-step-saved-again-with-a-new-manifest-is-replaced-and-verified",
        ),
        pytest.param(
            saved(60, OLD, 1), resave(60, NEW, 2), 0, True, ["CheckpointUnusable", "CheckpointRecommitted"],
            id="skip-and-re-save-seen-in-one-pass-mark-then-reverify",
        ),
        pytest.param(
            saved(60, NEW, 2, verified=False), resave(60, NEW, 2), 0, True, ["CheckpointRecommitted"],
            id="pass-cut-short-after-the-spec-write-finishes-with-the-status",
        ),
        pytest.param(
            saved(60, OLD, 1, verified=False), resave(60, OLD, 1), 0, False, [],
            id="the-corrupt-save-reported-again-changes-nothing",
        ),
        pytest.param(
            saved(60, NEW, 2, verified=False, unverified_reason="Quarantined"), resave(60, NEW, 2), 0, False,
            [],
            id="a-verified-false-a-person-set-is-not-undone-by-the-same-save-reported-again",
        ),
        pytest.param(
            saved(60, OLD, 1, verified=False), resave(60, OLD, 2), 0, False, [],
            id="same-digest-from-a-later-generation-is-no-new-save",
        ),
        pytest.param(
            saved(60, NEW, 2), resave(60, NEW, 2), 0, False, [],
            id="once-reverified-the-still-reported-skip-never-flips-it-again",
        ),
        pytest.param(
            saved(60, OLD, 1, verified=False, deleting=True), resave(60, NEW, 2), 0, False, [],
            id="a-checkpoint-being-deleted-is-left-to-its-finalizer",
        ),
        pytest.param(
            saved(60, OLD, 1, verified=False, job="other"), resave(60, NEW, 2), 0, False, [],
            id="another-jobs-checkpoint-is-never-touched",
        ),
        pytest.param(
            saved(60, OLD, 1, verified=False), resave(60, NEW, 2), 1, False, ["CommitRejected"],
            id="a-re-save-reported-by-a-pod-other-than-rank-0-is-rejected",
        ),
        pytest.param(
            saved(60, OLD, 1, verified=False), resave(60, NEW, 1), 0, False, ["CommitRejected"],
            id="a-different-save-claimed-by-an-older-generation-is-rejected",
        ),
        pytest.param(
            saved(60, NEW, 2, verified=False), resave(60, OLD, 1), 0, False, [],
            id="a-report-older-than-the-save-the-object-describes-never-replaces-it",
        ),
    ],
)  # fmt: skip
def test_unusable_step_saved_again_is_verified_again(
    known60: CheckpointView, report: CommitReport, commit_on: int, reverified: bool, events: list[str]
) -> None:
    j = job(m=membership(2, PODS, restore=60))
    pods = [pod(i, report=FELL_BACK, commit=report if i == commit_on else None) for i in range(2)]
    found = record(j, pods, [ckpt(40), ckpt(50), known60])
    reverify = [a for a in found.marks if isinstance(a, Reverify)]
    checkpoint_events = [
        e.reason for e in found.events if isinstance(e, Event) and e.reason != "CheckpointDeleted"
    ]
    assert checkpoint_events == events
    assert not found.creates, "a step that has a Checkpoint never gets a second one"
    view = next(c for c in found.checkpoints if c.step == 60)
    if not reverified:
        assert not reverify and view == known60
        return
    (action,) = reverify
    assert action.name == "tj-step-60" and action.reason == "Recommitted"
    assert action.expected_digest == known60.manifest_digest
    if known60.manifest_digest == report.manifest_digest:
        assert action.spec is None, "the spec already is the new save's"
    else:
        assert action.spec == checkpoint_object(j, report)["spec"], "the spec a new object would get"
    assert isinstance(found.marks[-1], Reverify), "after any Verified=False of the same pass"
    assert view.verified and (view.manifest_digest, view.generation) == (NEW, 2)
    point = restore_point(found.checkpoints, None)
    assert point is not None and point.checkpoint == "tj-step-60", "restorable again"


def test_reverified_view_is_stable_across_passes() -> None:
    """What the API holds after a re-verification decides nothing on the next pass (or after a restart)."""
    j = job(m=membership(2, PODS, restore=60))
    pods = [pod(0, report=FELL_BACK, commit=resave(60, NEW, 2)), pod(1, report=FELL_BACK)]
    first = record(j, pods, [ckpt(40), ckpt(50), saved(60, OLD, 1, verified=False)])
    second = record(j, pods, list(first.checkpoints))
    assert any(isinstance(a, Reverify) for a in first.marks)
    assert not second.marks and not second.events and second.checkpoints == first.checkpoints
