"""What `plan()` decides: frozen actions, applied in order by `kube` (API writes) and `metrics`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from elastra.api.membership import Membership

from .views import OperatorRecord


@dataclass(frozen=True, slots=True, kw_only=True)
class CreateObject:
    """Create an object; an existing one with the same name is fine (idempotent)."""

    manifest: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class ApplyObject:
    """Create an object, or replace an existing one whose content differs (the job's Role)."""

    manifest: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeletePod:
    """Delete a pod; `force` for pods on a lost node (grace period 0)."""

    name: str
    reason: str
    force: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteCheckpoint:
    """Delete a Checkpoint object (its finalizer deletes the storage)."""

    name: str
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MarkUnverified:
    """Set condition `Verified=False` on a Checkpoint a restore found unusable."""

    name: str
    reason: str
    """CamelCase cause (`RestoreFailed`)."""
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Reverify:
    """A `Verified=False` Checkpoint whose step the trainers saved again: replace its spec with the new
    save's (only while the spec still names `expected_digest`; metadata and finalizer stay), then set
    `Verified=True`. `spec` None: the spec already is the new save's (a pass cut short in between)."""

    name: str
    spec: dict[str, Any] | None
    expected_digest: str
    """`spec.manifestDigest` the replacement is conditional on (a JSON Patch `test`)."""
    reason: str
    """CamelCase cause (`Recommitted`)."""
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class WriteMembership:
    """Create or replace the membership ConfigMap, conditional on the resourceVersion last read."""

    membership: Membership
    record: OperatorRecord
    expected_version: str | None
    """None: create it. Else: replace only if still at this version."""


@dataclass(frozen=True, slots=True, kw_only=True)
class PatchStatus:
    """Replace the job's status with this (camelCase) body."""

    status: dict[str, Any]


@dataclass(frozen=True, slots=True, kw_only=True)
class DeleteJob:
    """Delete the TrainingJob itself (TTL after finish)."""

    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """A Kubernetes Event on the job."""

    reason: str
    message: str
    warning: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Observe:
    """A metric observation (counter increment or histogram sample); labels beyond namespace and job."""

    metric: str
    value: float = 1.0
    labels: dict[str, str] = field(default_factory=dict)


Action = (
    CreateObject
    | ApplyObject
    | DeletePod
    | DeleteCheckpoint
    | MarkUnverified
    | Reverify
    | WriteMembership
    | PatchStatus
    | DeleteJob
    | Event
    | Observe
)
