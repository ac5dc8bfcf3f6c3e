"""Merge planning: which tensors merge, in which chunks, into which output file. Pure: no I/O, no torch.

`check_sources` compares the sources' manifests (and the base's) and names the first mismatch;
`plan_merge` cuts every selected tensor into row-major contiguous chunk boxes of at most `chunk_bytes`
(each chunk is one output fragment), spreads the tensors over `workers` output files by bytes, and lays
out each file's safetensors header, so a worker can stream its file front to back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

from elastra.checkpoint.format import ITEMSIZE, Manifest, shard_file, shard_header
from elastra.checkpoint.geometry import Box

FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"})
"""Dtypes merged arithmetically; every other tensor must be equal in all sources and is copied."""
WIDE_DTYPES = frozenset({"F64", "F32"})
"""Accumulated in float64; the other float dtypes in float32."""
DEFAULT_CHUNK_BYTES = 8 << 20
"""Bytes (in the saved dtype) of one merge chunk: what bounds the merge's working memory."""


class MergeError(ValueError):
    """The sources cannot be merged as asked (they disagree, or the arguments are invalid)."""


class MergeMethod(StrEnum):
    """How the chunks of the sources combine (see docs/format.md, "Merged checkpoints")."""

    LINEAR = "linear"
    """`sum_i w_i * x_i`."""
    TASK_ARITHMETIC = "task-arithmetic"
    """`base + sum_i w_i * (x_i - base)`."""
    TIES = "ties"
    """TIES-merging of the task vectors `x_i - base`: trim, elect sign, disjoint weighted mean."""


@dataclass(frozen=True, kw_only=True, slots=True)
class MergeOptions:
    """What to merge and how; validated by `check_options`."""

    method: MergeMethod = MergeMethod.LINEAR
    """The combination rule."""
    weights: tuple[float, ...]
    """One weight per source, in order."""
    include: tuple[str, ...] = ("model/",)
    """State-path prefixes merged; every other tensor (e.g. optimizer state) is left out."""
    density: float = 0.2
    """TIES only: fraction of each task vector's entries kept (largest magnitudes), in (0, 1]."""
    scale: float = 1.0
    """TIES only: the merged task vector is multiplied by this before it is added to the base."""
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    """Most bytes (saved dtype) of one chunk; also the most bytes of one output fragment."""


def check_options(options: MergeOptions, n_sources: int, has_base: bool) -> None:
    """MergeError when the options cannot work with `n_sources` sources (and a base or not)."""
    if n_sources < 1:
        raise MergeError("merge needs at least one source")
    if len(options.weights) != n_sources:
        raise MergeError(f"{len(options.weights)} weight(s) for {n_sources} source(s); give one per source")
    for i, w in enumerate(options.weights):
        if not isinstance(w, int | float) or isinstance(w, bool) or not math.isfinite(w):
            raise MergeError(f"weight {i + 1} is {w!r}; weights must be finite numbers")
    if options.method == MergeMethod.LINEAR and has_base:
        raise MergeError("--base is used by task-arithmetic and ties; linear merges take none")
    if options.method != MergeMethod.LINEAR and not has_base:
        raise MergeError(f"method {options.method} needs --base (the checkpoint the task vectors start from)")
    if not 0 < options.density <= 1 or not math.isfinite(options.density):
        raise MergeError(f"density must be in (0, 1], got {options.density}")
    if not math.isfinite(options.scale):
        raise MergeError(f"scale must be finite, got {options.scale}")
    if not options.include or any(not p for p in options.include):
        raise MergeError("include needs at least one non-empty state-path prefix")
    if options.chunk_bytes < 8:
        raise MergeError(f"chunk_bytes must be at least 8 (one element), got {options.chunk_bytes}")


def selected(manifest: Manifest, include: tuple[str, ...]) -> list[str]:
    """The tensor paths of `manifest` under one of the `include` prefixes, sorted."""
    return sorted(p for p in manifest.tensors if any(p.startswith(prefix) for prefix in include))


def check_sources(
    manifests: list[tuple[str, Manifest]], include: tuple[str, ...]
) -> dict[str, tuple[str, tuple[int, ...]]]:
    """`path -> (dtype, shape)` of the tensors to merge; MergeError naming the first disagreement.

    `manifests` are `(name, manifest)`, the first being the reference (the base when there is one).
    Sources must hold the same selected tensor names with the same shapes and dtypes; how they were
    sharded, and at which world size, does not matter."""
    ref_name, ref = manifests[0]
    paths = selected(ref, include)
    if not paths:
        raise MergeError(f"{ref_name} has no tensor under {', '.join(include)}: nothing to merge")
    for name, manifest in manifests[1:]:
        theirs = selected(manifest, include)
        if theirs != paths:
            missing = sorted(set(paths) - set(theirs))
            extra = sorted(set(theirs) - set(paths))
            if missing:
                raise MergeError(f"{name} has no tensor {missing[0]!r}, which {ref_name} has")
            raise MergeError(f"{name} has a tensor {extra[0]!r}, which {ref_name} has not")
        for path in paths:
            a, b = ref.tensors[path], manifest.tensors[path]
            if a.shape != b.shape:
                raise MergeError(
                    f"tensor {path!r}: shape {list(b.shape)} in {name}, {list(a.shape)} in {ref_name}"
                )
            if a.dtype != b.dtype:
                raise MergeError(f"tensor {path!r}: dtype {b.dtype} in {name}, {a.dtype} in {ref_name}")
    return {p: (ref.tensors[p].dtype, ref.tensors[p].shape) for p in paths}


