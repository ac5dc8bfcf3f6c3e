"""The search specification `elastra hpo run SPEC.yaml` reads: validated at the edge, frozen after.

```yaml
study: lr-wd                      # names the trials' TrainingJobs: <study>-<method>-<n>
namespace: default
template: examples/gpt_tiny/trainingjob.yaml   # a TrainingJob manifest (path, relative to the spec)
params:
  lr: {low: 1.0e-4, high: 3.0e-2, log: true, arg: --lr}
  weight_decay: {low: 1.0e-4, high: 0.3, log: true, env: WEIGHT_DECAY}
budget: {steps: 40, arg: --steps}
trials: 12
parallel: 2
warmStart: {checkpoint: gpt-tiny-step-20}     # optional: every trial forks from this Checkpoint
                                              # ({steps: 20}: run the template 20 steps first)
methods: [weight-guided, tpe]
cleanup: {policy: keep-best}
```
"""

from __future__ import annotations

import enum
import math
import pathlib
from typing import Annotated, Any, Self

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, alias_generator=to_camel, populate_by_name=True)


class Method(enum.StrEnum):
    """A search method: an Optuna sampler and pruner pair."""

    RANDOM = "random"
    TPE = "tpe"
    TPE_MEDIAN = "tpe-median"
    """TPE with the median pruner on the loss curve."""
    WEIGHT_GUIDED = "weight-guided"
    """`WeightGuidedSampler` with `ForecastPruner` (GP over hyperparameters and weight embeddings)."""


class CleanupPolicy(enum.StrEnum):
    """What happens to trials' TrainingJobs (and, through ownership, their Checkpoints) at the end."""

    KEEP_BEST = "keep-best"
    """Delete every trial but the best; of the best keep only its final Checkpoint."""
    KEEP_ALL = "keep-all"
    """Delete nothing (pruned trials are deleted when pruned either way)."""


class Param(_Spec):
    """One float hyperparameter, passed to the trainer as a command-line argument or an env variable."""

    low: float
    """Smallest value."""
    high: float
    """Largest value."""
    log: bool = False
    """Search on a log scale."""
    arg: Annotated[str, Field(pattern=r"^--[A-Za-z0-9][-A-Za-z0-9_]*$")] | None = None
    """Trainer flag: an existing `FLAG VALUE` in the trainer command is replaced, else appended."""
    env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    """Environment variable of the trainer container."""

    @model_validator(mode="after")
    def _check(self) -> Self:
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"need finite low < high, got [{self.low}, {self.high}]")
        if self.log and self.low <= 0:
            raise ValueError("a log-scale parameter needs low > 0")
        if (self.arg is None) == (self.env is None):
            raise ValueError("a parameter is passed as exactly one of `arg` and `env`")
        return self


class Budget(_Spec):
    """Steps each trial trains (after its warm start's step)."""

    steps: Annotated[int, Field(ge=1, le=10_000_000)]
    """Training steps per trial."""
    arg: Annotated[str, Field(pattern=r"^--[A-Za-z0-9][-A-Za-z0-9_]*$")] = "--steps"
    """Trainer flag taking the total step count (warm-start step + `steps`)."""


class WarmStart(_Spec):
    """A shared Checkpoint every trial forks from (`spec.checkpoint.restoreFrom`): an existing one, or
    one the search makes first by running the template (its own hyperparameters) for `steps` steps."""

    checkpoint: Annotated[str, Field(pattern=NAME, max_length=253)] | None = None
    """Name of a Checkpoint object in the study's namespace."""
    steps: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    """Run the template as TrainingJob `<study>-base` for this many steps; fork from its final Checkpoint."""

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.checkpoint is None) == (self.steps is None):
            raise ValueError("warmStart needs exactly one of `checkpoint` and `steps`")
        return self


class Cleanup(_Spec):
    """Trial checkpoint retention."""

    policy: CleanupPolicy = CleanupPolicy.KEEP_BEST
    """See `CleanupPolicy`."""


class HpoSpec(_Spec):
    """A hyperparameter search whose trials are TrainingJobs."""

    study: Annotated[str, Field(pattern=NAME, max_length=40)]
    """Study name; trials are TrainingJobs named `<study>-<method>-<n>`."""
    namespace: Annotated[str, Field(pattern=NAME, max_length=63)] = "default"
    """Namespace of the trials (and of the warm-start Checkpoint)."""
    template: dict[str, Any]
    """The TrainingJob manifest each trial copies (loaded from a path by `load`)."""
    params: Annotated[
        dict[Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")], Param], Field(min_length=1)
    ]
    """The search space."""
    budget: Budget
    """Steps per trial."""
    trials: Annotated[int, Field(ge=1, le=10_000)] = 8
    """Trials per method."""
    parallel: Annotated[int, Field(ge=1, le=256)] = 1
    """Trials running at once."""
    warm_start: WarmStart | None = None
    """Fork every trial from this Checkpoint; None: every trial starts fresh."""
    methods: Annotated[tuple[Method, ...], Field(min_length=1)] = (Method.WEIGHT_GUIDED,)
    """Methods to run, one study each, with the same trial budget."""
    seed: int = 0
    """Sampler seed."""
    cleanup: Cleanup = Cleanup()
    """Trial checkpoint retention."""
    trial_timeout_seconds: Annotated[float, Field(gt=0)] = 3600.0
    """A trial not finished by then fails (and is deleted)."""

    @model_validator(mode="after")
    def _template_is_a_trainingjob(self) -> Self:
        if self.template.get("kind") != "TrainingJob":
            raise ValueError("template must be a TrainingJob manifest")
        if not isinstance(self.template.get("spec"), dict):
            raise ValueError("template has no spec")
        if len(set(self.methods)) != len(self.methods):
            raise ValueError("methods must be distinct")
        return self


def load(path: str | pathlib.Path) -> HpoSpec:
    """Read and validate a spec file; `template` may be a path relative to it."""
    path = pathlib.Path(path)
    raw = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping")
    template = raw.get("template")
    if isinstance(template, str):
        tpath = (
            (path.parent / template) if not pathlib.Path(template).is_absolute() else pathlib.Path(template)
        )
        if not tpath.exists():
            tpath = pathlib.Path(template)
        raw["template"] = yaml.safe_load(tpath.read_text())
    return HpoSpec.model_validate(raw)
