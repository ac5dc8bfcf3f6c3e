"""Pure helpers for the job's status: conditions that keep their transition time, and change detection."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from elastra.api.membership import Membership, MembershipPhase
from elastra.api.trainingjob import Condition, LastCheckpoint, MemberStatus, Phase, TrainingJobStatus

from .reasons import Reason
from .views import CheckpointView, OperatorRecord, PodView


def set_condition(
    conditions: tuple[Condition, ...],
    *,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    now: dt.datetime,
) -> tuple[Condition, ...]:
    """Pure: `conditions` with `type_` set; lastTransitionTime moves only when the status flips."""
    value = "True" if status else "False"
    old = next((c for c in conditions if c.type == type_), None)
    since = old.last_transition_time if old is not None and old.status == value else now
    new = Condition(type=type_, status=value, reason=reason, message=message, last_transition_time=since)
    return (*(c for c in conditions if c.type != type_), new)


def status_body(status: TrainingJobStatus) -> dict[str, Any]:
    """The status as the API stores it (camelCase JSON)."""
    body: dict[str, Any] = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    return body


def changed(old: TrainingJobStatus, new: TrainingJobStatus) -> bool:
    """Whether a status patch is needed."""
    return status_body(old) != status_body(new)


CREATE_FAILED = Reason.CREATE_FAILED
"""Ready condition reason (and Event reason): an object of the job could not be created."""


def build_status(
    *,
    previous: TrainingJobStatus,
    membership: Membership,
    record: OperatorRecord,
    phase: Phase,
    conditions: tuple[Condition, ...],
    pods: Sequence[PodView],
    checkpoints: Sequence[CheckpointView],
    completion: dt.datetime | None,
    now: dt.datetime,
    create_failure: str | None = None,
) -> TrainingJobStatus:
    """Pure: the status a pass leaves, mirroring the membership record, the operator record and the newest
    checkpoint (`checkpoints` sorted by step)."""
    m = membership
    steps = [
        p.agent.step
        for p in pods
        if p.agent is not None and p.agent.step is not None and m.member(p.name) is not None
    ]
    newest = checkpoints[-1] if checkpoints else None
    last = None
    if newest is not None:
        last = LastCheckpoint(
            name=newest.name,
            step=newest.step,
            tiers=newest.tiers,
            bytes=newest.bytes,
            time=newest.committed_at,
        )
    ready = phase is Phase.RUNNING
    if create_failure is not None and not phase.finished:
        conditions = set_condition(
            conditions, type_="Ready", status=False, reason=CREATE_FAILED, message=create_failure, now=now
        )
    else:
        conditions = set_condition(
            conditions, type_="Ready", status=ready, reason=phase.value, message="", now=now
        )
    return TrainingJobStatus(
        phase=phase,
        conditions=conditions,
        world_size=m.world_size if m.phase is MembershipPhase.RUN else 0,
        generation=m.generation,
        members=tuple(
            MemberStatus(pod=x.pod, node=x.node, ranks=tuple(range(x.rank_start, x.rank_start + x.nprocs)))
            for x in m.members
        ),
        step=max(steps, default=previous.step),
        last_checkpoint=last,
        restarts=record.restarts,
        failures=record.failures,
        start_time=record.started_at,
        completion_time=completion,
    )