def chunk_boxes(shape: tuple[int, ...], max_elements: int) -> list[Box]:
    """Row-major contiguous boxes of at most `max_elements` (more only for a 0-d tensor's one) that
    tile `shape` in order: blocks of whole rows, or pieces of one row when a row alone is too big."""
    if not shape:
        return [Box((), ())]
    if math.prod(shape) == 0:
        return []
    limit = max(1, max_elements)
    inner = math.prod(shape[1:])
    rest = (0,) * (len(shape) - 1)
    if inner <= limit:
        rows = max(1, limit // inner)
        return [Box((r, *rest), (min(rows, shape[0] - r), *shape[1:])) for r in range(0, shape[0], rows)]
    sub = chunk_boxes(shape[1:], limit)
    return [Box((r, *b.offsets), (1, *b.shape)) for r in range(shape[0]) for b in sub]


@dataclass(frozen=True, slots=True)
class OutPiece:
    """One output fragment: a chunk box of one tensor, at `data_offset` in its file's data section."""

    path: str
    dtype: str
    shape: tuple[int, ...]
    """The tensor's global shape."""
    box: Box
    data_offset: int

    @property
    def nbytes(self) -> int:
        return self.box.numel * ITEMSIZE[self.dtype]


@dataclass(frozen=True, slots=True)
class WorkerPlan:
    """What one merge worker writes: one shard file, its header and its pieces in file order."""

    index: int
    file: str
    header: bytes
    """The file's safetensors header (length prefix included); the data follows it."""
    pieces: tuple[OutPiece, ...]
    """Grouped by tensor, each tensor's chunks in row-major order."""

    @property
    def size(self) -> int:
        return len(self.header) + sum(p.nbytes for p in self.pieces)

    @property
    def tensors(self) -> list[str]:
        """The tensor paths this worker merges, in file order."""
        return list(dict.fromkeys(p.path for p in self.pieces))


@dataclass(frozen=True, slots=True)
class MergePlan:
    """The whole merge: every worker's file."""

    workers: tuple[WorkerPlan, ...]
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    """path -> (dtype, shape) of every merged tensor."""

    @property
    def nbytes(self) -> int:
        return sum(w.size for w in self.workers)


def plan_merge(
    tensors: dict[str, tuple[str, tuple[int, ...]]], workers: int, chunk_bytes: int, step: int
) -> MergePlan:
    """Spread `tensors` over at most `workers` files (largest first, to the lightest file) and lay out
    each file: tensors by decreasing element size (every piece aligned to its element size), then path."""
    if workers < 1:
        raise MergeError(f"workers must be at least 1, got {workers}")
    count = max(1, min(workers, len(tensors)))
    load = [0] * count
    assigned: list[list[str]] = [[] for _ in range(count)]
    nbytes = {p: math.prod(shape) * ITEMSIZE[dtype] for p, (dtype, shape) in tensors.items()}
    for path in sorted(tensors, key=lambda p: (-nbytes[p], p)):
        w = min(range(count), key=lambda i: (load[i], i))
        load[w] += nbytes[path]
        assigned[w].append(path)
    plans = []
    for w, paths in enumerate(assigned):
        pieces: list[OutPiece] = []
        offset = 0
        for path in sorted(paths, key=lambda p: (-ITEMSIZE[tensors[p][0]], p)):
            dtype, shape = tensors[path]
            for box in chunk_boxes(shape, chunk_bytes // ITEMSIZE[dtype]):
                piece = OutPiece(path, dtype, shape, box, offset)
                pieces.append(piece)
                offset += piece.nbytes
        header = shard_header(
            [(f"{i}:{p.path}", p.dtype, p.box.shape, p.nbytes) for i, p in enumerate(pieces)],
            {"format": "elastra-checkpoint", "version": "1", "step": str(step), "writer": "elastra-merge"},
        )
        plans.append(WorkerPlan(w, shard_file(w), header, tuple(pieces)))
    return MergePlan(tuple(plans), dict(tensors))


def accumulate_dtype(dtype: str) -> str | None:
    """The dtype a tensor of `dtype` is accumulated in (`F64` or `F32`), None when it is not merged
    arithmetically (integers, bools, complex: those must be equal in every source)."""
    if dtype not in FLOAT_DTYPES:
        return None
    return "F64" if dtype in WIDE_DTYPES else "F32"
