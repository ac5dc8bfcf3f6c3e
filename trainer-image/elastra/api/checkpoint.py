"""The `Checkpoint` custom resource: one object per committed checkpoint, owned by its TrainingJob.

The operator creates it from the agent's `CommitReport` (name `<job>-step-<step>`). Deleting it — by
retention or by hand — deletes its durable storage through the finalizer `elastra.dev/finalizer`.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Annotated

from pydantic import Field, field_validator

from elastra.api.base import SpecModel, StatusModel
from elastra.api.trainingjob import Condition

KIND = "Checkpoint"
PLURAL = "checkpoints"
SHORT_NAME = "ckpt"
VERIFIED = "Verified"
"""Condition type: `False` once a restore found the checkpoint unusable (it is never restored again)."""
STEP_DIR = re.compile(r"^step-(\d+)$")
"""Last path segment of every checkpoint URI; the finalizer deletes nothing else."""


def checkpoint_name(job: str, step: int) -> str:
    """Name of the Checkpoint object for `job`'s commit at `step` (idempotent creation)."""
    return f"{job}-step-{step}"


class TierLocation(SpecModel):
    """Where one tier holds the whole checkpoint."""

    name: Annotated[str, Field(min_length=1)]
    """`local`, `s3` or `directory`."""
    uri: Annotated[str, Field(min_length=1)]
    """The step directory: `s3://bucket/key/step-N`, or an absolute path ending in `step-N`."""


class StorageAccess(SpecModel):
    """How the finalizer reaches the durable tier, copied from the job so that it works after the job."""

    endpoint: str | None = None
    """S3 endpoint URL; AWS when unset."""
    region: str = "us-east-1"
    """S3 region."""
    credentials_secret: str | None = None
    """Secret (same namespace) with `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`."""


class CheckpointSpec(SpecModel):
    """A committed checkpoint. Written once by the operator; never changed."""

    job: Annotated[str, Field(min_length=1)]
    """The TrainingJob that wrote it."""
    step: Annotated[int, Field(ge=0)]
    """Training step."""
    world_size: Annotated[int, Field(ge=1)]
    """World size at save time (restore reshards to any other)."""
    format_version: Annotated[int, Field(ge=1)]
    """Checkpoint format version."""
    generation: Annotated[int, Field(ge=0)] = 0
    """Generation that wrote it."""
    uri: Annotated[str, Field(min_length=1)]
    """The durable step directory; this is what a restore reads and what deletion removes."""
    tiers: tuple[TierLocation, ...] = ()
    """Every tier holding it."""
    bytes: Annotated[int, Field(ge=0)] = 0
    """Total payload bytes."""
    manifest_digest: Annotated[str, Field(pattern=r"^sha256:[0-9a-f]+$")]
    """`sha256:<hex>` of the manifest."""
    committed_at: dt.datetime
    """When the manifest was committed."""
    storage: StorageAccess | None = None
    """Access to an S3 durable tier; None for a directory tier."""
    loss: Annotated[float, Field(allow_inf_nan=False)] | None = None
    """Training loss at this step as the trainer reported it with the commit (`elastra.hpo` reads it)."""

    @field_validator("uri")
    @classmethod
    def _uri_is_a_step_directory(cls, uri: str) -> str:
        last = uri.rstrip("/").rsplit("/", 1)[-1]
        if not STEP_DIR.match(last):
            raise ValueError(f"checkpoint uri {uri!r} must end in a step-N directory")
        if not (uri.startswith("s3://") or uri.startswith("/")):
            raise ValueError(f"checkpoint uri {uri!r} must be s3://… or an absolute path")
        return uri


class CheckpointStatus(StatusModel):
    """Deletion progress, shown while the finalizer works or refuses."""

    phase: str = "Committed"
    """`Committed`, `Protected` (deletion refused: the newest of a running job) or `Deleting`."""
    message: str = ""
    """Why, when not Committed."""
    conditions: tuple[Condition, ...] = ()
    """`Verified=False` (reason `RestoreFailed`) once a generation's restore found it unusable;
    `Verified=True` (reason `Recommitted`) once a later save of the same step replaced it."""
