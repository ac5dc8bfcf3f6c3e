"""What a trial is, independent of where it runs: its request, what it observes, how it ends, and the
`TrialRunner` protocol that runs it (`KubeTrialRunner`: a TrainingJob; benchmarks may run it in-process).

`trial_job` turns a request into a TrainingJob manifest: pure, no I/O.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from elastra.hpo.spec import HpoSpec

STUDY_LABEL = "elastra.dev/hpo-study"
TRIAL_LABEL = "elastra.dev/hpo-trial"
BEST_LABEL = "elastra.dev/hpo-best"


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialRequest:
    """One trial to run."""

    name: str
    """Trial name (the TrainingJob's name)."""
    number: int
    """Optuna trial number."""
    params: Mapping[str, float]
    """Hyperparameter values."""
    budget_steps: int
    """Steps to train after the start."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """One committed checkpoint of a trial (or its starting weights at step 0)."""

    step: int
    """Steps since the trial's start."""
    loss: float | None
    """Loss the trainer committed with it (None at step 0 or when not reported)."""
    embedding: tuple[float, ...] | None
    """`weight_embedding` of its weights; None when they could not be read."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TrialOutcome:
    """How a trial ended."""

    loss: float | None
    """Final loss (None when pruned before any loss)."""
    pruned: bool
    """Stopped early by the pruner (its pods are gone)."""
    steps: int
    """Steps it trained."""
    seconds: float
    """Wall time from submission to the end."""
    checkpoint: str | None = None
    """Its newest Checkpoint object (or URI in-process)."""


Observe = Callable[[Observation], bool]
"""Called per observation, in step order; True asks the runner to stop the trial (pruned)."""


class TrialRunner(Protocol):
    """Runs trials; `elastra.hpo.search` drives it."""

    def run(self, request: TrialRequest, observe: Observe) -> TrialOutcome:
        """Run one trial to its budget or until `observe` says stop. Raises on failure."""
        ...

    def finish(self, *, best: str | None, trials: list[str]) -> None:
        """Apply the cleanup policy once a study is over (`best`: the best trial's name)."""
        ...


def _set_flag(command: list[str], flag: str, value: str) -> list[str]:
    """`command` with `flag value` replaced (both `--f v` and `--f=v`), or appended."""
    out = list(command)
    for i, word in enumerate(out):
        if word == flag and i + 1 < len(out):
            out[i + 1] = value
            return out
        if word.startswith(flag + "="):
            out[i] = f"{flag}={value}"
            return out
    return [*out, flag, value]


def format_value(value: float) -> str:
    """A float as the trainer reads it back exactly."""
    if not math.isfinite(value):
        raise ValueError(f"hyperparameter value {value} is not finite")
    return repr(float(value))


def base_job(spec: HpoSpec, steps: int) -> dict[str, Any]:
    """The warm-start TrainingJob `<study>-base`: the template as written (its own hyperparameters),
    `steps` steps, no `restoreFrom`."""
    job = copy.deepcopy(spec.template)
    meta = job.setdefault("metadata", {})
    meta.update(name=f"{spec.study}-base", namespace=spec.namespace)
    meta["labels"] = {**(meta.get("labels") or {}), STUDY_LABEL: spec.study}
    main = (job["spec"].get("template", {}).get("spec", {}).get("containers") or [None])[0]
    if main is None:
        raise ValueError("template: spec.template.spec.containers is empty")
    main["command"] = _set_flag(
        [*(main.get("command") or []), *(main.pop("args", None) or [])], spec.budget.arg, str(steps)
    )
    if isinstance(job["spec"].get("checkpoint"), dict):
        job["spec"]["checkpoint"].pop("restoreFrom", None)
    return job


def trial_job(
    spec: HpoSpec, request: TrialRequest, *, start_step: int, warm_checkpoint: str | None = None
) -> dict[str, Any]:
    """The TrainingJob manifest of one trial: the template with the trial's hyperparameters (flags of
    the first container's command, or env), `--steps start_step + budget`, `restoreFrom` the warm
    start (`warm_checkpoint` when the search made it), its own name and labels. The template itself is
    not modified."""
    job = copy.deepcopy(spec.template)
    meta = job.setdefault("metadata", {})
    meta["name"] = request.name
    meta["namespace"] = spec.namespace
    meta.pop("resourceVersion", None)
    meta.pop("uid", None)
    meta["labels"] = {**(meta.get("labels") or {}), STUDY_LABEL: spec.study, TRIAL_LABEL: str(request.number)}
    pod_spec = job["spec"].get("template", {}).get("spec", {})
    containers = pod_spec.get("containers") or []
    if not containers:
        raise ValueError("template: spec.template.spec.containers is empty")
    main = containers[0]
    command = [*(main.get("command") or []), *(main.get("args") or [])]
    main.pop("args", None)
    command = _set_flag(command, spec.budget.arg, str(start_step + request.budget_steps))
    env = [e for e in main.get("env") or [] if e.get("name") not in {p.env for p in spec.params.values()}]
    for name, p in spec.params.items():
        value = format_value(request.params[name])
        if p.arg is not None:
            command = _set_flag(command, p.arg, value)
        else:
            env.append({"name": p.env, "value": value})
    main["command"] = command
    main["env"] = env
    checkpoint = job["spec"].get("checkpoint")
    if spec.warm_start is not None:
        if not isinstance(checkpoint, dict):
            raise ValueError("a warm start needs spec.checkpoint in the template")
        source = warm_checkpoint or spec.warm_start.checkpoint
        if source is None:
            raise ValueError("the warm-start Checkpoint is not known yet (run the base job first)")
        checkpoint["restoreFrom"] = source
    elif isinstance(checkpoint, dict):
        checkpoint.pop("restoreFrom", None)
    return job
