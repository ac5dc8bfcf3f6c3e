"""Which checkpoint a restore reads, one attempt at reading it (`try_candidate`), applying what it read
to the state (`apply_restored`), and what came of it (`RestoreResult`, `restore_report`). The walk over
the candidates and the collectives that agree on them are `Checkpointer.load`'s.

A restore source is a checkpoint root (`s3://bucket/prefix`, a directory) or one step directory of
one (`<root>/step-N`, what the operator hands a generation as `ELASTRA_RESTORE_URI`, possibly another
job's: `restoreFrom`). Ranks walk the candidates newest first and decide each one together: they agree
on the candidate (an all-reduce MAX of one int64) and on the verdict (an all-reduce MAX of one int64,
1 when this rank could not load it for any reason), so a rank whose manifest parse failed falls back
with the others instead of skipping a collective they wait in.
"""

from __future__ import annotations

import concurrent.futures
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import torch

from elastra.checkpoint.coverage import Coverage, StateMismatch, cover, like
from elastra.checkpoint.format import FormatError, Manifest, parse_step_dir, step_dir
from elastra.checkpoint.reader import Sources, fill_tasks, read_manifest, run_reads
from elastra.checkpoint.report import RestoreReport
from elastra.checkpoint.state import ST_TO_TORCH, TensorLeaf, is_tensor_value, walk
from elastra.storage import Storage

READ_THREADS = 4
"""Restore read tasks in flight per rank (a task reads one run of adjacent bytes of one file, or a
partial chunk): reads and checksums release the GIL, so files are read in parallel."""

NONE = -1
"""The candidate of a rank that has none left."""


@dataclass(frozen=True, slots=True)
class Skipped:
    """A checkpoint a restore tried and could not use."""

    step: int
    """Its step."""
    reason: str
    """Why (this rank's error, or that another rank failed to load it)."""


@dataclass(frozen=True, slots=True)
class RestoreResult:
    """What one `Checkpointer.load` did."""

    requested: int | None
    """The step asked for (`step=`, or the step directory of `source=`); None: the newest."""
    step: int | None
    """The step actually restored; None when nothing was restored."""
    root: str
    """The checkpoint root it was read from."""
    skipped: tuple[Skipped, ...] = ()
    """Newer candidates that were unusable, newest first."""

    @property
    def fell_back(self) -> bool:
        """A requested step was not the one restored."""
        return self.requested is not None and self.step != self.requested


def split_source(uri: str) -> tuple[str, int | None]:
    """`(root, step)` of a restore source: a `<root>/step-N` directory, or a root (step None). Pure."""
    trimmed = uri.rstrip("/") or uri
    head, _, last = trimmed.rpartition("/")
    step = parse_step_dir(last)
    if step is None or not head or head.endswith(":/"):
        return trimmed, None
    return head, step


def next_candidate(committed: list[int], below: int | None) -> int:
    """The newest committed step strictly below `below` (any, when None); `NONE` if there is none. Pure."""
    older = [s for s in committed if below is None or s < below]
    return max(older) if older else NONE


def fill_target(leaf: TensorLeaf, manifest: Manifest) -> torch.Tensor:
    """Where the restore of `leaf` is read to: its own memory when it is a contiguous CPU tensor
    (no copy at all), else a scratch tensor that `_apply` copies over. The saved tensor must have
    the target's dtype and global shape (FormatError otherwise: never a silent cast or a prefix)."""
    entry = manifest.tensors.get(leaf.path)
    where = f"step {manifest.step}, tensor {leaf.path!r}"
    if entry is None:
        raise FormatError(f"{where}: not in the checkpoint")
    if entry.dtype != leaf.dtype:
        raise FormatError(f"{where}, field 'dtype': saved {entry.dtype}, the target is {leaf.dtype}")
    if entry.shape != leaf.shape:
        raise FormatError(
            f"{where}, field 'shape': saved {list(entry.shape)}, the target is {list(leaf.shape)}"
        )
    dtype = ST_TO_TORCH[entry.dtype]
    local = leaf.local
    if local.device.type == "cpu" and local.is_contiguous() and local.dtype == dtype:
        return local.detach().view(leaf.box.shape)
    return torch.empty(leaf.box.shape, dtype=dtype)


