"""What a restore did: the `RestoreReport` every load leaves behind, and its one log line. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

SHOWN = 3
"""Paths named in the one-line summary per list; the report itself keeps all of them."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RestoreReport:
    """The outcome of one restore, checkpoint or pretrained weights."""

    step: int | None
    """Step restored (0 for pretrained weights), None when there was nothing to restore."""
    source: str
    """Where it came from: a step directory or a Hugging Face model location."""
    kind: str = "checkpoint"
    """`checkpoint` (Elastra format) or `pretrained` (Hugging Face safetensors)."""
    restored: int = 0
    """Tensors of the state written."""
    missing: tuple[str, ...] = ()
    """Tensors of the state the source lacks (left as they were), allowed by the caller."""
    unexpected: tuple[str, ...] = ()
    """Tensors of the source nothing in the state took."""
    tied: dict[str, str] = field(default_factory=dict)
    """State tensors the source lacks but that share memory with one it filled: path -> that path."""
    cast: tuple[str, ...] = ()
    """Tensors converted from the source's floating dtype to the state's."""
    seconds: float = 0.0
    bytes_read: int = 0
    """Bytes this rank read."""
    tier: str = "durable"
    """Tier most bytes came from."""

    def summary(self) -> str:
        """One line: the step, the tier, the seconds, and what was skipped."""
        head = (
            f"restored {self.kind} step {self.step} from {self.source} ({self.tier} tier) in "
            f"{self.seconds:.2f}s: {self.restored} tensors, {self.bytes_read} bytes read"
        )
        parts = [head]
        for label, paths in (
            ("missing (left as they were)", self.missing),
            ("not restored (unexpected)", self.unexpected),
            ("cast", self.cast),
        ):
            if paths:
                more = f", +{len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
                parts.append(f"{len(paths)} {label}: {', '.join(paths[:SHOWN])}{more}")
        if self.tied:
            shown = ", ".join(f"{k} = {v}" for k, v in list(self.tied.items())[:SHOWN])
            parts.append(f"{len(self.tied)} tied: {shown}")
        if len(parts) == 1:
            parts.append("nothing skipped")
        return "; ".join(parts)
