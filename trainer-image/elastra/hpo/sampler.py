"""Optuna integration: `WeightGuidedSampler` (FMS) and `ForecastPruner`, sharing one surrogate.

A trial that runs through `elastra.hpo` leaves in its user attributes the embedding of the weights it
started from and of each checkpoint it committed (`weights_key(step)`, steps counted from the trial's
start) and its budget (`BUDGET_KEY`). Any Optuna storage keeps them, so a study can be resumed, shared
and shown on optuna-dashboard like any other.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import optuna
import torch
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.search_space import IntersectionSearchSpace
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from elastra.hpo.forecast import Forecaster, Row

log = logging.getLogger(__name__)
BUDGET_KEY = "elastra.budget"
WEIGHTS_PREFIX = "elastra.w."


def weights_key(step: int) -> str:
    """User-attribute key of the weight embedding at `step` steps into the trial (0: its start)."""
    return f"{WEIGHTS_PREFIX}{step}"


def trial_embeddings(trial: FrozenTrial) -> dict[int, tuple[float, ...]]:
    """The weight embeddings a trial recorded, by step; malformed entries are ignored."""
    out: dict[int, tuple[float, ...]] = {}
    for key, value in trial.user_attrs.items():
        if not key.startswith(WEIGHTS_PREFIX) or not key[len(WEIGHTS_PREFIX) :].isdigit():
            continue
        numbers = isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value)
        if numbers and all(math.isfinite(v) for v in value):
            out[int(key[len(WEIGHTS_PREFIX) :])] = tuple(float(v) for v in value)
    return out


def _numeric(space: dict[str, BaseDistribution]) -> dict[str, FloatDistribution | IntDistribution]:
    """The parameters the GP models (continuous floats and integers), in a fixed order."""
    out: dict[str, FloatDistribution | IntDistribution] = {}
    for k, d in sorted(space.items()):
        if isinstance(d, IntDistribution) or (isinstance(d, FloatDistribution) and d.step is None):
            out[k] = d
    return out


def to_unit(value: float, d: FloatDistribution | IntDistribution) -> float:
    """A parameter value scaled to [0, 1] (log-scaled where the distribution is)."""
    lo, hi, v = float(d.low), float(d.high), float(value)
    if d.log:
        lo, hi, v = math.log(lo), math.log(hi), math.log(v)
    return 0.0 if hi == lo else min(1.0, max(0.0, (v - lo) / (hi - lo)))


def from_unit(u: float, d: FloatDistribution | IntDistribution) -> float | int:
    """Inverse of `to_unit`, rounded for integers."""
    lo, hi = float(d.low), float(d.high)
    v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if d.log else lo + u * (hi - lo)
    v = min(hi, max(lo, v))
    return round(v) if isinstance(d, IntDistribution) else v


def rows_of(
    trials: Sequence[FrozenTrial], space: dict[str, FloatDistribution | IntDistribution]
) -> list[Row]:
    """Surrogate rows of the completed trials that recorded their budget and weights."""
    rows: list[Row] = []
    for t in trials:
        if t.state != TrialState.COMPLETE or t.value is None or not math.isfinite(t.value):
            continue
        budget = t.user_attrs.get(BUDGET_KEY)
        if not isinstance(budget, int) or budget < 1 or any(k not in t.params for k in space):
            continue
        x = tuple(to_unit(t.params[k], d) for k, d in space.items())
        for step, emb in sorted(trial_embeddings(t).items()):
            rows.append(Row(x=x, embedding=emb, fidelity=min(1.0, step / budget), y=float(t.value)))
    return rows


class WeightGuidedSampler(BaseSampler):
    """FMS as an Optuna sampler: a GP over (hyperparameters, weight embedding, fidelity) chooses the
    hyperparameters of the next trial by log expected improvement of its forecast final loss.

    The first `n_startup_trials` trials, categorical parameters and trials of studies whose trials
    record no weights are sampled at random (`RandomSampler`).
    """

    def __init__(self, *, n_startup_trials: int = 4, candidates: int = 512, seed: int | None = None) -> None:
        self.n_startup_trials = n_startup_trials
        self.candidates = candidates
        self._random = RandomSampler(seed=seed)
        self._generator = torch.Generator().manual_seed(seed if seed is not None else 0)
        self._space = IntersectionSearchSpace()

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return dict(_numeric(self._space.calculate(study)))

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        space = _numeric(search_space)
        if not space:
            return {}
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if len(done) < self.n_startup_trials:
            return {}
        rows = rows_of(done, space)
        starts = [trial_embeddings(t).get(0) for t in done]
        start = next((e for e in reversed(starts) if e is not None), None)
        if start is None and rows:  # no warm start recorded: the earliest weights trials logged
            firsts = [emb[min(emb)] for t in done if (emb := trial_embeddings(t))]
            start = tuple(sum(col) / len(firsts) for col in zip(*firsts, strict=True))
        if len(rows) < 2 or start is None:
            log.warning(
                "trial %d: no checkpointed weights to learn from yet; sampling at random", trial.number
            )
            return {}
        forecaster = Forecaster(rows)
        x = forecaster.suggest(start, len(space), candidates=self.candidates, generator=self._generator)
        return {k: from_unit(u, d) for (k, d), u in zip(space.items(), x, strict=True)}

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self._random.sample_independent(study, trial, param_name, param_distribution)


class ForecastPruner(optuna.pruners.BasePruner):
    """Stops a trial whose forecast final loss is poor: even `z` standard deviations below the GP's
    mean forecast (from its hyperparameters and its newest checkpoint's weights) it would not beat
    the best finished trial. Never prunes before `n_min_trials` trials finished with weights."""

    def __init__(self, *, n_min_trials: int = 3, z: float = 1.0) -> None:
        self.n_min_trials = n_min_trials
        self.z = z
        self._cache: tuple[tuple[int, ...], Forecaster] | None = None

    def forecast(self, study: Study, trial: FrozenTrial) -> tuple[float, float] | None:
        """(mean, std) of the trial's forecast final loss, or None when there is nothing to go on."""
        space = _numeric(trial.distributions)
        weights = trial_embeddings(trial)
        budget = trial.user_attrs.get(BUDGET_KEY)
        if not space or not weights or not isinstance(budget, int) or budget < 1:
            return None
        done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        key = tuple(t.number for t in done)
        if self._cache is None or self._cache[0] != key:
            rows = rows_of(done, space)
            with_weights = sum(1 for t in done if trial_embeddings(t))
            if len({r.y for r in rows}) < 2 or with_weights < self.n_min_trials:
                return None
            self._cache = (key, Forecaster(rows))
        forecaster = self._cache[1]
        step = max(weights)
        x = [to_unit(trial.params[k], d) for k, d in space.items()]
        mean, std = forecaster.predict(forecaster.features(x, weights[step], min(1.0, step / budget))[None])
        return float(mean[0]), float(std[0])

    def prune(self, study: Study, trial: FrozenTrial) -> bool:
        try:
            forecast = self.forecast(study, trial)
        except (ValueError, RuntimeError):
            return False
        if forecast is None:
            return False
        mean, std = forecast
        best = min(
            t.value
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.value is not None
        )
        return mean - self.z * std > best
