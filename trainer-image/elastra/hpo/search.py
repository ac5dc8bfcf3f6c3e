"""Drives a search: one Optuna study per method, each trial run by a `TrialRunner`, one progress line
per trial, the cleanup policy at the end and a PNG of best-so-far against trials per method."""

from __future__ import annotations

import math
import pathlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import optuna
from optuna.trial import FrozenTrial, TrialState

from elastra.hpo.sampler import BUDGET_KEY, ForecastPruner, WeightGuidedSampler, weights_key
from elastra.hpo.spec import HpoSpec, Method
from elastra.hpo.trial import Observation, TrialRequest, TrialRunner

NAME_KEY = "elastra.trial"
SECONDS_KEY = "elastra.seconds"


def sampler_and_pruner(
    method: Method, seed: int
) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """The Optuna sampler and pruner of a method (startup sizes suit a budget of ~10 trials)."""
    if method is Method.RANDOM:
        return optuna.samplers.RandomSampler(seed=seed), optuna.pruners.NopPruner()
    if method is Method.TPE:
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4), optuna.pruners.NopPruner()
    if method is Method.TPE_MEDIAN:
        pruner = optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=4), pruner
    return WeightGuidedSampler(seed=seed, n_startup_trials=4), ForecastPruner(n_min_trials=3)


@dataclass(kw_only=True, slots=True)
class MethodResult:
    """One method's study, summarised."""

    method: Method
    best_so_far: list[float] = field(default_factory=list)
    """Best final loss after each trial (in completion order; inf before the first)."""
    best: float = math.inf
    best_trial: str | None = None
    seconds: float = 0.0
    pruned: int = 0
    trials: list[FrozenTrial] = field(default_factory=list)
    """The study's trials at the end."""


def _progress_line(method: Method, t: FrozenTrial, best: float) -> str:
    params = " ".join(f"{k}={v:.3g}" for k, v in sorted(t.params.items()))
    value = "-" if t.value is None else f"{t.value:.4f}"
    if t.state == TrialState.PRUNED and t.intermediate_values:
        value = f"{t.intermediate_values[max(t.intermediate_values)]:.4f}@{max(t.intermediate_values)}"
    secs = t.user_attrs.get(SECONDS_KEY)
    took = f" {secs:.1f}s" if isinstance(secs, (int, float)) else ""
    state = t.state.name.lower()
    return f"[{method}] trial {t.number:>3} {state:<8} loss {value:<12} {params}  best {best:.4f}{took}"


def run_method(
    spec: HpoSpec,
    method: Method,
    runner: TrialRunner,
    *,
    seed: int | None = None,
    storage: str | None = None,
    say: Callable[[str], None] = print,
) -> MethodResult:
    """Run `spec.trials` trials of one method (`spec.parallel` at once); apply the cleanup policy."""
    sampler, pruner = sampler_and_pruner(method, spec.seed if seed is None else seed)
    study = optuna.create_study(
        study_name=f"{spec.study}-{method}",
        direction="minimize",
        sampler=sampler,
        pruner=pruner,
        storage=storage,
        load_if_exists=True,
    )
    result = MethodResult(method=method)
    names: list[str] = []
    lock = threading.Lock()

    def objective(trial: optuna.Trial) -> float:
        params = {k: trial.suggest_float(k, p.low, p.high, log=p.log) for k, p in spec.params.items()}
        name = f"{spec.study}-{method}-{trial.number}"
        with lock:
            names.append(name)
        trial.set_user_attr(NAME_KEY, name)
        trial.set_user_attr(BUDGET_KEY, spec.budget.steps)

        def observe(obs: Observation) -> bool:
            if obs.embedding is not None:
                trial.set_user_attr(weights_key(obs.step), list(obs.embedding))
            if obs.loss is None or obs.step <= 0 or obs.step >= spec.budget.steps:
                return False
            trial.report(obs.loss, obs.step)
            return trial.should_prune()

        request = TrialRequest(name=name, number=trial.number, params=params, budget_steps=spec.budget.steps)
        outcome = runner.run(request, observe)
        trial.set_user_attr(SECONDS_KEY, outcome.seconds)
        if outcome.pruned:
            raise optuna.TrialPruned()
        if outcome.loss is None or not math.isfinite(outcome.loss):
            raise ValueError(f"{name}: no finite final loss")
        return outcome.loss

    def progress(study: optuna.Study, t: FrozenTrial) -> None:
        with lock:
            if t.state == TrialState.COMPLETE and t.value is not None and t.value < result.best:
                result.best, result.best_trial = t.value, t.user_attrs.get(NAME_KEY)
            result.pruned += t.state == TrialState.PRUNED
            result.best_so_far.append(result.best)
            say(_progress_line(method, t, result.best))

    t0 = time.monotonic()
    study.optimize(
        objective, n_trials=spec.trials, n_jobs=spec.parallel, callbacks=[progress], catch=(Exception,)
    )
    result.seconds = time.monotonic() - t0
    result.trials = study.get_trials()
    runner.finish(best=result.best_trial, trials=names)
    return result


def plot(results: list[MethodResult], out: str | pathlib.Path, *, title: str) -> pathlib.Path:
    """PNG: best final loss so far against trials, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    for r in results:
        ys = [y if math.isfinite(y) else math.nan for y in r.best_so_far]
        ax.plot(range(1, len(ys) + 1), ys, marker="o", label=f"{r.method} (best {r.best:.3f})")
    ax.set_xlabel("trials finished")
    ax.set_ylabel("best final loss so far")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out = pathlib.Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
