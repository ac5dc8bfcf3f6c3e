"""The operator ↔ pod agent protocol (docs/protocol.md), as pydantic models.

The operator writes `Membership` into the ConfigMap `<job>-membership` (key `membership.json`). Each
pod agent writes `AgentReport` (annotation `elastra.dev/agent`) and, on the pod of global rank 0,
`CommitReport` (annotation `elastra.dev/commit`) on its own pod. All three are JSON with camelCase keys.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Self

from pydantic import Field, model_validator

from elastra.api.base import StatusModel

PROTOCOL_VERSION = 1
"""Bumped on any incompatible change to the models below."""

MEMBERSHIP_KEY = "membership.json"
"""Key of the membership record inside its ConfigMap."""
AGENT_ANNOTATION = "elastra.dev/agent"
"""Pod annotation holding the agent's `AgentReport`."""
COMMIT_ANNOTATION = "elastra.dev/commit"
"""Pod annotation holding the newest `CommitReport` (written by the pod of global rank 0)."""
JOB_LABEL = "elastra.dev/job"
"""Label on every object that belongs to a TrainingJob."""
ROLE_LABEL = "elastra.dev/role"
"""Label naming what an object is for (`worker`)."""
EXIT_RESTART_CLEAN = 77
"""Worker exit code: its in-memory state can no longer be trusted and a fresh process must start over
(a memory restore failed while reading into the tensors, with no checkpoint to overwrite them). Not the
user's bug and never a permanent failure: the operator restarts the worker in place with the next
generation, whatever `retryableExitCodes` says."""


def membership_configmap_name(job: str) -> str:
    """Name of the ConfigMap carrying a job's membership record."""
    return f"{job}-membership"


class _Wire(StatusModel):
    """JSON on the wire: camelCase keys, unknown keys ignored (a newer writer), values validated."""

    def to_json(self) -> str:
        """Serialize with the wire (camelCase) names."""
        return self.model_dump_json(by_alias=True)


class MembershipPhase(enum.StrEnum):
    """What the agents of a generation are told to do."""

    RUN = "Run"
    """Start, or keep running, the workers of this generation."""
    HOLD = "Hold"
    """Stop the workers and wait (below min replicas, or suspended)."""
    DONE = "Done"
    """The job finished; agents exit with their workers' status."""


class Member(_Wire):
    """One pod of a generation and the ranks it runs."""

    pod: str
    """Pod name."""
    node: str
    """Node the pod runs on."""
    pod_ip: Annotated[str, Field(alias="podIP")]
    """The pod's IP (rank 0's is the master address)."""
    rank_start: Annotated[int, Field(ge=0)]
    """Global rank of this pod's first worker."""
    nprocs: Annotated[int, Field(ge=1)]
    """Workers in this pod; they take ranks `rank_start … rank_start + nprocs - 1`."""


class RestorePoint(_Wire):
    """The committed checkpoint a generation restores."""

    checkpoint: str
    """Name of the Checkpoint object."""
    step: Annotated[int, Field(ge=0)]
    """Training step the checkpoint was taken at."""
    uri: str
    """URI of the checkpoint's step directory (`s3://…/step-N` or a path)."""


class CheckpointRequest(_Wire):
    """An out-of-interval checkpoint the operator wants (planned shrink, grow, suspend)."""

    id: str
    """Unique id; agents echo it in `AgentReport.ack_request` once their workers saw it."""
    reason: str
    """Why: `ScaleUp`, `ScaleDown`, `Suspend`, `Drain`, `User`."""
    requested_at: dt.datetime
    """When the operator asked."""


