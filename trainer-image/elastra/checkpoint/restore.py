"""Which checkpoint a restore reads, and what came of it. Pure, except for one fixed-shape collective.

A restore source is a checkpoint root (`s3://bucket/prefix`, a directory) or one step directory of
one (`<root>/step-N`, what the operator hands a generation as `ELASTRA_RESTORE_URI`, possibly another
job's: `restoreFrom`). Ranks walk the candidates newest first and decide each one together: they agree
on the candidate (an all-reduce MAX of one int64) and on the verdict (an all-reduce MAX of one int64,
1 when this rank could not load it for any reason), so a rank whose manifest parse failed falls back
with the others instead of skipping a collective they wait in.
"""

from __future__ import annotations

from dataclasses import dataclass

from elastra.checkpoint.format import parse_step_dir

NONE = -1
"""The candidate of a rank that has none left."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A checkpoint a restore tried and could not use."""

    step: int
    """Its step."""
    reason: str
    """Why (this rank's error, or that another rank failed to load it)."""


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What one `Checkpointer.load` did."""

    requested: int | None
    """The step asked for (`step=`, or the step directory of `source=`); None: the newest."""
    step: int | None
    """The step actually restored; None when nothing was restored."""
    root: str
    """The checkpoint root it was read from."""
    skipped: tuple[Skipped, ...] = ()
    """Newer candidates that were unusable, newest first."""

    @property
    def fell_back(self) -> bool:
        """A requested step was not the one restored."""
        return self.requested is not None and self.step != self.requested


def split_source(uri: str) -> tuple[str, int | None]:
    """`(root, step)` of a restore source: a `<root>/step-N` directory, or a root (step None). Pure."""
    trimmed = uri.rstrip("/") or uri
    head, _, last = trimmed.rpartition("/")
    step = parse_step_dir(last)
    if step is None or not head or head.endswith(":/"):
        return trimmed, None
    return head, step


def next_candidate(committed: list[int], below: int | None) -> int:
    """The newest committed step strictly below `below` (any, when None); `NONE` if there is none. Pure."""
    older = [s for s in committed if below is None or s < below]
    return max(older) if older else NONE
