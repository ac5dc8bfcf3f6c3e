"""Event and condition reasons, and metric names, as `StrEnum`s (one place to read them all). Pure."""

from __future__ import annotations

import enum


class Reason(enum.StrEnum):
    """Reasons of the Events and conditions the operator writes."""

    BAD_COMMIT_REPORT = "BadCommitReport"
    CHECKPOINT_COMMITTED = "CheckpointCommitted"
    CHECKPOINT_DELETED = "CheckpointDeleted"
    CHECKPOINT_LATE = "CheckpointLate"
    CHECKPOINT_PROTECTED = "CheckpointProtected"
    CHECKPOINT_RECOMMITTED = "CheckpointRecommitted"
    CHECKPOINT_UNUSABLE = "CheckpointUnusable"
    CHECKPOINT_REQUESTED = "CheckpointRequested"
    COMMIT_REJECTED = "CommitRejected"
    CREATE_FAILED = "CreateFailed"
    FAILURE = "Failure"
    INSUFFICIENT_CAPACITY = "InsufficientCapacity"
    INVALID_SPEC = "InvalidSpec"
    RECOMMITTED = "Recommitted"
    RECOVERED = "Recovered"
    RESCALED = "Rescaled"
    RESTORE_FAILED = "RestoreFailed"
    SPEC_VALID = "SpecValid"
    STORAGE_DELETE_FAILED = "StorageDeleteFailed"
    STORAGE_KEPT = "StorageKept"
    SUFFICIENT = "Sufficient"


class Metric(enum.StrEnum):
    """Names of the observations `plan()` hands to `OperatorMetrics`."""

    CHECKPOINT_COMMIT_SECONDS = "checkpoint_commit_seconds"
    FAILURES = "failures"
    RECOVERY_SECONDS = "recovery_seconds"
    RESCALES = "rescales"
    RESTORE_SECONDS = "restore_seconds"
    STEPS_LOST = "steps_lost"