def read_candidate(
    storage: Storage, local: Storage | None, step: int, leaves: list[TensorLeaf], *,
    manifest: Manifest | None = None,
) -> tuple[Manifest, Sources, list[torch.Tensor]]:  # fmt: skip
    """One restore attempt of this rank: the validated manifest of `step`, where its files are read
    from, and each leaf's verified data. Raises what the checkpoint provokes (FormatError and its
    ChecksumError for anything wrong with it); `Checkpointer.load` turns any failure into a verdict
    all ranks share. `manifest`: the step's, when the caller already read it."""
    manifest = manifest if manifest is not None else read_manifest(storage, step)
    sources = Sources(manifest, storage, local)
    restored = [fill_target(x, manifest) for x in leaves]
    tasks = [
        task
        for leaf, into in zip(leaves, restored, strict=True)
        for task in fill_tasks(sources, leaf.path, leaf.box, leaf.layout, into)
    ]
    with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
        run_reads(sources, tasks, pool)
    return manifest, sources, restored


CandidateRead = tuple[Coverage, tuple[Manifest, Sources, list[torch.Tensor]]]
"""What one candidate read: which leaves it covers, and the manifest, sources and data of those."""


def try_candidate(
    storage: Storage, local: Storage | None, candidate: int, leaves: list[TensorLeaf], *,
    values: dict[str, Any], allow_missing: bool | Collection[str],
) -> tuple[str | None, bool, CandidateRead | None]:  # fmt: skip
    """One candidate: `(error, the error is a state mismatch, (coverage, what read_candidate read))`."""
    try:
        manifest = read_manifest(storage, candidate)
        coverage = cover(leaves, values, manifest.tensors, step=candidate, allow_missing=allow_missing)
        return None, False, (coverage, read_candidate(storage, local, candidate, coverage.loadable,
                                                      manifest=manifest))  # fmt: skip
    except StateMismatch as exc:
        return str(exc), True, None
    except Exception as exc:  # anything a hostile checkpoint provokes: all ranks decide together
        return (
            (f"{type(exc).__name__}: {exc}" if not isinstance(exc, FormatError) else str(exc)),
            False,
            None,
        )


def restore_report(
    step: int, root: str, coverage: Coverage, by_tier: dict[str, int], started: float
) -> RestoreReport:
    """What a restore of `step` from `root` did, for its one line and the agent's report."""
    tier = max(by_tier, key=lambda t: by_tier[t]) if any(by_tier.values()) else "durable"
    return RestoreReport(
        step=step, source=f"{root}/{step_dir(step)}", restored=len({x.path for x in coverage.loadable}),
        missing=coverage.missing, unexpected=coverage.unexpected, tied=coverage.tied,
        seconds=time.perf_counter() - started, bytes_read=sum(by_tier.values()), tier=tier,
    )  # fmt: skip


def apply_restored(
    state: object, leaves: list[TensorLeaf], restored: list[torch.Tensor], manifest: Manifest
) -> None:
    """Copy what was read into scratch or pinned buffers over the state's tensors (those read in place
    are done), wait for device copies, and set the saved non-tensor values."""
    devices: set[torch.device] = set()
    with torch.no_grad():
        for leaf, data in zip(leaves, restored, strict=True):
            if data.data_ptr() != leaf.local.data_ptr():  # not already read in place
                on_cuda = leaf.local.is_cuda
                leaf.local.copy_(data.view(leaf.local.shape), non_blocking=on_cuda)
                if on_cuda:
                    devices.add(leaf.local.device)
    for device in devices:  # the copies ran on the current streams: done before load() returns
        torch.cuda.current_stream(device).synchronize()  # type: ignore[no-untyped-call]
    for path, container, key, value in list(walk(state)):
        if not is_tensor_value(value) and path in manifest.values:
            container[key] = like(value, manifest.values[path])  # type: ignore[index]
