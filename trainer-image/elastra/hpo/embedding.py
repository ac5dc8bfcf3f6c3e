"""A permutation-invariant embedding of a network's weights (the FMS idea, with moments for a metanetwork).

Permuting the hidden neurons of a layer permutes the rows of its weight matrix and the columns of the
next one; the function the network computes does not change, so neither may the embedding. Every
feature here is a statistic of a multiset that such a permutation leaves alone: the entries of a matrix,
its row norms and its column norms. Per matrix we take 8 such statistics and average them over the
network's matrices (and 2 over its vectors: biases, norms), so the size does not depend on depth and a
Gaussian process can use it with a dozen trials.

Weights are read from a committed checkpoint with the Elastra reader (any world size, any tier).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

from elastra.checkpoint.format import FormatError
from elastra.checkpoint.geometry import Box
from elastra.checkpoint.reader import Sources, read_box, read_manifest
from elastra.storage import S3Options, open_storage

MATRIX_FEATURES = (
    "abs_mean",
    "std",
    "abs_q90",
    "row_norm_mean",
    "row_norm_std",
    "col_norm_mean",
    "col_norm_std",
    "spectral_proxy",
)
VECTOR_FEATURES = ("vec_mean", "vec_std")
FEATURES = MATRIX_FEATURES + VECTOR_FEATURES
DIM = len(FEATURES)
FLOATS = ("F64", "F32", "F16", "BF16")
MAX_ELEMENTS = 50_000_000
"""Read at most this many weight elements per checkpoint (the embedding is a summary, not a copy)."""


def _matrix_stats(w: torch.Tensor) -> list[float]:
    w = w.detach().to(torch.float64).flatten(1)
    flat = w.flatten()
    rows, cols = w.norm(dim=1), w.norm(dim=0)
    sample = flat.abs() if flat.numel() <= 1_000_000 else flat.abs()[:: flat.numel() // 1_000_000 + 1]
    # ||W||_F^2 / max row norm^2: large when energy spreads over many rows (a cheap rank proxy).
    spectral = float((w.square().sum() / rows.square().max().clamp_min(1e-30)) / w.shape[0])
    return [
        float(flat.abs().mean()),
        float(flat.std(unbiased=False)),
        float(torch.quantile(sample, 0.9)),
        float(rows.mean()),
        float(rows.std(unbiased=False)),
        float(cols.mean()),
        float(cols.std(unbiased=False)),
        spectral,
    ]


def weight_embedding(tensors: Mapping[str, torch.Tensor]) -> list[float]:
    """The embedding of these named weights: `DIM` floats, invariant to neuron permutations.

    Matrices (2-D and up, output neurons on dim 0) and vectors are summarised separately; scalars and
    integer tensors (step counters) are ignored. An empty input raises ValueError.
    """
    mats: list[list[float]] = []
    vecs: list[list[float]] = []
    for t in tensors.values():
        if not t.is_floating_point() or t.numel() == 0:
            continue
        if t.dim() >= 2:
            mats.append(_matrix_stats(t))
        elif t.dim() == 1:
            v = t.detach().to(torch.float64)
            vecs.append([float(v.mean()), float(v.std(unbiased=False))])
    if not mats:
        raise ValueError("no weight matrices to embed")
    out = [sum(col) / len(mats) for col in zip(*mats, strict=True)]
    out += [sum(col) / len(vecs) for col in zip(*vecs, strict=True)] if vecs else [0.0, 0.0]
    if not all(math.isfinite(x) for x in out):
        raise ValueError("weights are not finite")
    return out


def read_weights(
    uri: str, *, prefix: str = "", exclude: tuple[str, ...] = ("optim", "optimizer")
) -> dict[str, torch.Tensor]:
    """The unsharded float tensors under `prefix` of the committed checkpoint at `uri` (`…/step-N`),
    without those with a path segment in `exclude` (optimizer moments are not weights). Paths are the
    checkpoint's `/`-joined state keys, e.g. `model/model/blocks.0.qkv.weight` for gpt_tiny.

    Verified as every Elastra read is (checksums); a FormatError names what is wrong."""
    return read_weights_with(uri, None, prefix=prefix, exclude=exclude)


def read_weights_with(
    uri: str, s3: S3Options | None, *, prefix: str = "", exclude: tuple[str, ...] = ("optim", "optimizer")
) -> dict[str, torch.Tensor]:
    """`read_weights` with explicit S3 options (endpoint) for `s3://` URIs."""
    root, _, last = uri.rstrip("/").rpartition("/")
    if not last.startswith("step-") or not last[5:].isdigit():
        raise FormatError(f"{uri!r} is not a step directory")
    storage = open_storage(root, s3)
    manifest = read_manifest(storage, int(last[5:]))
    sources = Sources(manifest, storage)
    out: dict[str, torch.Tensor] = {}
    total = 0
    for path, t in sorted(manifest.tensors.items()):
        if (
            not path.startswith(prefix)
            or not set(path.split("/")).isdisjoint(exclude)
            or t.dtype not in FLOATS
        ):
            continue
        n = math.prod(t.shape)
        if total + n > MAX_ELEMENTS:
            break
        total += n
        if t.layout == "boxes":
            out[path] = read_box(sources, path, Box((0,) * len(t.shape), t.shape), "boxes")
        else:
            out[path] = read_box(sources, path, Box((0,), t.space), "flat").reshape(t.shape)
    if not out:
        raise FormatError(f"{uri}: no float tensors under {prefix!r}")
    return out
