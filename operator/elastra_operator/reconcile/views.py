"""What `plan()` sees: frozen snapshots of the API objects it decides on. Built by `kube`, read by `plan`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from elastra.api.membership import AgentReport, CommitReport, Membership
from elastra.api.trainingjob import TrainingJobSpec, TrainingJobStatus

RECORD_KEY = "operator.json"
"""Key of the operator's bookkeeping in the membership ConfigMap (written with the membership, atomically)."""


class OperatorRecord(BaseModel):
    """Counters and timestamps the operator needs across passes, stored next to the membership record so
    that one ConfigMap write changes both: a restarted operator reads them back and counts nothing twice."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True)

    failures: Annotated[int, Field(ge=0)] = 0
    """Failures counted against backoffLimit."""
    restarts: Annotated[int, Field(ge=0)] = 0
    """Generations after the first."""
    failure_generation: Annotated[int, Field(ge=-1)] = -1
    """Generation whose failure was last counted (a generation fails at most once)."""
    failure_detected_at: dt.datetime | None = None
    """When the unrecovered failure was detected; cleared once training resumes."""
    failure_step: int | None = None
    """Step reached when the failure was detected (steps lost = this - restore step)."""
    rescale_reason: str | None = None
    """Why the current generation was started."""
    last_rescale_at: dt.datetime | None = None
    """When the current generation was written."""
    started_at: dt.datetime | None = None
    """When the first generation was written."""
    outcome: str | None = None
    """`Succeeded` or `Failed` once the job finished (written with membership phase Done)."""
    outcome_reason: str | None = None
    """Why it finished (`AllRanksSucceeded`, `BackoffLimitExceeded`, `WorkerFailed`, …)."""
    outcome_message: str | None = None
    """A sentence for a person."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PodView:
    """A worker pod of the job."""

    name: str
    """Pod name."""
    node: str | None
    """Node it is bound to (None while unscheduled)."""
    phase: str
    """Pod phase: Pending, Running, Succeeded, Failed, Unknown."""
    ip: str | None = None
    """Pod IP once running."""
    created_at: dt.datetime
    """metadata.creationTimestamp."""
    deleting: bool = False
    """metadata.deletionTimestamp is set."""
    deletion_deadline: dt.datetime | None = None
    """metadata.deletionTimestamp: when the kubelet kills what still runs (end of the grace period)."""
    reason: str | None = None
    """status.reason (`Evicted`, …)."""
    exit_code: int | None = None
    """Exit code of the first terminated container, if any."""
    agent: AgentReport | None = None
    """The `elastra.dev/agent` annotation, parsed (None when absent or unreadable)."""
    commit: CommitReport | None = None
    """The `elastra.dev/commit` annotation, parsed."""


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeView:
    """A cluster node."""

    name: str
    ready: bool
    """Ready condition is True."""
    not_ready_since: dt.datetime | None = None
    """lastTransitionTime of the Ready condition when not ready."""
    unschedulable: bool = False
    """Cordoned."""
    labels: Mapping[str, str] = field(default_factory=dict)
    gpus: int = 0
    """Allocatable `nvidia.com/gpu`."""
    taints: tuple[tuple[str, str, str], ...] = ()
    """(key, value, effect) of its NoSchedule / NoExecute taints."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CheckpointView:
    """A Checkpoint object."""

    name: str
    job: str
    step: int
    uri: str
    world_size: int
    tiers: tuple[str, ...] = ()
    bytes: int = 0
    committed_at: dt.datetime
    deleting: bool = False
    verified: bool = True
    unverified_reason: str | None = None
    """The reason of its `Verified=False` condition (`RestoreFailed` when a restore marked it)."""
    """False once a restore reported it unusable (condition `Verified=False`): never restored again,
    unless the trainers save its step again (`commits.recommitted`)."""
    manifest_digest: str = ""
    """`spec.manifestDigest`: which save of the step the object describes."""
    generation: int = 0
    """`spec.generation`: the generation that wrote that save."""


@dataclass(frozen=True, slots=True, kw_only=True)
class JobView:
    """A TrainingJob and the records the operator keeps for it."""

    namespace: str
    name: str
    uid: str
    created_at: dt.datetime
    spec: TrainingJobSpec | None
    """Parsed spec; None when it does not validate (then `spec_error` says why)."""
    spec_error: str | None = None
    status: TrainingJobStatus = field(default_factory=TrainingJobStatus)
    deleting: bool = False
    membership: Membership | None = None
    """The current membership record; None before the first write."""
    record: OperatorRecord = field(default_factory=OperatorRecord)
    membership_version: str | None = None
    """resourceVersion of the membership ConfigMap: writes are conditional on it."""
    restore_from: CheckpointView | None = None
    """The Checkpoint named by `spec.checkpoint.restoreFrom`, when it exists."""
    missing_secret: str | None = None
    """Name of the S3 credentials Secret when the job names one that does not exist."""
    endpoint_refused: str | None = None
    """Why the job's S3 endpoint is outside the operator's allow-list (`trust.endpoint_refusal`)."""
    create_failure: str | None = None
    """The API's answer to the last create the operator could not make for this job, while it retries
    with backoff (Ready=False, reason CreateFailed)."""
