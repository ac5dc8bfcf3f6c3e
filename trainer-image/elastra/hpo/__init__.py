"""Checkpoint-guided hyperparameter search (Forecasting Model Search) on Elastra, built on Optuna.

Each trial is a TrainingJob (`KubeTrialRunner`): hyperparameters as trainer flags or env, a budget of
steps, an optional warm start from a shared Checkpoint (`restoreFrom`). The trainer's loss comes back
with each commit (Checkpoint `spec.loss`) and the trial's weights are read from its checkpoints.
`WeightGuidedSampler` and `ForecastPruner` are Optuna plug-ins: a GP over hyperparameters and a
permutation-invariant embedding of those weights. `elastra hpo run SPEC.yaml` drives it; docs/hpo.md.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ForecastPruner", "HpoSpec", "WeightGuidedSampler", "weight_embedding"]


def __getattr__(name: str) -> Any:  # torch and optuna load only when used
    if name in ("WeightGuidedSampler", "ForecastPruner"):
        from elastra.hpo import sampler

        return getattr(sampler, name)
    if name == "weight_embedding":
        from elastra.hpo.embedding import weight_embedding

        return weight_embedding
    if name == "HpoSpec":
        from elastra.hpo.spec import HpoSpec

        return HpoSpec
    raise AttributeError(name)
