"""Builders of plan() inputs and a readable summary of its outputs (imported by the operator unit tests)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from elastra.api.membership import (
    AgentReport,
    CheckpointRequest,
    CommitReport,
    Member,
    Membership,
    RestorePoint,
)
from elastra.api.trainingjob import TrainingJobSpec, TrainingJobStatus
from elastra_operator.reconcile.actions import (
    Action,
    ApplyObject,
    CreateObject,
    DeleteCheckpoint,
    DeleteJob,
    DeletePod,
    Event,
    Observe,
    PatchStatus,
    WriteMembership,
)
from elastra_operator.reconcile.views import CheckpointView, JobView, NodeView, OperatorRecord, PodView

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
NOW = T0 + dt.timedelta(seconds=1000)
JOB = "tj"


def at(seconds: float) -> dt.datetime:
    """NOW shifted by `seconds` (negative: in the past)."""
    return NOW + dt.timedelta(seconds=seconds)


def spec(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "replicas": {"min": 2, "max": 4},
        "template": {"spec": {"containers": [{"name": "trainer", "image": "img", "command": ["train"]}]}},
        "checkpoint": {"everySteps": 10, "directory": {"path": "/ck", "keep": 2}},
        "elastic": {
            "nodeLossTimeoutSeconds": 30,
            "checkpointDeadlineSeconds": 60,
            "scaleUpCooldownSeconds": 30,
        },
    }
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    return raw


def membership(
    generation: int,
    pods: list[str],
    *,
    phase: str = "Run",
    restore: int | None = None,
    request: CheckpointRequest | None = None,
) -> Membership:
    return Membership(
        generation=generation,
        phase=phase,
        world_size=len(pods),
        master_addr="10.0.0.0" if pods else "",
        members=tuple(
            Member(pod=p, node=f"n{p[-1]}", pod_ip=f"10.0.0.{p[-1]}", rank_start=i, nprocs=1)
            for i, p in enumerate(pods)
        ),
        restore=RestorePoint(checkpoint=f"tj-step-{restore}", step=restore, uri=f"/ck/ns/tj/step-{restore}")
        if restore is not None
        else None,
        checkpoint_request=request,
    )


def request(reason: str = "ScaleUp", ago: float = 10) -> CheckpointRequest:
    return CheckpointRequest(id=f"r-{reason}", reason=reason, requested_at=at(-ago))


def job(
    *,
    m: Membership | None = None,
    record: OperatorRecord | None = None,
    status: dict[str, Any] | None = None,
    restore_from: CheckpointView | None = None,
    missing_secret: str | None = None,
    deleting: bool = False,
    **spec_over: Any,
) -> JobView:
    raw = spec(**spec_over)
    try:
        parsed: TrainingJobSpec | None = TrainingJobSpec.model_validate(raw)
        error = None
    except ValueError as exc:
        parsed, error = None, str(exc)
    return JobView(
        namespace="ns",
        name=JOB,
        uid="uid-1",
        created_at=T0,
        spec=parsed,
        spec_error=error,
        status=TrainingJobStatus.model_validate(status or {}),
        deleting=deleting,
        membership=m,
        record=record or OperatorRecord(),
        membership_version="7" if m is not None else None,
        restore_from=restore_from,
        missing_secret=missing_secret,
    )


def agent(generation: int, state: str, step: int | None = 50, **over: Any) -> AgentReport:
    return AgentReport.model_validate(
        {"generation": generation, "state": state, "step": step, "time": NOW, **over}
    )


def pod(
    index: int,
    *,
    phase: str = "Running",
    node: str | None = "",
    report: AgentReport | None = None,
    commit: CommitReport | None = None,
    created: float = -100,
    **over: Any,
) -> PodView:
    return PodView(
        name=f"tj-w-{index}",
        node=f"n{index}" if node == "" else node,
        phase=phase,
        ip=f"10.0.0.{index}" if phase == "Running" else None,
        created_at=at(created),
        agent=report,
        commit=commit,
        **over,
    )


def node(index: int, **over: Any) -> NodeView:
    return NodeView(name=f"n{index}", ready=over.pop("ready", True), **over)


def nodes(n: int) -> list[NodeView]:
    return [node(i) for i in range(n)]


def ckpt(step: int, *, committed: float = -50, deleting: bool = False, job_name: str = JOB) -> CheckpointView:
    return CheckpointView(
        name=f"{job_name}-step-{step}",
        job=job_name,
        step=step,
        uri=f"/ck/ns/{job_name}/step-{step}",
        world_size=2,
        tiers=("directory",),
        bytes=100,
        committed_at=at(committed),
        deleting=deleting,
    )


def commit(step: int, *, ago: float = 1, request_id: str | None = None) -> CommitReport:
    return CommitReport.model_validate(
        {
            "step": step,
            "uri": f"/ck/ns/tj/step-{step}",
            "tiers": ["directory"],
            "bytes": 1234,
            "manifestDigest": "sha256:00ff",
            "worldSize": 2,
            "formatVersion": 1,
            "generation": 1,
            "commitSeconds": 0.5,
            "requestId": request_id,
            "time": at(-ago),
        }
    )


@dataclass
class Summary:
    """What a plan did, in words a table can compare."""

    membership: Membership | None = None
    record: OperatorRecord | None = None
    created_pods: list[str] = field(default_factory=list)
    created_kinds: list[str] = field(default_factory=list)
    created_checkpoints: list[str] = field(default_factory=list)
    deleted_pods: list[str] = field(default_factory=list)
    forced: list[str] = field(default_factory=list)
    deleted_checkpoints: list[str] = field(default_factory=list)
    status: dict[str, Any] | None = None
    events: list[str] = field(default_factory=list)
    observed: list[str] = field(default_factory=list)
    job_deleted: bool = False
    failure_labels: list[str] = field(default_factory=list)
    pod_manifests: list[dict[str, Any]] = field(default_factory=list)

    @property
    def phase(self) -> str | None:
        return None if self.status is None else self.status.get("phase")


def summarize(actions: tuple[Action, ...]) -> Summary:
    out = Summary()
    for action in actions:
        match action:
            case CreateObject(manifest=manifest) | ApplyObject(manifest=manifest):
                out.created_kinds.append(manifest["kind"])
                if manifest["kind"] == "Pod":
                    out.created_pods.append(manifest["metadata"]["name"])
                    out.pod_manifests.append(manifest)
                elif manifest["kind"] == "Checkpoint":
                    out.created_checkpoints.append(manifest["metadata"]["name"])
            case WriteMembership(membership=m, record=r):
                out.membership, out.record = m, r
            case DeletePod(name=name, force=force):
                out.deleted_pods.append(name)
                if force:
                    out.forced.append(name)
            case DeleteCheckpoint(name=name):
                out.deleted_checkpoints.append(name)
            case PatchStatus(status=status):
                out.status = status
            case Event(reason=reason):
                out.events.append(reason)
            case Observe(metric=metric, labels=labels):
                out.observed.append(metric)
                if metric == "failures":
                    out.failure_labels.append(labels["reason"])
            case DeleteJob():
                out.job_deleted = True
    return out
