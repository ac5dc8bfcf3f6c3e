"""The demo's summary and plot, computed from what the demo observed. `summarize` is pure."""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Sample:
    """One look at the job."""

    t: float
    """Seconds since the job was applied."""
    phase: str
    generation: int
    world: int
    step: int | None
    loss: float | None


@dataclass(frozen=True, slots=True)
class Event:
    """Something the demo did to the cluster."""

    t: float
    kind: str
    """`kill`, `freeze` or `thaw` (a node), or `add` (a node)."""
    node: str
    step: int | None
    wall: float | None = None
    """Unix time it happened (to line it up with the logs: `elastra.demo.timeline`)."""


@dataclass(frozen=True, slots=True)
class Generation:
    """A generation as the membership record announced it."""

    generation: int
    t: float
    """When the demo first saw it."""
    world: int
    restore_step: int | None


@dataclass(slots=True)
class Observed:
    """Everything the demo collected."""

    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    generations: dict[int, Generation] = field(default_factory=dict)
    commits: dict[int, dict[str, Any]] = field(default_factory=dict)
    """Commit reports by step."""
    restores: dict[int, tuple[str, int | None]] = field(default_factory=dict)
    """generation → (tier, step) its pods' agents reported restoring (`restoreTier`, `restoredStep`)."""


TIERS = {"memory": "memory", "local": "local"}
"""The agents' `restoreTier` → summary.json's `restore_tier`; anything else (`durable`) is `durable`."""


REASONS = {"kill": "NodeLost", "freeze": "Unresponsive", "add": "ScaleUp", "thaw": "ScaleUp"}


def summarize(observed: Observed, *, phase: str) -> dict[str, Any]:
    """The summary.json document. Pure."""
    samples = observed.samples
    world_sizes: list[list[float]] = []
    for s in samples:
        if s.world and (not world_sizes or world_sizes[-1][1] != s.world):
            world_sizes.append([round(s.t, 2), s.world])
    stepped = [s for s in samples if s.step is not None]
    final = stepped[-1] if stepped else None
    gens = sorted(observed.generations.values(), key=lambda g: g.generation)
    rescales = []
    for prev, new in itertools.pairwise(gens):
        if new.world in (prev.world, 0):
            continue
        cause = next((e for e in reversed(observed.events) if e.t <= new.t), None)
        started = cause.t if cause is not None else new.t
        # Progress reached before the new generation: steps seen since the previous one started.
        last_before = max((s.step or 0 for s in stepped if prev.t <= s.t <= new.t), default=0)
        tier, restored_step = observed.restores.get(new.generation, (None, None))
        restored = restored_step if restored_step is not None else (new.restore_step or 0)
        resumed = next(
            (
                s.t
                for s in stepped
                if s.generation == new.generation and s.phase == "Running" and (s.step or 0) > restored
            ),
            None,
        )
        rescales.append(
            {
                "from": prev.world,
                "to": new.world,
                "reason": REASONS.get(cause.kind, "Restart") if cause is not None else "Restart",
                "generation": new.generation,
                "detected_s": round(new.t - started, 2),
                "recovery_s": round(resumed - started, 2) if resumed is not None else None,
                "steps_lost": max(0, last_before - restored),
                "restore_tier": TIERS.get(tier, "durable") if tier is not None else None,
            }
        )
    stalls = [float(c.get("stallSeconds", 0.0)) for c in observed.commits.values()]
    newest = observed.commits[max(observed.commits)] if observed.commits else {}
    return {
        "phase": phase,
        "final_step": final.step if final else None,
        "final_loss": next((s.loss for s in reversed(stepped) if s.loss is not None), None),
        "world_sizes": world_sizes,
        "rescales": rescales,
        "checkpoints": {
            "count": len(observed.commits),
            "median_stall_s": round(statistics.median(stalls), 4) if stalls else None,
            "bytes": int(newest.get("bytes", 0)),
        },
        "events": [
            {"t": round(e.t, 2), "kind": e.kind, "node": e.node, "step": e.step, "wall": e.wall}
            for e in observed.events
        ],
    }


def plot(observed: Observed, path: str) -> None:
    """Loss vs step with the rescale events marked, and world size over time, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_world) = plt.subplots(2, 1, figsize=(9, 7))
    points = sorted({(s.step, s.loss) for s in observed.samples if s.step is not None and s.loss is not None})
    if points:
        ax_loss.plot([p[0] for p in points], [p[1] for p in points], ".", markersize=3, label="loss")
    for event in observed.events:
        if event.step is not None:
            color = "tab:red" if event.kind in ("kill", "freeze") else "tab:green"
            ax_loss.axvline(event.step, color=color, linestyle="--", label=f"{event.kind} {event.node}")
    for commit_step in sorted(observed.commits):
        ax_loss.axvline(commit_step, color="0.85", linewidth=0.8, zorder=0)
    ax_loss.set_xlabel("step")
    ax_loss.set_ylabel("loss")
    ax_loss.set_title("gpt_tiny: loss (grey: checkpoints; dashed: node lost / back)")
    ax_loss.legend(loc="upper right", fontsize=8)
    times = [s.t for s in observed.samples]
    worlds = [s.world for s in observed.samples]
    ax_world.step(times, worlds, where="post")
    for event in observed.events:
        red = event.kind in ("kill", "freeze")
        ax_world.axvline(event.t, color="tab:red" if red else "tab:green", linestyle="--")
    ax_world.set_xlabel("seconds since the job was applied")
    ax_world.set_ylabel("world size")
    ax_world.set_ylim(0, max([*worlds, 4]) + 1)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
