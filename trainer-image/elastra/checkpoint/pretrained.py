"""Start from pretrained weights: restore a state from a Hugging Face safetensors model location.

The location is a directory or an `s3://` prefix holding `model.safetensors`, or shards listed in
`model.safetensors.index.json` (what `save_pretrained` writes). Each rank reads only the byte ranges of
the slices it holds (FSDP2 and TP shards, `Flat` ranges), with ranged reads straight from the
safetensors files: no process ever holds the whole model. The headers are parsed and checked by
`elastra.checkpoint.hf_format` before anything else is read; symbolic links and other non-regular files
are refused.

Names: a Hugging Face tensor `transformer.wte.weight` goes to the state path `<prefix><name>` (the
name escaped as a path component). The prefix is the subtree of the state that holds the model's
weights (`model/` for `{"model": model.state_dict(), "optim": ...}`); when not given it is found: the
one under which the most file names appear. `key_map` renames (or, returning None, drops) file names.

Tied weights: a state tensor the file lacks that shares memory with one it filled (GPT-2's `lm_head`
and `wte`) is tied, not missing. Every other state tensor under the prefix the file lacks is missing: an
error unless allowed. File tensors nothing took are reported as unexpected. Only the weights are
touched: the optimizer state, the step and the rest of the state keep what they hold (a fresh start).
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import stat
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from elastra.checkpoint.coverage import memory_key
from elastra.checkpoint.format import FormatError, Fragment, Manifest, TensorEntry
from elastra.checkpoint.geometry import Box
from elastra.checkpoint.handles import CheckpointError
from elastra.checkpoint.hf_format import (
    INDEX_FILE,
    SINGLE_FILE,
    HFTensor,
    check_against_index,
    header_length,
    parse_header,
    parse_index,
)
from elastra.checkpoint.reader import DirectRead, Sources, fill_tasks, run_reads
from elastra.checkpoint.report import RestoreReport
from elastra.checkpoint.state import ST_TO_TORCH, TensorLeaf, escape, split_state
from elastra.storage import LocalStorage, NotFoundError, S3Options, Storage, StorageError, open_storage

log = logging.getLogger(__name__)

READ_THREADS = 4
UNCHECKED_CHUNK = 8
"""The reader's read granularity for files without checksums: element-aligned for every dtype, so a
rank reads its own slices' bytes (plus at most a few bytes at their ends), not whole checksum chunks."""
KeyMap = Callable[[str], str | None]
"""Hugging Face name -> state path below the prefix (None: do not load it)."""


@dataclass(frozen=True, slots=True)
class PretrainedModel:
    """The validated tensor index of a Hugging Face model location (headers only, no weights)."""

    uri: str
    storage: Storage
    tensors: dict[str, HFTensor]
    """By Hugging Face name."""
    files: dict[str, int]
    """Safetensors file -> size in bytes."""

    @property
    def nbytes(self) -> int:
        return sum(t.length for t in self.tensors.values())


def _regular_size(storage: Storage, key: str) -> int:
    """The size of `key`, refusing symbolic links and anything but a regular file on a file system."""
    if isinstance(storage, LocalStorage):
        path = storage.path_of(key)
        try:
            info = os.lstat(path)
        except FileNotFoundError as exc:
            raise NotFoundError(f"{path} does not exist") from exc
        except OSError as exc:
            raise StorageError(f"{path}: {exc}") from exc
        if stat.S_ISLNK(info.st_mode):
            raise FormatError(
                f"{path} is a symbolic link; Elastra reads only regular files (copy the model with "
                "`cp -rL`, or download it with `hf download --local-dir DIR`, which writes real files)"
            )
        if not stat.S_ISREG(info.st_mode):
            raise FormatError(f"{path} is not a regular file")
        return info.st_size
    size = storage.size(key)
    if size is None:
        raise NotFoundError(f"{storage.uri}/{key} does not exist")
    return size


def _present(storage: Storage, key: str) -> bool:
    """Whether `key` is there at all: on a file system a symbolic link counts (and is refused when
    read, with a clear error), where `exists` would hide it."""
    if isinstance(storage, LocalStorage):
        return os.path.lexists(storage.path_of(key))
    return storage.exists(key)


def _read_header(storage: Storage, file: str) -> list[HFTensor]:
    size = _regular_size(storage, file)
    length = header_length(storage.get_range(file, 0, min(8, size)), file, size)
    _metadata, tensors = parse_header(storage.get_range(file, 8, 8 + length), file, size)
    return tensors


def open_pretrained(uri: str, s3: S3Options | None = None) -> PretrainedModel:
    """Read and validate the headers (and index) of the model at `uri`; FormatError when malformed,
    StorageError when unreadable, NotFoundError when it holds neither weights file nor index."""
    storage = open_storage(uri.rstrip("/") if uri.startswith("s3://") else uri, s3)
    files: dict[str, int] = {}
    if _present(storage, INDEX_FILE):
        size = _regular_size(storage, INDEX_FILE)
        weight_map = parse_index(storage.get_range(INDEX_FILE, 0, size))
        tensors: list[HFTensor] = []
        for file in sorted(set(weight_map.values())):
            tensors += _read_header(storage, file)
            files[file] = _regular_size(storage, file)
        by_name = check_against_index(weight_map, tensors)
    elif _present(storage, SINGLE_FILE):
        tensors = _read_header(storage, SINGLE_FILE)
        files[SINGLE_FILE] = _regular_size(storage, SINGLE_FILE)
        by_name = check_against_index({t.name: SINGLE_FILE for t in tensors}, tensors)
    else:
        raise NotFoundError(f"{uri} holds neither {SINGLE_FILE} nor {INDEX_FILE}")
    return PretrainedModel(storage.uri, storage, by_name, files)


