"""Pure checkpoint bookkeeping: agent commit reports become Checkpoint objects; retention trims the rest."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from elastra.api.checkpoint import checkpoint_name

from . import manifests, trust
from .actions import Action, CreateObject, DeleteCheckpoint, Event, MarkUnverified, Observe
from .reasons import Metric, Reason
from .views import CheckpointView, JobView, PodView


@dataclass(frozen=True, slots=True, kw_only=True)
class Bookkeeping:
    """What one pass does about checkpoints."""

    checkpoints: tuple[CheckpointView, ...]
    """The job's checkpoints by step, including the ones created now."""
    creates: tuple[Action, ...] = ()
    marks: tuple[Action, ...] = ()
    """`Verified=False` on checkpoints a restore found unusable."""
    deletes: tuple[Action, ...] = ()
    events: tuple[Action, ...] = ()
    observations: tuple[Action, ...] = ()


def record(job: JobView, pods: Sequence[PodView], known: Sequence[CheckpointView]) -> Bookkeeping:
    """Pure: a Checkpoint object for every commit report not yet recorded, and retention of `keep`."""
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
        problem = trust.commit_problem(job, pod, commit)
        if problem is not None:
            message = f"{pod.name}: commit of step {commit.step} ignored: {problem}"
            events.append(Event(reason=Reason.COMMIT_REJECTED, message=message, warning=True))
            continue
        try:
            manifest = manifests.checkpoint_object(job, commit)
        except ValueError as exc:
            events.append(Event(reason=Reason.BAD_COMMIT_REPORT, message=f"{pod.name}: {exc}", warning=True))
            continue
        name = checkpoint_name(job.name, commit.step)
        names.add(name)
        creates.append(CreateObject(manifest=manifest))
        checkpoints.append(
            CheckpointView(
                name=name,
                job=job.name,
                step=commit.step,
                uri=commit.uri,
                world_size=commit.world_size,
                tiers=commit.tiers,
                bytes=commit.bytes,
                committed_at=commit.time,
            )
        )
        tiers = ", ".join(commit.tiers)
        events.append(
            Event(
                reason=Reason.CHECKPOINT_COMMITTED,
                message=f"{name}: step {commit.step}, {commit.bytes} bytes in {tiers} "
                f"({commit.commit_seconds:.2f}s)",
            )
        )
        observations.append(Observe(metric=Metric.CHECKPOINT_COMMIT_SECONDS, value=commit.commit_seconds))
    checkpoints.sort(key=lambda c: c.step)
    checkpoints, marks = unusable(job, pods, checkpoints)
    events.extend(a for a in marks if isinstance(a, Event))
    deletes = retention(job, pods, checkpoints)
    return Bookkeeping(
        checkpoints=tuple(checkpoints),
        creates=tuple(creates),
        marks=tuple(a for a in marks if isinstance(a, MarkUnverified)),
        deletes=tuple(deletes),
        events=tuple(events),
        observations=tuple(observations),
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
    Checkpoints are marked (a fork's `restoreFrom` source belongs to another job)."""
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
        if reason is not None and c.verified and c.job == job.name:
            message = f"a restore found step {c.step} unusable ({reason}); it is never restored again"
            actions.append(MarkUnverified(name=c.name, reason="RestoreFailed", message=message[:1024]))
            actions.append(
                Event(reason="CheckpointUnusable", message=f"{c.name}: {message}"[:1024], warning=True)
            )
            c = dataclasses.replace(c, verified=False)
        out.append(c)
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
