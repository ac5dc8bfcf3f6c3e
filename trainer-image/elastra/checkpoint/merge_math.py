"""The arithmetic of merging, one chunk at a time. No I/O.

Chunks arrive already widened to the accumulation dtype (float64 for F32/F64 sources, float32 for
16- and 8-bit floats). TIES needs, per tensor and source, the magnitude of the `k`-th largest entry
of its task vector; `MagnitudeSelect` finds it exactly in two streaming passes over the tensor (a
histogram of the high 16 bits of each magnitude's float32 bit pattern, then of the low 16 bits inside
the one high bin that holds it), so its memory is two 64 Ki-entry histograms, not the tensor.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch

BINS = 1 << 16


def linear(chunks: Iterable[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """`sum_i w_i * x_i`. `chunks` (consumed: updated in place) may be a generator: one alive at a time."""
    out: torch.Tensor | None = None
    for chunk, w in zip(chunks, weights, strict=True):
        if out is None:
            out = chunk.mul_(w)
        else:
            out.add_(chunk, alpha=w)
    assert out is not None
    return out


def task_arithmetic(
    base: torch.Tensor, chunks: Iterable[torch.Tensor], weights: Sequence[float]
) -> torch.Tensor:
    """`base + sum_i w_i * (x_i - base)`. `chunks` (consumed) may be a generator."""
    out = base.clone()
    for chunk, w in zip(chunks, weights, strict=True):
        out.add_(chunk.sub_(base), alpha=w)
    return out


def ties(
    base: torch.Tensor,
    chunks: Sequence[torch.Tensor],
    weights: Sequence[float],
    thresholds: Sequence[float],
    scale: float,
) -> torch.Tensor:
    """TIES-merging (Yadav et al., 2023) of the task vectors `t_i = x_i - base`, weighted:

    1. trim: keep the entries of `t_i` with `|t_i| >= thresholds[i]` (zero the rest);
    2. elect: `s = sign(sum_i w_i * t_i)` over the trimmed vectors;
    3. disjoint mean: `m = sum_i w_i t_i [sign t_i = s] / sum_i w_i [sign t_i = s]` (0 where nothing agrees);
    4. `base + scale * m`."""
    trimmed = []
    for chunk, threshold in zip(chunks, thresholds, strict=True):
        tau = chunk - base
        trimmed.append(torch.where(magnitude32(tau) >= threshold, tau, torch.zeros_like(tau)))
    mass = torch.zeros_like(base)
    for tau, w in zip(trimmed, weights, strict=True):
        mass.add_(tau, alpha=w)
    elected = torch.sign(mass)
    num = torch.zeros_like(base)
    den = torch.zeros_like(base)
    for tau, w in zip(trimmed, weights, strict=True):
        agree = (torch.sign(tau) == elected) & (elected != 0)
        num.add_(torch.where(agree, tau, torch.zeros_like(tau)), alpha=w)
        den.add_(agree.to(base.dtype), alpha=w)
    merged = torch.where(
        den != 0, num / torch.where(den != 0, den, torch.ones_like(den)), torch.zeros_like(num)
    )
    return base + scale * merged


def magnitude32(x: torch.Tensor) -> torch.Tensor:
    """`|x|` rounded to float32: the precision TIES compares magnitudes at."""
    return x.abs().to(torch.float32)


def keep_count(numel: int, density: float) -> int:
    """How many entries of a task vector TIES keeps: `ceil(density * numel)`, at least 1."""
    return max(1, min(numel, math.ceil(density * numel - 1e-9)))


class MagnitudeSelect:
    """The exact `k`-th largest float32 magnitude of a tensor seen in chunks, in two passes.

    Pass 1 (`observe_high` every chunk, then `settle_high`) finds the high 16 bits of its bit pattern;
    pass 2 (`observe_low` every chunk, then `threshold`) the low 16. Non-negative float32 values
    order like their bit patterns as integers. NaN magnitudes sort above everything."""

    def __init__(self, k: int) -> None:
        self.k = k
        self._high = torch.zeros(BINS, dtype=torch.int64)
        self._low = torch.zeros(BINS, dtype=torch.int64)
        self._bin: int | None = None
        self._above = 0
        """Entries in high bins above the chosen one."""

    @staticmethod
    def _bits(x: torch.Tensor) -> torch.Tensor:
        return magnitude32(x).reshape(-1).view(torch.int32).to(torch.int64)

    def observe_high(self, x: torch.Tensor) -> None:
        self._high += torch.bincount(self._bits(x) >> 16, minlength=BINS)[:BINS]

    def settle_high(self) -> None:
        above = torch.cumsum(self._high.flip(0), 0).flip(0)  # above[b] = entries in bins >= b
        self._bin = int(torch.nonzero(above >= self.k).max())
        self._above = int(above[self._bin]) - int(self._high[self._bin])

    def observe_low(self, x: torch.Tensor) -> None:
        bits = self._bits(x)
        inside = bits[(bits >> 16) == self._bin]
        self._low += torch.bincount(inside & 0xFFFF, minlength=BINS)[:BINS]

    def threshold(self) -> float:
        """The k-th largest magnitude (float32 value); entries `>=` it are kept."""
        assert self._bin is not None, "settle_high() first"
        above = torch.cumsum(self._low.flip(0), 0).flip(0) + self._above
        low = int(torch.nonzero(above >= self.k).max())
        bits = torch.tensor([(self._bin << 16) | low], dtype=torch.int64).to(torch.int32)
        return float(bits.view(torch.float32)[0])
