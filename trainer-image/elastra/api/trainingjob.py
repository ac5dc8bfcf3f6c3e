"""The `TrainingJob` custom resource (group `elastra.dev`, version `v1alpha1`) as pydantic models.

The CRD in `crds/` is generated from `TrainingJobSpec` and `TrainingJobStatus` (`elastra crds`). Cross-field
rules the schema can say (min ≤ max, one durable tier) are both pydantic validators and CEL rules
(`x-kubernetes-validations`) in the generated schema, so the API server and the operator agree.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Annotated, Any, Self

from pydantic import ConfigDict, Field, model_validator

from elastra.api.base import SpecModel, StatusModel
from elastra.api.memory import MemoryTier

KIND = "TrainingJob"
PLURAL = "trainingjobs"
SHORT_NAME = "tj"


def _cel(rule: str, message: str) -> dict[str, Any]:
    """A CEL rule for the generated CRD schema (see crdgen)."""
    return {"x-kubernetes-validations": [{"rule": rule, "message": message}]}


class Replicas(SpecModel):
    """How many worker pods the job may run."""

    model_config = ConfigDict(json_schema_extra=_cel("self.min <= self.max", "replicas.min must be <= max"))

    min: Annotated[int, Field(ge=1)]
    """Fewest worker pods the job trains with; below it the job holds and waits for capacity."""
    max: Annotated[int, Field(ge=1)]
    """Most worker pods; the job grows to it when schedulable capacity appears."""

    @model_validator(mode="after")
    def _min_le_max(self) -> Self:
        if self.min > self.max:
            raise ValueError(f"replicas.min ({self.min}) must be <= replicas.max ({self.max})")
        return self


class LocalTier(SpecModel):
    """Node-local NVMe tier: fast saves and restores on the same node."""

    path: Annotated[str, Field(min_length=2, pattern=r"^/")]
    """Absolute hostPath directory on every node."""
    keep: Annotated[int, Field(ge=1)] = 2
    """Checkpoints kept per node (the pod agent prunes older ones)."""


class S3Tier(SpecModel):
    """Durable S3 tier."""

    bucket: Annotated[str, Field(min_length=3)]
    """Bucket name."""
    prefix: str = ""
    """Key prefix; checkpoints go to `<prefix>/<namespace>/<job>/step-N/`."""
    endpoint: str | None = None
    """Endpoint URL for S3-compatible stores (MinIO, moto); AWS when unset."""
    region: str = "us-east-1"
    """Region name."""
    credentials_secret: str | None = None
    """Secret in the job's namespace with keys `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`."""
    keep: Annotated[int, Field(ge=1)] = 3
    """Committed checkpoints kept; older Checkpoint objects (and their storage) are deleted."""


class DirectoryTier(SpecModel):
    """Durable tier on a shared filesystem (a PVC, NFS, or on localcluster the machine's disk)."""

    path: Annotated[str, Field(min_length=2, pattern=r"^/")]
    """Absolute directory; checkpoints go to `<path>/<namespace>/<job>/step-N/`."""
    keep: Annotated[int, Field(ge=1)] = 3
    """Committed checkpoints kept; older Checkpoint objects (and their storage) are deleted."""


def is_location(restore_from: str) -> bool:
    """Whether a `restoreFrom` value is a storage location (absolute path or `s3://`), not a Checkpoint
    object's name (Kubernetes names hold neither `/` nor `:`). Pure."""
    return restore_from.startswith(("/", "s3://"))


class CheckpointPolicy(SpecModel):
    """When and where the trainers checkpoint."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.everySteps) || has(self.everySeconds)",
                    "message": "checkpoint needs everySteps and/or everySeconds",
                },
                {
                    "rule": "has(self.s3) != has(self.directory)",
                    "message": "checkpoint needs exactly one durable tier: s3 or directory",
                },
            ]
        }
    )

    every_steps: Annotated[int, Field(ge=1)] | None = None
    """Save every N steps."""
    every_seconds: Annotated[float, Field(gt=0)] | None = None
    """Save at the first step boundary after this many seconds."""
    local: LocalTier | None = None
    """Optional node-local tier."""
    s3: S3Tier | None = None
    """Durable S3 tier (exactly one of `s3` and `directory`)."""
    directory: DirectoryTier | None = None
    """Durable shared-filesystem tier (exactly one of `s3` and `directory`)."""
    restore_from: Annotated[str, Field(min_length=1)] | None = None
    """Where the job's first generation starts from: a Checkpoint object (same namespace, possibly
    another job's: fork), or a Hugging Face model location (an absolute directory or `s3://bucket/prefix`
    holding `model.safetensors` or shards with `model.safetensors.index.json`: fine-tune from
    pretrained weights, with a fresh optimizer at step 0). Once the job has its own checkpoints, they
    are what it restores."""
    memory: MemoryTier | None = None
    """Optional in-memory snapshots with erasure coding across nodes (REFT): restore after a worker or
    node loss from the pods' memory, at most `memory.everySteps` steps back."""

    @property
    def pretrained_uri(self) -> str | None:
        """`restore_from` when it is a Hugging Face model location, else None."""
        return self.restore_from if self.restore_from and is_location(self.restore_from) else None

    @property
    def restore_checkpoint(self) -> str | None:
        """`restore_from` when it names a Checkpoint object, else None."""
        return self.restore_from if self.restore_from and not is_location(self.restore_from) else None

    @model_validator(mode="after")
    def _interval_and_tier(self) -> Self:
        where = self.restore_from
        if where is not None and is_location(where):
            if ".." in where.split("/") or "//" in where.removeprefix("s3://"):
                raise ValueError(f"restoreFrom {where!r}: no '..' or empty path components")
            if where.startswith("s3://") and not where.removeprefix("s3://").split("/")[0]:
                raise ValueError(f"restoreFrom {where!r} needs a bucket: s3://bucket/prefix")
        if self.every_steps is None and self.every_seconds is None:
            raise ValueError("checkpoint needs everySteps and/or everySeconds")
        if (self.s3 is None) == (self.directory is None):
            raise ValueError("checkpoint needs exactly one durable tier: s3 or directory")
        return self

    @property
    def keep(self) -> int:
        """Committed checkpoints kept in the durable tier."""
        tier = self.s3 if self.s3 is not None else self.directory
        assert tier is not None  # the validator guarantees one
        return tier.keep

    def root_uri(self, namespace: str, job: str) -> str:
        """The job's durable checkpoint root (`ELASTRA_CHECKPOINT_URI`)."""
        if self.s3 is not None:
            prefix = self.s3.prefix.strip("/")
            key = f"{prefix}/{namespace}/{job}" if prefix else f"{namespace}/{job}"
            return f"s3://{self.s3.bucket}/{key}"
        assert self.directory is not None
        return f"{self.directory.path.rstrip('/')}/{namespace}/{job}"


