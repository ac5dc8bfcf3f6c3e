"""What a save gives back: the `SaveHandle` of one `save()`, its `CommitInfo` once committed, the
`CheckpointError` of a save or load that failed, and the `CheckpointStats` counters."""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field


class CheckpointError(RuntimeError):
    """A save did not commit, or no usable checkpoint could be loaded."""


class RestartRequired(CheckpointError):
    """The state was partly overwritten by a failed restore and nothing can overwrite it again: only a
    fresh process can start over (under an agent the worker exits `EXIT_RESTART_CLEAN`)."""


@dataclass(frozen=True, slots=True)
class CommitInfo:
    """What a committed save produced (the facts of the pod agent's commit report)."""

    step: int
    uri: str
    """The committed step's durable location, `<root>/step-<N>`."""
    tiers: tuple[str, ...]
    bytes: int
    manifest_digest: str
    world_size: int
    format_version: int
    stall_seconds: float
    """Time `save()` blocked the training loop on this rank."""
    commit_seconds: float
    """`save()` called → manifest committed."""


class SaveHandle:
    """One `save()`. `staged()` blocks until the state has been copied (at once for eager staging);
    `wait()` blocks until the checkpoint is committed."""

    def __init__(
        self,
        step: int,
        stall_seconds: float,
        future: concurrent.futures.Future[CommitInfo] | None,
        staging: concurrent.futures.Future[None] | None = None,
    ) -> None:
        self.step = step
        self.stall_seconds = stall_seconds
        """Time `save()` blocked the caller (for lazy staging, without the later `staged()` wait)."""
        self.skipped = future is None
        """True when the save was skipped because the previous one was still in flight (policy `skip`)."""
        self._future = future
        self._staging = staging

    def done(self) -> bool:
        return self._future is None or self._future.done()

    def staged(self, timeout: float | None = None) -> None:
        """Block until the state has been copied out (or the save failed before that); after this the
        caller may mutate the state. A failure is not raised here: `wait()` reports it."""
        if self._staging is not None:
            concurrent.futures.wait([self._staging], timeout)

    def wait(self, timeout: float | None = None) -> CommitInfo | None:
        """The commit, or None for a skipped save; raises CheckpointError if the save failed."""
        if self._future is None:
            return None
        try:
            return self._future.result(timeout)
        except CheckpointError:
            raise
        except concurrent.futures.TimeoutError:
            raise
        except Exception as exc:
            raise CheckpointError(f"save of step {self.step} failed: {exc}") from exc


@dataclass(kw_only=True, slots=True)
class CheckpointStats:
    """Counters for the trainer metrics (see docs/metrics.md)."""

    saves: int = 0
    """Saves started."""
    skipped: int = 0
    """Saves skipped because the previous one was in flight (policy `skip`)."""
    waited: int = 0
    """Saves that first waited for the previous one (policy `wait`)."""
    bytes_by_tier: dict[str, int] = field(default_factory=lambda: {"local": 0, "durable": 0})
    """Bytes this rank wrote, per tier."""
    restore_bytes_by_tier: dict[str, int] = field(default_factory=lambda: {"local": 0, "durable": 0})
    """Bytes the last load read, per tier."""
    restore_seconds: float = 0.0
    """Duration of the last load."""
