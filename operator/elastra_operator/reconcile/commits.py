"""Pure checkpoint bookkeeping: agent commit reports become Checkpoint objects (or re-verify an unusable
one whose step was saved again); restore reports mark unusable ones; retention trims the rest."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from elastra.api.checkpoint import checkpoint_name
from elastra.api.membership import CommitReport

from . import manifests, trust
from .actions import Action, CreateObject, DeleteCheckpoint, Event, MarkUnverified, Observe, Reverify
from .reasons import Metric, Reason
from .views import CheckpointView, JobView, PodView


@dataclass(frozen=True, slots=True, kw_only=True)
class Bookkeeping:
    """What one pass does about checkpoints."""

    checkpoints: tuple[CheckpointView, ...]
    """The job's checkpoints by step, including the ones created now."""
    creates: tuple[Action, ...] = ()
    marks: tuple[Action, ...] = ()
    """`Verified=False` on checkpoints a restore found unusable, then `Reverify` of those saved again."""
    deletes: tuple[Action, ...] = ()
    events: tuple[Action, ...] = ()
    observations: tuple[Action, ...] = ()


EVENT_CHARS = 1024
"""Longest message of an Event or condition built from a pod's report (its fields are the pod's to choose)."""


def _trusted_object(job: JobView, pod: PodView, commit: CommitReport) -> dict[str, Any] | Event:
    """The Checkpoint object a pod's commit report asks for, or the Event that says why it is refused
    (the report fails the trust checks, or cannot make a valid object)."""
    problem = trust.commit_problem(job, pod, commit)
    if problem is not None:
        message = f"{pod.name}: commit of step {commit.step} ignored: {problem}"
        return Event(reason=Reason.COMMIT_REJECTED, message=message[:EVENT_CHARS], warning=True)
    try:
        return manifests.checkpoint_object(job, commit)
    except ValueError as exc:
        return Event(
            reason=Reason.BAD_COMMIT_REPORT, message=f"{pod.name}: {exc}"[:EVENT_CHARS], warning=True
        )


def record(job: JobView, pods: Sequence[PodView], known: Sequence[CheckpointView]) -> Bookkeeping:
    """Pure: a Checkpoint object for every commit report not yet recorded, `Verified=False` on those a
    restore skipped, re-verification of those saved again, and retention of `keep`."""
    assert job.spec is not None
    checkpoints = list(known)
    names = {c.name for c in checkpoints}
    creates: list[Action] = []
    events: list[Action] = []
    observations: list[Action] = []
    for pod in pods:
        commit = pod.commit
        if commit is None or checkpoint_name(job.name, commit.step) in names:
            continue
        manifest = _trusted_object(job, pod, commit)
        if isinstance(manifest, Event):
            events.append(manifest)
            continue
        name = checkpoint_name(job.name, commit.step)
        names.add(name)
        creates.append(CreateObject(manifest=manifest))
        checkpoints.append(_view(job, commit))
        tiers = ", ".join(commit.tiers)
        events.append(
            Event(
                reason=Reason.CHECKPOINT_COMMITTED,
                message=f"{name}: step {commit.step}, {commit.bytes} bytes in {tiers} "
                f"({commit.commit_seconds:.2f}s)"[:EVENT_CHARS],
            )
        )
        observations.append(Observe(metric=Metric.CHECKPOINT_COMMIT_SECONDS, value=commit.commit_seconds))
    checkpoints.sort(key=lambda c: c.step)
    checkpoints, marks = unusable(job, pods, checkpoints)
    checkpoints, reverified = recommitted(job, pods, checkpoints)
    marks.extend(reverified)
    events.extend(a for a in marks if isinstance(a, Event))
    observations.extend(a for a in marks if isinstance(a, Observe))
    deletes = retention(job, pods, checkpoints)
    return Bookkeeping(
        checkpoints=tuple(checkpoints),
        creates=tuple(creates),
        marks=tuple(a for a in marks if isinstance(a, MarkUnverified | Reverify)),
        deletes=tuple(deletes),
        events=tuple(events),
        observations=tuple(observations),
    )


def _view(job: JobView, commit: CommitReport, *, verified: bool = True) -> CheckpointView:
    """What the Checkpoint object made from `commit` looks like to the next `plan()`."""
    return CheckpointView(
        name=checkpoint_name(job.name, commit.step),
        job=job.name,
        step=commit.step,
        uri=commit.uri,
        world_size=commit.world_size,
        tiers=commit.tiers,
        bytes=commit.bytes,
        committed_at=commit.time,
        verified=verified,
        manifest_digest=commit.manifest_digest,
        generation=commit.generation,
    )


def _restorers(job: JobView, pods: Sequence[PodView]) -> list[PodView]:
    """Member pods whose agent reports on the current generation (reports about older ones, or from
    pods outside it, are not acted on)."""
    m = job.membership
    if m is None:
        return []
    members = {x.pod for x in m.members}
    return [
        p for p in pods if p.name in members and p.agent is not None and p.agent.generation == m.generation
    ]