class ElasticPolicy(SpecModel):
    """Timing of rescales and failure detection."""

    scale_up_cooldown_seconds: Annotated[int, Field(ge=0)] = 60
    """Least time between one rescale and a grow."""
    checkpoint_deadline_seconds: Annotated[int, Field(ge=1)] = 120
    """How long a planned rescale waits for its requested checkpoint before using the newest commit."""
    node_loss_timeout_seconds: Annotated[int, Field(ge=1)] = 30
    """How long a node may be NotReady before its pods count as lost."""
    start_timeout_seconds: Annotated[int, Field(ge=1)] = 300
    """How long the pods of a new generation may take to run before the job goes on without them."""


class CleanPodPolicy(enum.StrEnum):
    """Which pods are deleted when the job finishes."""

    ALL = "All"
    RUNNING = "Running"
    NONE = "None"


class RunPolicy(SpecModel):
    """Failure budget, deadlines, cleanup and suspension."""

    backoff_limit: Annotated[int, Field(ge=0)] = 6
    """Failures (not planned rescales) tolerated before the job fails."""
    active_deadline_seconds: Annotated[int, Field(ge=1)] | None = None
    """The job fails when it has run this long."""
    ttl_seconds_after_finished: Annotated[int, Field(ge=0)] | None = None
    """The finished job is deleted after this long."""
    clean_pod_policy: CleanPodPolicy = CleanPodPolicy.ALL
    """Pods deleted when the job finishes."""
    suspend: bool = False
    """True: checkpoint, then delete the pods. Back to False: restore and go on."""
    retryable_exit_codes: tuple[Annotated[int, Field(ge=1, le=255)], ...] = ()
    """Exit codes 1-127 that are retried; by default they are permanent (128+ always retry)."""


class TrainingJobSpec(SpecModel):
    """What the user asks for."""

    replicas: Replicas
    """Worker pod count range."""
    nproc_per_pod: Annotated[int, Field(ge=1)] = 1
    """Worker processes (ranks) per pod."""
    template: Annotated[
        dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
    ]
    """A PodTemplateSpec: image, command, resources (`nvidia.com/gpu`), nodeSelector, tolerations, volumes."""
    checkpoint: CheckpointPolicy
    """Checkpoint interval, tiers, retention and restore source."""
    elastic: ElasticPolicy = ElasticPolicy()
    """Rescale and failure-detection timing."""
    run_policy: RunPolicy = RunPolicy()
    """Failure budget, deadlines, cleanup, suspend."""


class Phase(enum.StrEnum):
    """Where a TrainingJob is."""

    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    RESCALING = "Rescaling"
    RESTORING = "Restoring"
    SUSPENDED = "Suspended"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"

    @property
    def finished(self) -> bool:
        """Succeeded or Failed."""
        return self in (Phase.SUCCEEDED, Phase.FAILED)


class Condition(StatusModel):
    """A Kubernetes-style condition."""

    type: str
    """`Valid`, `Ready`, `Capacity`, `Checkpoint`, …"""
    status: str
    """`True`, `False` or `Unknown`."""
    reason: str = ""
    """CamelCase machine-readable cause."""
    message: str = ""
    """What a person should know."""
    last_transition_time: dt.datetime | None = None
    """When `status` last changed."""


class MemberStatus(StatusModel):
    """One pod of the current generation."""

    pod: str
    node: str
    ranks: tuple[int, ...]
    """Global ranks the pod runs."""


class LastCheckpoint(StatusModel):
    """The newest committed checkpoint."""

    name: str
    step: int
    tiers: tuple[str, ...] = ()
    bytes: int = 0
    time: dt.datetime | None = None


class TrainingJobStatus(StatusModel):
    """What the operator observed and decided; re-derived from the API on every pass."""

    phase: Phase = Phase.PENDING
    conditions: tuple[Condition, ...] = ()
    world_size: int = 0
    generation: int = 0
    members: tuple[MemberStatus, ...] = ()
    step: int | None = None
    last_checkpoint: LastCheckpoint | None = None
    restarts: int = 0
    """New generations after the first (rescales and recoveries)."""
    failures: int = 0
    """Failures counted against `runPolicy.backoffLimit`."""
    start_time: dt.datetime | None = None
    completion_time: dt.datetime | None = None

    def condition(self, type_: str) -> Condition | None:
        """The condition of this type, if any."""
        return next((c for c in self.conditions if c.type == type_), None)