class Membership(_Wire):
    """The membership record of one generation."""

    protocol: int = PROTOCOL_VERSION
    """Protocol version of the writer."""
    generation: Annotated[int, Field(ge=0)]
    """Grows by one on every membership change; world size and ranks never change within one."""
    phase: MembershipPhase
    """What the listed members do."""
    world_size: Annotated[int, Field(ge=0)]
    """Total ranks of this generation."""
    nproc_per_pod: Annotated[int, Field(ge=1)] = 1
    """Workers per pod."""
    master_addr: str = ""
    """Address of global rank 0's pod."""
    master_port: Annotated[int, Field(ge=0, le=65535)] = 29500
    """Rendezvous port for torch.distributed's TCP store."""
    members: tuple[Member, ...] = ()
    """Pods of the generation, ordered by `rank_start`."""
    restore: RestorePoint | None = None
    """Checkpoint every rank restores; None for a fresh start."""
    checkpoint_request: CheckpointRequest | None = None
    """An out-of-interval checkpoint wanted now, if any."""

    @model_validator(mode="after")
    def _ranks_tile_the_world(self) -> Self:
        expected = 0
        for member in sorted(self.members, key=lambda m: m.rank_start):
            if member.rank_start != expected:
                raise ValueError(
                    f"member {member.pod} starts at rank {member.rank_start}, expected {expected}: "
                    "rank ranges must tile 0..worldSize-1 without gaps or overlaps"
                )
            expected += member.nprocs
        if self.members and expected != self.world_size:
            raise ValueError(f"members hold {expected} ranks but worldSize is {self.world_size}")
        if len({m.pod for m in self.members}) != len(self.members):
            raise ValueError("a pod is listed twice")
        return self

    def member(self, pod: str) -> Member | None:
        """The entry for `pod`, or None when it is not in this generation."""
        return next((m for m in self.members if m.pod == pod), None)


class AgentState(enum.StrEnum):
    """What a pod agent reports about its workers."""

    WAITING = "Waiting"
    RESTORING = "Restoring"
    RUNNING = "Running"
    FAILED = "Failed"
    SUCCEEDED = "Succeeded"
    STOPPED = "Stopped"


class RestoreSkip(_Wire):
    """A checkpoint a generation's restore could not use, and why (the ranks fell back past it)."""

    step: Annotated[int, Field(ge=0)]
    """Its step."""
    reason: Annotated[str, Field(max_length=1024)]
    """What was wrong with it (a rank's error: missing, malformed, failed checksum)."""


class AgentReport(_Wire):
    """A pod agent's view of its workers, on its own pod's annotation."""

    generation: Annotated[int, Field(ge=0)]
    """The generation the report is about."""
    state: AgentState
    """State of the pod's workers in that generation."""
    step: Annotated[int, Field(ge=0)] | None = None
    """Last step any local worker completed."""
    exit_code: int | None = None
    """First non-zero worker exit code (Failed), or 0 (Succeeded)."""
    reason: str | None = None
    """Human-readable cause of a failure."""
    ack_request: str | None = None
    """Id of the newest checkpoint request the workers have seen."""
    restore_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] | None = None
    """How long this generation's restore took on this pod (set from `Running` on, when it restored)."""
    restore_tier: str | None = None
    """Tier the restore read from: `memory`, `local` or `durable` (the job's S3 or directory root), or
    `pretrained` for a first start from pretrained weights."""
    restored_step: Annotated[int, Field(ge=0)] | None = None
    """Step this generation's restore actually loaded; older than the membership's restore point
    when that one was unusable and the ranks fell back, or newer when the memory tier had a newer
    snapshot."""
    restore_skipped: Annotated[tuple[RestoreSkip, ...], Field(max_length=64)] = ()
    """Checkpoints the restore skipped as unusable, newest first (the operator marks them
    `Verified=False` and never restores them again)."""
    time: dt.datetime
    """When the agent wrote this."""


class CommitReport(_Wire):
    """One committed checkpoint, as reported by the pod of global rank 0."""

    step: Annotated[int, Field(ge=0)]
    """Training step of the checkpoint."""
    uri: str
    """URI of the committed step directory in the durable tier."""
    tiers: tuple[str, ...]
    """Tiers that hold the whole checkpoint: `durable` (the job's S3 or directory root), and `local` when
    the node-local copy was written too."""
    bytes: Annotated[int, Field(ge=0)]
    """Total payload bytes."""
    manifest_digest: str
    """`sha256:<hex>` of the manifest."""
    world_size: Annotated[int, Field(ge=1)]
    """World size at save time."""
    format_version: Annotated[int, Field(ge=1)]
    """Checkpoint format version (docs/format.md)."""
    generation: Annotated[int, Field(ge=0)]
    """Generation that wrote it."""
    stall_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    """Time the save blocked the training loop on rank 0."""
    commit_seconds: Annotated[float, Field(ge=0, allow_inf_nan=False)] = 0.0
    """Time from `save()` to the manifest being committed."""
    request_id: str | None = None
    """The checkpoint request this save answered, if any."""
    loss: Annotated[float, Field(allow_inf_nan=False)] | None = None
    """Training loss of the step the checkpoint holds (as passed to `session.step`), if known:
    what hyperparameter search (`elastra.hpo`) reads back per Checkpoint."""
    time: dt.datetime
    """When the manifest was committed."""
