"""The FMS surrogate: a Gaussian process (botorch/gpytorch) that forecasts a trial's final loss from its
hyperparameters, the embedding of weights it checkpointed and how far it had trained.

Each finished trial gives one row per checkpoint it logged, `(x, e_s, s/T) -> y`, plus the row of the
weights it started from, `(x, e_0, 0) -> y`: `x` the hyperparameters scaled to [0, 1], `e_s` the
permutation-invariant embedding (`elastra.hpo.embedding`) of its weights at step `s`, `T` its budget
and `y` its final loss. With ARD lengthscales the GP learns which weight statistics carry signal.
The sampler asks it about new hyperparameters at `(x, e_0, 0)`; the pruner about a running trial at
its newest checkpoint.

Decides only: no I/O, no Optuna; pure functions of the rows it is given.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Row:
    """One observation: what the trial looked like at a checkpoint and how it ended."""

    x: tuple[float, ...]
    """Hyperparameters scaled to [0, 1]."""
    embedding: tuple[float, ...]
    """Weight embedding at that checkpoint."""
    fidelity: float
    """Step of the checkpoint over the trial's budget, in [0, 1]."""
    y: float
    """The trial's final loss."""


class Forecaster:
    """A fitted GP over rows; `predict` gives the forecast final loss (mean, std) of query points."""

    def __init__(self, rows: Sequence[Row]) -> None:
        if len(rows) < 2:
            raise ValueError("a forecast needs at least two rows")
        from botorch.fit import fit_gpytorch_mll
        from botorch.models import SingleTaskGP
        from botorch.models.transforms.outcome import Standardize
        from gpytorch.mlls import ExactMarginalLogLikelihood

        emb = torch.tensor([r.embedding for r in rows], dtype=torch.float64)
        self._emb_mean = emb.mean(0)
        self._emb_std = emb.std(0, unbiased=False).clamp_min(1e-9)
        x = torch.stack([self.features(r.x, r.embedding, r.fidelity) for r in rows])
        y = torch.tensor([[r.y] for r in rows], dtype=torch.float64)
        self.best = float(y.min())
        self.model = SingleTaskGP(x, y, outcome_transform=Standardize(m=1))
        mll = ExactMarginalLogLikelihood(self.model.likelihood, self.model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # botorch's input-scaling and fitting advice
            try:
                fit_gpytorch_mll(mll)
            except Exception as exc:  # a failed fit keeps the prior hyperparameters
                log.warning("GP fit failed, using prior hyperparameters: %s", exc)
        self.model.eval()

    def features(self, x: Sequence[float], embedding: Sequence[float], fidelity: float) -> torch.Tensor:
        """The GP input of one point: x, the standardised embedding (squashed into [0, 1]), fidelity."""
        e = (torch.tensor(embedding, dtype=torch.float64) - self._emb_mean) / self._emb_std
        e = torch.sigmoid(e / 2)  # keeps the inputs on the unit cube, as botorch expects
        return torch.cat(
            [torch.tensor(x, dtype=torch.float64), e, torch.tensor([fidelity], dtype=torch.float64)]
        )

    def predict(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation of the final loss at `points` (n x d features)."""
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            post = self.model.posterior(points)
            return post.mean.squeeze(-1), post.variance.clamp_min(1e-12).sqrt().squeeze(-1)

    def suggest(
        self, embedding: Sequence[float], dims: int, *, candidates: int, generator: torch.Generator
    ) -> tuple[float, ...]:
        """The x in [0, 1]^dims maximising log expected improvement over the best final loss, for a
        trial that starts from weights with this embedding (fidelity 0)."""
        from botorch.acquisition.analytic import LogExpectedImprovement

        # Uniform candidates from the caller's generator (reproducible per sampler seed).
        xs = torch.rand(candidates, dims, generator=generator, dtype=torch.float64)
        tail = self.features([0.0] * dims, embedding, 0.0)[dims:]
        points = torch.cat([xs, tail.expand(candidates, -1)], dim=1)
        acq = LogExpectedImprovement(self.model, best_f=self.best, maximize=False)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            values = acq(points.unsqueeze(1))
        values = torch.nan_to_num(values, nan=-math.inf)
        return tuple(float(v) for v in xs[int(values.argmax())])
