"""Pure checkpoint bookkeeping: agent commit reports become Checkpoint objects; retention trims the rest."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from elastra.api.checkpoint import checkpoint_name

from . import manifests, trust
from .actions import Action, CreateObject, DeleteCheckpoint, Event, Observe
from .reasons import Metric, Reason
from .views import CheckpointView, JobView, PodView


@dataclass(frozen=True, slots=True, kw_only=True)
class Bookkeeping:
    """What one pass does about checkpoints."""

    checkpoints: tuple[CheckpointView, ...]
    """The job's checkpoints by step, including the ones created now."""
    creates: tuple[Action, ...] = ()
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
    keep = job.spec.checkpoint.keep
    alive = [c for c in checkpoints if not c.deleting]
    deletes: list[Action] = [
        DeleteCheckpoint(name=old.name, reason=f"retention keeps {keep}")
        for old in alive[: max(len(alive) - keep, 0)]
    ]
    return Bookkeeping(
        checkpoints=tuple(checkpoints),
        creates=tuple(creates),
        deletes=tuple(deletes),
        events=tuple(events),
        observations=tuple(observations),
    )