def unusable(
    job: JobView, pods: Sequence[PodView], checkpoints: list[CheckpointView]
) -> tuple[list[CheckpointView], list[Action]]:
    """Pure: the job's own Checkpoints that the current generation's restore skipped as unusable get
    `Verified=False` and an Event, once; `restore_point` never picks them again. Only this job's
    Checkpoints are marked (a fork's `restoreFrom` source belongs to another job), and only saves
    older than the current generation: its restore ran before any of its own commits, so its
    `restoreSkipped` (kept on the pods for the whole generation) never speaks of a step it saved again
    since (`recommitted`); without this the two would flip the same object every pass."""
    generation = job.membership.generation if job.membership is not None else 0
    reported: dict[int, str] = {}
    for pod in _restorers(job, pods):
        assert pod.agent is not None
        for skip in pod.agent.restore_skipped:
            reported.setdefault(skip.step, f"{pod.name}: {skip.reason}")
    actions: list[Action] = []
    out = []
    for known in checkpoints:
        c = known
        reason = reported.get(c.step)
        if reason is not None and c.verified and c.job == job.name and c.generation < generation:
            message = f"a restore found step {c.step} unusable ({reason}); it is never restored again"
            actions.append(
                MarkUnverified(name=c.name, reason=Reason.RESTORE_FAILED, message=message[:EVENT_CHARS])
            )
            actions.append(
                Event(
                    reason=Reason.CHECKPOINT_UNUSABLE,
                    message=f"{c.name}: {message}"[:EVENT_CHARS],
                    warning=True,
                )
            )
            c = dataclasses.replace(c, verified=False, unverified_reason=Reason.RESTORE_FAILED)
        out.append(c)
    return out, actions


def recommitted(
    job: JobView, pods: Sequence[PodView], checkpoints: list[CheckpointView]
) -> tuple[list[CheckpointView], list[Action]]:
    """Pure: a `Verified=False` Checkpoint of this job whose step the trainers saved again (a generation
    that fell back past it trained forward and committed the same step) gets the new save's spec and
    `Verified=True` (reason `Recommitted`), with an Event, so it can be restored again.

    Only from a commit report that passes `trust.commit_problem` (rank 0 of the current generation,
    the job's own `uri`), only onto an object that is this job's, not being deleted, still
    `Verified=False`, and only when the commit is a different save: its `manifestDigest` differs from
    the spec's (a re-save writes fresh, uniquely named shard files and a new manifest that atomically
    replaces the old one, so its digest differs; the old, corrupt save reported again, or a stale
    report from an older generation, changes nothing). The one same-digest case acted on is a pass cut
    short between the two writes (spec already replaced by this generation's commit, status still
    False, reason `RestoreFailed`): `unusable` never marks a save of the current generation, so such a
    state can only be that. A `Verified=False` with any other reason (a person quarantining the save)
    is left alone unless a new save replaces it.

    Abuse: only rank 0 of the current generation can do this, and it can already commit any new step
    with whatever content; claiming a new digest for a save it did not make buys it nothing more —
    the next restore reads the step directory, finds it unusable again, falls back and marks it
    `Verified=False` again (the digest it claimed is then the spec's, so repeating the claim does
    nothing). A restore never trusts a Checkpoint's spec for the content: it verifies every shard.
    The decision reads only the API (spec digest and generation, the condition, the pod's report), so
    an operator restart carries on where the last one stopped; once re-verified the object is
    `Verified=True` and later passes leave it alone."""
    by_name = {c.name: i for i, c in enumerate(checkpoints)}
    out = list(checkpoints)
    actions: list[Action] = []
    for pod in pods:
        commit = pod.commit
        if commit is None:
            continue
        i = by_name.get(checkpoint_name(job.name, commit.step))
        if i is None:
            continue
        c = out[i]
        if c.verified or c.deleting or c.job != job.name or commit.generation < c.generation:
            continue
        resaved = commit.manifest_digest != c.manifest_digest
        if not resaved and (
            commit.generation != c.generation or c.unverified_reason != Reason.RESTORE_FAILED
        ):
            continue  # the save found unusable reported again, or a Verified=False a person set
        manifest = _trusted_object(job, pod, commit)
        if isinstance(manifest, Event):
            if resaved or manifest.reason != Reason.COMMIT_REJECTED:  # an old refusal is not news
                actions.append(manifest)
            continue
        message = (
            f"step {commit.step} was saved again by generation {commit.generation} "
            f"(manifest {commit.manifest_digest}); it is usable again"
        )
        actions.append(
            Reverify(
                name=c.name,
                spec=manifest["spec"] if resaved else None,
                expected_digest=c.manifest_digest,
                reason=Reason.RECOMMITTED,
                message=message[:EVENT_CHARS],
            )
        )
        actions.append(
            Event(reason=Reason.CHECKPOINT_RECOMMITTED, message=f"{c.name}: {message}"[:EVENT_CHARS])
        )
        if resaved:
            actions.append(Observe(metric=Metric.CHECKPOINT_COMMIT_SECONDS, value=commit.commit_seconds))
        out[i] = _view(job, commit)
    return out, actions


def retention(job: JobView, pods: Sequence[PodView], checkpoints: list[CheckpointView]) -> list[Action]:
    """Pure: delete the oldest Checkpoints beyond `keep` usable ones. Never the current generation's
    restore point, nor a checkpoint one of its pods reports it restored (after a fallback), nor
    unusable ones newer than the newest kept (left for a person to look at until newer commits pass
    them). The operator is the only owner of durable retention under a job (trainers prune only their
    node-local tier)."""
    assert job.spec is not None
    keep = job.spec.checkpoint.keep
    protected: set[str | int] = set()
    if job.membership is not None and job.membership.restore is not None:
        protected.add(job.membership.restore.checkpoint)
    for pod in _restorers(job, pods):
        assert pod.agent is not None
        if pod.agent.restored_step is not None:
            protected.add(pod.agent.restored_step)
    alive = [c for c in checkpoints if not c.deleting]
    kept = [c for c in alive if c.verified][-keep:]
    oldest_kept = kept[0].step if kept else None
    doomed = [
        c
        for c in alive
        if c not in kept and oldest_kept is not None and c.step < oldest_kept
        and c.name not in protected and c.step not in protected
    ]  # fmt: skip
    return [DeleteCheckpoint(name=c.name, reason=f"retention keeps {keep}") for c in doomed]
