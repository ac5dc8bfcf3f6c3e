"""Merging checkpoints: `merge(out, sources, weights=...)` writes a new committed checkpoint whose
tensors are a weighted combination of the sources' (linear, task arithmetic or TIES).

Streaming: each tensor is cut into row-major chunks of at most `chunk_bytes` (`merge_plan`); for each
chunk only the byte ranges of the sources' fragments that hold it are read (any sharding, any world
size, checksums verified by the reader), widened to float64 (F32/F64) or float32 (16/8-bit floats),
combined, cast back and appended to the output shard file, whose checksums are computed as it grows.
The manifest is written last. Memory is a few chunks per source, whatever the model's size.
`workers=N` merges the tensors in N processes, one output file each.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import logging
import multiprocessing
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, BinaryIO

import torch

from elastra.checkpoint.checksum import crc32
from elastra.checkpoint.format import (
    CHUNK_BYTES,
    MANIFEST,
    Fragment,
    Manifest,
    TensorEntry,
    manifest_to_json,
    parse_step_dir,
    step_dir,
)
from elastra.checkpoint.geometry import Box
from elastra.checkpoint.merge_math import MagnitudeSelect, keep_count, linear, task_arithmetic, ties
from elastra.checkpoint.merge_plan import (
    MergeError,
    MergeMethod,
    MergeOptions,
    MergePlan,
    OutPiece,
    WorkerPlan,
    accumulate_dtype,
    check_options,
    check_sources,
    plan_merge,
)
from elastra.checkpoint.plan import checksum_chunks
from elastra.checkpoint.reader import Sources, read_box, read_manifest
from elastra.checkpoint.retention import committed_steps
from elastra.checkpoint.state import ST_TO_TORCH
from elastra.storage import LocalStorage, Storage, join_key, open_storage

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SourceRef:
    """One committed checkpoint: its root, step and what its manifest says."""

    root: str
    step: int
    digest: str
    """`sha256:<hex>` of its manifest."""

    @property
    def uri(self) -> str:
        return f"{self.root.rstrip('/')}/{step_dir(self.step)}"


@dataclass(frozen=True, slots=True)
class MergeResult:
    """What `merge` wrote."""

    uri: str
    """The step directory of the merged checkpoint."""
    step: int
    bytes: int
    files: int
    tensors: int
    manifest_digest: str
    seconds: float
    manifest: Manifest


def split_uri(uri: str) -> tuple[str, int | None]:
    """`root/step-N` -> (`root`, N); a bare root -> (`root`, None)."""
    stripped = uri.rstrip("/")
    head, _, tail = stripped.rpartition("/")
    step = parse_step_dir(tail)
    return (head, step) if step is not None and head else (stripped, None)


def open_source(uri: str) -> tuple[SourceRef, Manifest, Storage]:
    """A source given as `root/step-N`, or a root (its newest committed step)."""
    root, step = split_uri(uri)
    storage = open_storage(root)
    if step is None:
        steps = [s for s, ok in committed_steps(storage).items() if ok]
        if not steps:
            raise MergeError(f"no committed checkpoint under {uri}")
        step = max(steps)
    manifest = read_manifest(storage, step)
    digest = "sha256:" + hashlib.sha256(storage.get(join_key(step_dir(step), MANIFEST))).hexdigest()
    return SourceRef(root, step, digest), manifest, storage


# ---------------------------------------------------------------- the per-tensor engine


@dataclass(frozen=True, kw_only=True, slots=True)
class Inputs:
    """The opened sources (and base) of one merge, in one process: what `merge_tensor` reads."""

    sources: tuple[Sources, ...]
    base: Sources | None


def _read(sources: Sources, path: str, box: Box, wide: torch.dtype) -> torch.Tensor:
    return read_box(sources, path, box, "boxes").to(wide)


def merge_tensor(
    inputs: Inputs, path: str, dtype: str, boxes: Sequence[Box], options: MergeOptions
) -> Iterator[tuple[Box, torch.Tensor]]:
    """The merged chunks of tensor `path`, in the order of `boxes`, in the saved dtype `dtype`."""
    acc = accumulate_dtype(dtype)
    out_dtype = ST_TO_TORCH[dtype]
    if acc is None:  # integers, bools, complex: not averaged, but must agree
        yield from _copy_equal(inputs, path, boxes)
        return
    wide = ST_TO_TORCH[acc]
    thresholds: list[float] = []
    if options.method == MergeMethod.TIES:
        thresholds = _ties_thresholds(inputs, path, boxes, wide, options.density)
    for box in boxes:
        chunks = (_read(s, path, box, wide) for s in inputs.sources)  # read one at a time
        if options.method == MergeMethod.LINEAR:
            merged = linear(chunks, options.weights)
        else:
            assert inputs.base is not None
            base = _read(inputs.base, path, box, wide)
            if options.method == MergeMethod.TASK_ARITHMETIC:
                merged = task_arithmetic(base, chunks, options.weights)
            else:
                merged = ties(base, list(chunks), options.weights, thresholds, options.scale)
        yield box, merged.to(out_dtype)


def _copy_equal(inputs: Inputs, path: str, boxes: Sequence[Box]) -> Iterator[tuple[Box, torch.Tensor]]:
    everyone = ([inputs.base] if inputs.base is not None else []) + list(inputs.sources)
    for box in boxes:
        first = read_box(everyone[0], path, box, "boxes")
        for other in everyone[1:]:
            if not torch.equal(first, read_box(other, path, box, "boxes")):
                raise MergeError(
                    f"tensor {path!r} ({first.dtype}) differs between the sources; only floating-point "
                    "tensors are merged, the others must be equal (leave it out with --include)"
                )
        yield box, first


def _ties_thresholds(
    inputs: Inputs, path: str, boxes: Sequence[Box], wide: torch.dtype, density: float
) -> list[float]:
    """Per source, the magnitude TIES trims its task vector of `path` at (two extra read passes)."""
    assert inputs.base is not None
    numel = sum(b.numel for b in boxes)
    if density >= 1 or numel == 0:
        return [0.0] * len(inputs.sources)
    selects = [MagnitudeSelect(keep_count(numel, density)) for _ in inputs.sources]
    for high in (True, False):
        for box in boxes:
            base = _read(inputs.base, path, box, wide)
            for src, select in zip(inputs.sources, selects, strict=True):
                tau = _read(src, path, box, wide) - base
                (select.observe_high if high else select.observe_low)(tau)
        if high:
            for select in selects:
                select.settle_high()
    return [s.threshold() for s in selects]


# ---------------------------------------------------------------- one worker: one output file


@dataclass(frozen=True, kw_only=True, slots=True)
class _Job:
    """Everything a worker process needs (picklable)."""

    out_root: str
    step: int
    sources: tuple[str, ...]
    """Step URIs."""
    base: str | None
    options: MergeOptions
    chunk: int
    """Checksum chunk of the output."""
    progress: bool


def _open_inputs(job: _Job) -> Inputs:
    def opened(uri: str) -> Sources:
        root, step = split_uri(uri)
        assert step is not None
        storage = open_storage(root)
        return Sources(read_manifest(storage, step), storage)

    return Inputs(sources=tuple(opened(u) for u in job.sources), base=opened(job.base) if job.base else None)


def _spool(storage: Storage, key: str) -> tuple[BinaryIO, str, Callable[[], None]]:
    """A file to stream a shard into, and how to publish it under `key` afterwards: a temporary file
    renamed into place on a local directory, else a local temporary file uploaded (multipart on S3)."""
    if isinstance(storage, LocalStorage):
        final = storage.path_of(key)
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = os.path.join(os.path.dirname(final), f".tmp-{os.path.basename(final)}-{uuid.uuid4().hex[:8]}")
        handle = open(tmp, "wb")  # noqa: SIM115 - closed by the caller

        def publish() -> None:
            os.replace(tmp, final)
            fd = os.open(os.path.dirname(final), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        return handle, tmp, publish
    fd, tmp = tempfile.mkstemp(prefix="elastra-merge-", suffix=".safetensors")
    handle = os.fdopen(fd, "wb")

    def upload() -> None:
        storage.put_file(key, tmp)
        os.unlink(tmp)

    return handle, tmp, upload


def run_worker(job: _Job, plan: WorkerPlan) -> list[tuple[str, Fragment]]:
    """Merge the tensors of `plan` into its shard file; its `(path, fragment)`s for the manifest."""
    inputs = _open_inputs(job)
    storage = open_storage(job.out_root)
    key = join_key(step_dir(job.step), plan.file)
    handle, tmp, publish = _spool(storage, key)
    fragments = []
    pieces = {(p.path, p.box.offsets): p for p in plan.pieces}
    done_bytes, total = 0, plan.size
    started = last = time.monotonic()
    try:
        with handle:
            handle.write(plan.header)
            position = len(plan.header)
            for n, path in enumerate(plan.tensors, 1):
                mine = [p for p in plan.pieces if p.path == path]
                for box, merged in merge_tensor(
                    inputs, path, mine[0].dtype, [p.box for p in mine], job.options
                ):
                    piece = pieces[(path, box.offsets)]
                    fragments.append(
                        (
                            path,
                            _write_piece(
                                handle,
                                plan.file,
                                piece=piece,
                                data=merged,
                                position=position,
                                chunk=job.chunk,
                            ),
                        )
                    )
                    position += piece.nbytes
                    done_bytes += piece.nbytes
                now = time.monotonic()
                if job.progress and (now - last >= 1 or n == len(plan.tensors)):
                    last = now
                    print(
                        f"merge worker {plan.index}: {n}/{len(plan.tensors)} tensors, "
                        f"{done_bytes / 2**20:.1f}/{total / 2**20:.1f} MiB, {now - started:.1f}s",
                        file=sys.stderr,
                        flush=True,
                    )
            handle.flush()
            os.fsync(handle.fileno())
        publish()
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return fragments


def _write_piece(
    handle: BinaryIO, file: str, *, piece: OutPiece, data: torch.Tensor, position: int, chunk: int
) -> Fragment:
    raw: Any = data.contiguous().reshape(-1).view(torch.uint8).numpy()
    view = memoryview(raw) if data.numel() else memoryview(b"")
    if view.nbytes != piece.nbytes:
        raise AssertionError(f"{piece.path}: merged chunk of {view.nbytes} bytes, planned {piece.nbytes}")
    handle.write(view)
    crcs = [crc32(view[s:e]) for s, e in checksum_chunks(view.nbytes, chunk)]
    return Fragment(file, position, piece.nbytes, piece.box, tuple(crcs))


# ---------------------------------------------------------------- the merge


def _same_place(a: str, b: str) -> bool:
    """Whether root `a` is `b` or lies inside it (or the other way round)."""
    if a.startswith("s3://") != b.startswith("s3://"):
        return False
    if a.startswith("s3://"):
        x, y = a.rstrip("/") + "/", b.rstrip("/") + "/"
    else:
        x, y = os.path.realpath(a) + os.sep, os.path.realpath(b) + os.sep
    return x.startswith(y) or y.startswith(x)


def merge(
    out: str,
    sources: Sequence[str],
    *,
    weights: Sequence[float],
    base: str | None = None,
    method: MergeMethod | str = MergeMethod.LINEAR,
    include: Sequence[str] = ("model/",),
    step: int | None = None,
    workers: int = 1,
    density: float = 0.2,
    scale: float = 1.0,
    chunk_bytes: int | None = None,
    progress: bool = False,
) -> MergeResult:
    """Merge the committed checkpoints `sources` (roots or `root/step-N`) into a new committed
    checkpoint at `out` (a root: written as `out/step-<step>`; or `root/step-N`).

    `weights`: one per source. `method`: `linear` (`sum w_i x_i`), `task-arithmetic`
    (`base + sum w_i (x_i - base)`) or `ties` (TIES-merging of `x_i - base`, keeping `density` of
    each task vector, the merged vector times `scale`). Only tensors under the `include` prefixes are
    merged (optimizer state is left out by default; the manifest's meta says what was). `step`
    defaults to the base's step, else the newest source's. Raises MergeError for invalid arguments
    and mismatched sources, FormatError/StorageError for damaged ones (nothing is committed then)."""
    started = time.perf_counter()
    options = MergeOptions(
        method=MergeMethod(method),
        weights=tuple(weights),
        include=tuple(include),
        density=density,
        scale=scale,
        **({"chunk_bytes": chunk_bytes} if chunk_bytes is not None else {}),
    )
    check_options(options, len(sources), base is not None)
    opened = [open_source(u) for u in sources]
    opened_base = open_source(base) if base is not None else None
    named = ([("base " + opened_base[0].uri, opened_base[1])] if opened_base else []) + [
        (f"source {i + 1} ({ref.uri})", m) for i, (ref, m, _) in enumerate(opened)
    ]
    tensors = check_sources(named, options.include)
    out_root, out_step = split_uri(out)
    if step is not None and out_step is not None and step != out_step:
        raise MergeError(f"OUT names step {out_step} but step {step} was asked for")
    if step is None:
        step = (
            out_step
            if out_step is not None
            else (opened_base or max(opened, key=lambda o: o[0].step))[0].step
        )
    if step < 0:
        raise MergeError(f"step must be >= 0, got {step}")
    for ref, _, _ in ([opened_base] if opened_base else []) + opened:
        if _same_place(out_root, ref.root):
            raise MergeError(f"OUT {out} overlaps the source {ref.uri}; write the merge somewhere else")
    storage = open_storage(out_root)
    if storage.exists(join_key(step_dir(step), MANIFEST)):
        raise MergeError(
            f"{out_root}/{step_dir(step)} is already a committed checkpoint; refusing to replace it"
        )
    storage.delete_prefix(step_dir(step))  # leftovers of an earlier, interrupted merge
    plan = plan_merge(tensors, workers, options.chunk_bytes, step)
    job = _Job(
        out_root=out_root,
        step=step,
        sources=tuple(ref.uri for ref, _, _ in opened),
        base=opened_base[0].uri if opened_base else None,
        options=options,
        chunk=CHUNK_BYTES,
        progress=progress,
    )
    reports = _run_all(job, plan)
    ref_manifest = opened_base[1] if opened_base else opened[0][1]
    manifest = _manifest(
        plan, reports, job, reference=ref_manifest, refs=[o[0] for o in opened], base=opened_base
    )
    body = manifest_to_json(manifest)
    storage.put_bytes(join_key(step_dir(step), MANIFEST), body)
    return MergeResult(
        uri=f"{out_root.rstrip('/')}/{step_dir(step)}",
        step=step,
        bytes=manifest.nbytes,
        files=len(manifest.files),
        tensors=len(manifest.tensors),
        manifest_digest="sha256:" + hashlib.sha256(body).hexdigest(),
        seconds=time.perf_counter() - started,
        manifest=manifest,
    )


def _run_all(job: _Job, plan: MergePlan) -> list[list[tuple[str, Fragment]]]:
    if len(plan.workers) == 1:
        return [run_worker(job, plan.workers[0])]
    context = multiprocessing.get_context("spawn")  # torch and threads: never fork
    with concurrent.futures.ProcessPoolExecutor(len(plan.workers), mp_context=context) as pool:
        futures = [pool.submit(run_worker, job, w) for w in plan.workers]
        concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        for future in futures:
            future.cancel()
        return [f.result() for f in futures]


def _manifest(
    plan: MergePlan,
    reports: list[list[tuple[str, Fragment]]],
    job: _Job,
    *,
    reference: Manifest,
    refs: list[SourceRef],
    base: tuple[SourceRef, Manifest, Storage] | None,
) -> Manifest:
    fragments: dict[str, list[Fragment]] = {p: [] for p in plan.tensors}
    for report in reports:
        for path, fragment in report:
            fragments[path].append(fragment)
    files = {w.file: w.size for w in plan.workers}
    tensors = {
        path: TensorEntry(dtype, shape, "boxes", "merged", tuple(fragments[path]))
        for path, (dtype, shape) in plan.tensors.items()
    }
    options = job.options
    left_out = sorted(p for p in reference.tensors if p not in plan.tensors)
    values = {k: v for k, v in reference.values.items() if any(k.startswith(p) for p in options.include)}
    merge_meta: dict[str, Any] = {
        "method": str(options.method),
        "weights": list(options.weights),
        "sources": [{"uri": r.uri, "step": r.step, "manifest_digest": r.digest} for r in refs],
        "base": {"uri": base[0].uri, "step": base[0].step, "manifest_digest": base[0].digest}
        if base
        else None,
        "include": list(options.include),
        "accumulate": "float64 for F32/F64 tensors, float32 for 16- and 8-bit floats",
        "optimizer_state": "merged"
        if any("optim" in p.split("/", 1)[0] for p in plan.tensors)
        else "omitted",
        "left_out_tensors": len(left_out),
        "left_out_prefixes": sorted({p.split("/", 1)[0] + "/" for p in left_out}),
        "workers": len(plan.workers),
        "chunk_bytes": options.chunk_bytes,
    }
    if options.method == MergeMethod.TIES:
        merge_meta.update(density=options.density, scale=options.scale)
    meta = {"writer": "elastra-merge", "created": datetime.now(UTC).isoformat(), "merge": merge_meta}
    return Manifest(step=job.step, world_size=len(plan.workers), tensors=tensors, values=values,
                    files=files, chunk_bytes=job.chunk, meta=meta)  # fmt: skip