class UncheckedSources(Sources):
    """Reads of a Hugging Face model: files at the root of the location, and no checksums to verify
    (safetensors has none; the header checks bound every read)."""

    __slots__ = ()

    def _check_durable(self, file: str) -> None:
        """The file's size was checked against its header when the location was opened."""

    def fetch_run(self, run: Sequence[DirectRead]) -> None:
        file = run[0].fragment.file
        parts = [r.out for r in run]
        try:
            self.durable.read_into(file, run[0].absolute, parts)
        except NotFoundError as exc:
            raise FormatError(f"pretrained model is missing a file: {exc}") from exc
        self._count("durable", sum(p.nbytes for p in parts))


def _relative(name: str, key_map: KeyMap | None) -> str | None:
    return key_map(name) if key_map is not None else escape(name)


def find_prefix(paths: Iterable[str], names: Iterable[str], key_map: KeyMap | None = None) -> str:
    """The subtree of the state holding the model: the prefix under which the most file names appear
    as state paths. FormatError when none does, or when two prefixes match equally many. Pure."""
    wanted = {rel for rel in (_relative(n, key_map) for n in names) if rel is not None}
    counts: dict[str, int] = {}
    for path in paths:
        cuts = [0] + [i + 1 for i, c in enumerate(path) if c == "/"]
        for cut in cuts:
            if path[cut:] in wanted:
                counts[path[:cut]] = counts.get(path[:cut], 0) + 1
    if not counts:
        sample_paths = sorted(paths)[:3]
        raise FormatError(
            f"no tensor of the state is named like one of the model's (state: {sample_paths}, "
            f"model: {sorted(wanted)[:3]}); pass prefix= or key_map="
        )
    best = max(counts.values())
    winners = sorted(p for p, c in counts.items() if c == best)
    if len(winners) > 1:
        raise FormatError(f"the model's names fit equally well under {winners}; pass prefix=")
    return winners[0]


@dataclass(frozen=True, slots=True)
class Match:
    """How the state's tensors under the prefix meet the file's."""

    pairs: list[tuple[TensorLeaf, HFTensor]]
    missing: list[str]
    unexpected: list[str]
    tied: dict[str, str]


def match(leaves: list[TensorLeaf], model: PretrainedModel, prefix: str, key_map: KeyMap | None) -> Match:
    """Pair every leaf under `prefix` with its file tensor; what is missing, unexpected or tied."""
    by_path: dict[str, HFTensor] = {}
    unexpected: list[str] = []
    for name, tensor in sorted(model.tensors.items()):
        rel = _relative(name, key_map)
        if rel is None:
            unexpected.append(name)
            continue
        path = prefix + rel
        if path in by_path:
            raise FormatError(f"{by_path[path].name!r} and {name!r} both map to {path!r}")
        by_path[path] = tensor
    targets = [leaf for leaf in leaves if leaf.path.startswith(prefix)]
    taken = {leaf.path for leaf in targets}
    unexpected += [t.name for path, t in sorted(by_path.items()) if path not in taken]
    pairs = [(leaf, by_path[leaf.path]) for leaf in targets if leaf.path in by_path]
    filled = {memory_key(leaf): leaf.path for leaf, _ in pairs}
    missing: list[str] = []
    tied: dict[str, str] = {}
    for leaf in targets:
        if leaf.path in by_path:
            continue
        twin = filled.get(memory_key(leaf))
        if twin is not None:
            tied[leaf.path] = twin
        elif leaf.path not in missing:
            missing.append(leaf.path)
    return Match(pairs, missing, sorted(set(unexpected)), tied)


def _check_pair(leaf: TensorLeaf, tensor: HFTensor) -> bool:
    """Whether the pair needs a dtype cast; FormatError when shapes differ or the dtypes cannot be cast."""
    if leaf.shape != tensor.shape:
        raise FormatError(
            f"{leaf.path}: the model's {tensor.name!r} has shape {list(tensor.shape)}, "
            f"the state's is {list(leaf.shape)}"
        )
    if leaf.dtype == tensor.dtype:
        return False
    if ST_TO_TORCH[leaf.dtype].is_floating_point and ST_TO_TORCH[tensor.dtype].is_floating_point:
        return True
    raise FormatError(f"{leaf.path}: the model's {tensor.name!r} is {tensor.dtype}, the state's {leaf.dtype}")


