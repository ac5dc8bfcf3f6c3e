"""Merge-weight search: `merge_search(sources, evaluate, objectives=...)` finds the Pareto front of
merge weights with Optuna (multi-objective), evaluating each candidate with the user's own function.

Each trial merges the sources in memory (`merged_state_dict`, the same chunked engine as `merge`, into
tensors instead of a file) and calls `evaluate(state_dict) -> {objective: value}`. The sources
themselves (one-hot weights) are enqueued first, so the front says honestly whether any merge beats
them. `merge` then writes the chosen weights as a checkpoint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from elastra.checkpoint.merge_plan import (
    MergeError,
    MergeMethod,
    MergeOptions,
    check_options,
    check_sources,
    chunk_boxes,
)
from elastra.checkpoint.merging import Inputs, SourceRef, merge_tensor, open_source
from elastra.checkpoint.reader import Sources
from elastra.checkpoint.state import ST_TO_TORCH

log = logging.getLogger(__name__)

DIRECTIONS = ("minimize", "maximize")


def unescape(component: str) -> str:
    """Undo `state.escape` for one state-path component."""
    return component.replace("%2F", "/").replace("%25", "%")


@dataclass(frozen=True, slots=True)
class OpenedSources:
    """Sources (and a base) opened once, merged many times."""

    refs: tuple[SourceRef, ...]
    inputs: Inputs
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    """path -> (dtype, shape) of the tensors merged."""


def open_sources(sources: Sequence[str], *, base: str | None, include: Sequence[str]) -> OpenedSources:
    """Read and cross-check the manifests of `sources` (and `base`); MergeError on a mismatch."""
    if not sources:
        raise MergeError("merge needs at least one source")
    opened = [open_source(u) for u in sources]
    opened_base = open_source(base) if base is not None else None
    named = ([("base " + opened_base[0].uri, opened_base[1])] if opened_base else []) + [
        (f"source {i + 1} ({ref.uri})", m) for i, (ref, m, _) in enumerate(opened)
    ]
    tensors = check_sources(named, tuple(include))
    inputs = Inputs(
        sources=tuple(Sources(m, s) for _, m, s in opened),
        base=Sources(opened_base[1], opened_base[2]) if opened_base else None,
    )
    return OpenedSources(tuple(ref for ref, _, _ in opened), inputs, tensors)


def merged_state_dict(
    opened: OpenedSources, options: MergeOptions, *, strip: str | None = None
) -> dict[str, torch.Tensor]:
    """The merged tensors in memory, by state path (with `strip` removed from the front of each path and
    the path's escapes undone, so `strip="model/"` gives a `model.load_state_dict` dict)."""
    check_options(options, len(opened.inputs.sources), opened.inputs.base is not None)
    out: dict[str, torch.Tensor] = {}
    for path, (dtype, shape) in opened.tensors.items():
        tensor = torch.empty(shape, dtype=ST_TO_TORCH[dtype])
        boxes = chunk_boxes(shape, max(1, options.chunk_bytes // tensor.element_size()))
        for box, chunk in merge_tensor(opened.inputs, path, dtype, boxes, options):
            index = tuple(slice(o, o + n) for o, n in zip(box.offsets, box.shape, strict=True))
            tensor[index] = chunk
        key = path[len(strip) :] if strip and path.startswith(strip) else path
        out["/".join(unescape(c) for c in key.split("/"))] = tensor
    return out


@dataclass(frozen=True, slots=True)
class Candidate:
    """One evaluated weight vector."""

    number: int
    """Optuna trial number."""
    weights: tuple[float, ...]
    metrics: dict[str, float]
    source: int | None
    """The source index when the weights are one-hot (the source itself, for linear merges)."""


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Every evaluated candidate and the Pareto front among them."""

    objectives: dict[str, str]
    """objective -> `minimize` / `maximize`."""
    candidates: tuple[Candidate, ...]
    front: tuple[Candidate, ...]
    """Non-dominated candidates, by trial number."""
    study: Any
    """The `optuna.Study`, for further analysis."""

    def sources(self) -> tuple[Candidate, ...]:
        """The candidates that are the sources themselves (one-hot weights)."""
        return tuple(c for c in self.candidates if c.source is not None)


def merge_search(
    sources: Sequence[str],
    evaluate: Callable[[dict[str, torch.Tensor]], Mapping[str, float]],
    *,
    objectives: Mapping[str, str] | Sequence[str],
    n_trials: int = 20,
    base: str | None = None,
    method: MergeMethod | str = MergeMethod.LINEAR,
    include: Sequence[str] = ("model/",),
    weight_range: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
    evaluate_sources: bool = True,
    density: float = 0.2,
    scale: float = 1.0,
    strip: str | None = "model/",
    normalize: bool = False,
    progress: Callable[[Candidate], None] | None = None,
) -> SearchResult:
    """Search merge weights of `sources` with Optuna's multi-objective TPE sampler.

    `evaluate(state_dict)` gets each candidate's merged tensors (paths with `strip` removed) and
    returns a value per objective; `objectives` names them (a sequence: all minimized; a mapping:
    `minimize` or `maximize` each). Every weight is drawn from `weight_range`. With
    `evaluate_sources`, the one-hot weight vectors (the sources themselves) are tried first and count
    towards `n_trials`. With `normalize`, each drawn vector is divided by its sum (a convex
    combination; all-zero draws count as equal weights). Returns every candidate and the Pareto front."""
    import optuna

    directions = (
        {o: "minimize" for o in objectives} if not isinstance(objectives, Mapping) else dict(objectives)
    )
    if not directions or any(d not in DIRECTIONS for d in directions.values()):
        raise MergeError(f"objectives need a direction each, one of {DIRECTIONS}: {directions}")
    low, high = weight_range
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise MergeError(f"weight_range must be two finite numbers, low < high: {weight_range}")
    if n_trials < 1:
        raise MergeError(f"n_trials must be at least 1, got {n_trials}")
    opened = open_sources(sources, base=base, include=include)
    n = len(sources)
    template = MergeOptions(
        method=MergeMethod(method), weights=(1.0,) * n, include=tuple(include), density=density, scale=scale
    )
    check_options(template, n, base is not None)
    names = list(directions)
    study = optuna.create_study(
        directions=[optuna.study.StudyDirection[directions[o].upper()] for o in names],
        sampler=optuna.samplers.TPESampler(seed=seed),
    )
    if evaluate_sources:
        for i in range(n):
            if low <= 0 <= high and low <= 1 <= high:
                study.enqueue_trial({f"w{j}": float(j == i) for j in range(n)})
    candidates: list[Candidate] = []

    def objective(trial: Any) -> list[float]:
        weights = tuple(trial.suggest_float(f"w{j}", low, high) for j in range(n))
        if normalize:
            total = sum(weights)
            weights = tuple(w / total for w in weights) if total else (1.0 / n,) * n
        options = MergeOptions(
            method=template.method,
            weights=weights,
            include=template.include,
            density=density,
            scale=scale,
        )
        metrics = dict(evaluate(merged_state_dict(opened, options, strip=strip)))
        missing = [o for o in names if o not in metrics]
        if missing:
            raise MergeError(f"evaluate() returned no value for {missing}; it returned {sorted(metrics)}")
        values = [float(metrics[o]) for o in names]
        one_hot = [j for j, w in enumerate(weights) if w == 1.0]
        hot = (
            one_hot[0]
            if len(one_hot) == 1 and all(w == 0 for j, w in enumerate(weights) if j != one_hot[0])
            else None
        )
        candidate = Candidate(trial.number, weights, {o: float(metrics[o]) for o in names}, hot)
        candidates.append(candidate)
        if progress is not None:
            progress(candidate)
        return values

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=n_trials)
    done = {c.number: c for c in candidates}
    front = tuple(
        sorted((done[t.number] for t in study.best_trials if t.number in done), key=lambda c: c.number)
    )
    return SearchResult(objectives=directions, candidates=tuple(candidates), front=front, study=study)