def manifest_of(model: PretrainedModel, pairs: list[tuple[TensorLeaf, HFTensor]]) -> Manifest:
    """The model's tensors as a one-fragment-each manifest keyed by state path (what the reader plans
    on); step 0 and no checksums."""
    tensors = {
        leaf.path: TensorEntry(t.dtype, t.shape, "boxes", "safetensors", (
            Fragment(t.file, t.offset, t.length, Box((0,) * len(t.shape), t.shape), ()),
        ))
        for leaf, t in pairs
    }  # fmt: skip
    return Manifest(step=0, world_size=1, tensors=tensors, values={}, files=dict(model.files),
                    chunk_bytes=UNCHECKED_CHUNK)  # fmt: skip


def _agree(error: str | None, group: Any) -> list[str]:
    """Every rank's error (JSON text through the group), so that all ranks fail or succeed together."""
    if group is None:
        return [error] if error else []
    out: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(out, json.dumps(error), group=group)
    return [e for e in (json.loads(t) for t in out) if e]


def _allowed(path: str, prefix: str, allow: bool | Collection[str]) -> bool:
    return allow if isinstance(allow, bool) else path[len(prefix) :] in allow or path in allow


def load_pretrained(
    state: object,
    uri: str,
    *,
    prefix: str | None = None,
    key_map: KeyMap | None = None,
    allow_missing: bool | Collection[str] = False,
    process_group: Any = None,
    s3: S3Options | None = None,
) -> RestoreReport:
    """Fill the model weights in `state` (nested dicts/lists, as for `Checkpointer.load`) in place from
    the Hugging Face model at `uri`; each rank reads only its own slices.

    `prefix`: state subtree of the weights (found when None). `key_map`: file name -> path below it, or
    None to skip. `allow_missing`: True, or the paths (below the prefix) that may be missing. Raises
    CheckpointError on every rank when any rank cannot load (malformed or unreadable files, shapes or
    dtypes that differ, tensors missing); the state may then be partly overwritten."""
    started = time.perf_counter()
    group = process_group
    if group is None and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        group = dist.group.WORLD
    error: str | None = None
    report: RestoreReport | None = None
    try:
        report = _load(
            state,
            uri=uri,
            prefix=prefix,
            key_map=key_map,
            allow_missing=allow_missing,
            started=started,
            s3=s3,
        )
    except (FormatError, StorageError, ValueError, TypeError) as exc:
        error = f"rank {dist.get_rank(group) if group is not None else 0}: {exc}"
    errors = _agree(error, group)
    if errors or report is None:
        raise CheckpointError(f"cannot start from pretrained weights at {uri}: {'; '.join(errors)}")
    log.info("%s", report.summary())
    return report


def _load(
    state: object,
    *, uri: str, prefix: str | None, key_map: KeyMap | None,
    allow_missing: bool | Collection[str], started: float, s3: S3Options | None,
) -> RestoreReport:  # fmt: skip
    model = open_pretrained(uri, s3)
    leaves, _values = split_state(state)
    if prefix is None:
        prefix = find_prefix([leaf.path for leaf in leaves], model.tensors, key_map)
    found = match(leaves, model, prefix, key_map)
    refused = [p for p in found.missing if not _allowed(p, prefix, allow_missing)]
    if refused:
        raise FormatError(
            f"{len(refused)} tensor(s) of the state under {prefix!r} are not in the model, e.g. "
            f"{refused[:5]}; pass allow_missing= to keep their current values"
        )
    if not found.pairs:
        raise FormatError(f"no tensor of the model maps into the state under {prefix!r}")
    cast = sorted({leaf.path for leaf, t in found.pairs if _check_pair(leaf, t)})
    manifest = manifest_of(model, found.pairs)
    sources = UncheckedSources(manifest, model.storage)
    into = [_destination(leaf, ST_TO_TORCH[t.dtype]) for leaf, t in found.pairs]
    tasks = [
        task
        for (leaf, _t), dst in zip(found.pairs, into, strict=True)
        for task in fill_tasks(sources, leaf.path, leaf.box, leaf.layout, dst)
    ]
    with concurrent.futures.ThreadPoolExecutor(READ_THREADS) as pool:
        run_reads(sources, tasks, pool)
    with torch.no_grad():
        for (leaf, _t), dst in zip(found.pairs, into, strict=True):
            if dst.data_ptr() != leaf.local.data_ptr() or dst.dtype != leaf.local.dtype:
                leaf.local.copy_(dst.view(leaf.local.shape))
    return RestoreReport(
        step=0,
        source=model.uri,
        kind="pretrained",
        restored=len({leaf.path for leaf, _ in found.pairs}),
        missing=tuple(found.missing),
        unexpected=tuple(found.unexpected),
        tied=found.tied,
        cast=tuple(cast),
        seconds=time.perf_counter() - started,
        bytes_read=sources.bytes_by_tier["durable"],
    )


def _destination(leaf: TensorLeaf, dtype: torch.dtype) -> torch.Tensor:
    """The leaf's own memory when it is a contiguous CPU tensor of the file's dtype, else scratch."""
    local = leaf.local
    if local.device.type == "cpu" and local.is_contiguous() and local.dtype == dtype:
        return local.detach().view(leaf.box.shape)
    return torch.empty(leaf.box.shape, dtype=dtype)
