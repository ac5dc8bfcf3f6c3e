"""Export a committed checkpoint's model weights as a Hugging Face `from_pretrained` directory.

`elastra ckpt export ROOT --hf OUTDIR`: the tensors under one state prefix (found when not given),
renamed to their Hugging Face names (the path below the prefix), optionally cast to one floating dtype,
written as `model.safetensors`, or as `model-0000i-of-0000n.safetensors` shards plus
`model.safetensors.index.json` above `max_shard_bytes` (Hugging Face's own layout and names). With a
`config.json`, the model class it names (`architectures`) is built on the meta device (no weights, no
download) to learn which weights are tied (written once, under the name Hugging Face keeps) and which
names the model expects: an export that would leave any of them to random initialisation is refused.

Streaming: each tensor is read (with its checksums verified) and written in slabs of at most
`piece_bytes`, so memory stays bounded by that, not by the model. Files are written to temporary names
and renamed; the index and config last.
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from elastra.checkpoint.format import ITEMSIZE, FormatError, Manifest, TensorEntry
from elastra.checkpoint.geometry import Box
from elastra.checkpoint.hf_format import INDEX_FILE, SINGLE_FILE, index_json, shard_name
from elastra.checkpoint.reader import Sources, read_box, read_manifest
from elastra.checkpoint.retention import committed_steps
from elastra.checkpoint.state import ST_TO_TORCH, TORCH_TO_ST
from elastra.storage import Storage, open_storage

DTYPES = {"bf16": "BF16", "fp16": "F16", "fp32": "F32"}
"""`--dtype` choices and their safetensors names."""
MAX_SHARD_BYTES = 5 * 1000**3
"""Above this many bytes of weights, the export is sharded (`save_pretrained(max_shard_size="5GB")`)."""
PIECE_BYTES = 64 << 20
MAX_CONFIG_BYTES = 16 << 20


def unescape(component: str) -> str:
    return component.replace("%2F", "/").replace("%25", "%")


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the model class named by a config expects (learnt on the meta device)."""

    names: frozenset[str]
    """State dict names of the model."""
    tied: dict[str, str]
    """Tied weight -> the weight it is tied to (Hugging Face stores only the latter)."""


def model_info(config: dict[str, Any]) -> ModelInfo | None:
    """The model's names and tied weights, from the transformers class the config's `architectures`
    names (else the causal-LM class of its `model_type`), built on the meta device. None when
    transformers is not installed; FormatError when it knows no such model."""
    try:
        import transformers
    except ImportError:
        return None
    architectures = config.get("architectures") or []
    try:
        if architectures:
            cls = getattr(transformers, str(architectures[0]), None)
            if cls is None or not hasattr(cls, "config_class"):
                raise FormatError(f"transformers has no model class {architectures[0]!r}")
            cfg = cls.config_class.from_dict(dict(config))
            with torch.device("meta"):
                model = cls(cfg)
        else:
            kind = str(config.get("model_type", ""))
            cfg = transformers.AutoConfig.for_model(
                kind, **{k: v for k, v in config.items() if k != "model_type"}
            )
            with torch.device("meta"):
                model = transformers.AutoModelForCausalLM.from_config(cfg)  # type: ignore[no-untyped-call]
    except (ValueError, KeyError, TypeError) as exc:
        raise FormatError(f"the config names no model transformers can build: {exc}") from exc
    tied = dict(getattr(model, "all_tied_weights_keys", None) or {})
    return ModelInfo(frozenset(model.state_dict()), {str(k): str(v) for k, v in tied.items()})


def find_prefix(manifest: Manifest, expected: frozenset[str] | None) -> str:
    """The state prefix of the model weights: the prefix whose direct tensors (no `/` below it) match
    the most expected names, or without a model, are the most numerous (then the most bytes)."""
    groups: dict[str, dict[str, str]] = {}
    for path in manifest.tensors:
        head, _, rest = path.rpartition("/")
        groups.setdefault(f"{head}/" if head else "", {})[unescape(rest)] = path

    def score(prefix: str) -> tuple[int, int, int]:
        names = groups[prefix]
        hits = len(expected.intersection(names)) if expected is not None else 0
        return (hits, len(names), sum(manifest.tensors[p].nbytes for p in names.values()))

    best = max(sorted(groups), key=score)
    if expected is not None and score(best)[0] == 0:
        raise FormatError(
            f"no tensor of step {manifest.step} is named like the config's model; pass --prefix"
        )
    return best


@dataclass(frozen=True, slots=True)
class Item:
    """One tensor to export."""

    name: str
    """Hugging Face name."""
    path: str
    """State path in the checkpoint."""
    entry: TensorEntry
    dtype: str
    """Safetensors dtype written."""

    @property
    def nbytes(self) -> int:
        return math.prod(self.entry.shape) * ITEMSIZE[self.dtype]


@dataclass(kw_only=True, slots=True)
class ExportResult:
    """What an export wrote."""

    step: int
    prefix: str
    files: dict[str, list[str]] = field(default_factory=dict)
    """File -> tensor names in it."""
    dropped_tied: dict[str, str] = field(default_factory=dict)
    """Tied names not written -> the name they are tied to."""
    total_bytes: int = 0


def select(
    manifest: Manifest, prefix: str, dtype: str | None, info: ModelInfo | None
) -> tuple[list[Item], dict[str, str]]:
    """The tensors to write (Hugging Face names, sorted) and the tied ones left out."""
    items = []
    for path, entry in sorted(manifest.tensors.items()):
        if not path.startswith(prefix) or "/" in path[len(prefix) :]:
            continue
        out_dtype = entry.dtype
        if dtype is not None and ST_TO_TORCH[entry.dtype].is_floating_point:
            out_dtype = dtype
        items.append(Item(unescape(path[len(prefix) :]), path, entry, out_dtype))
    if not items:
        raise FormatError(f"no tensor of step {manifest.step} under prefix {prefix!r}")
    names = {i.name for i in items}
    dropped: dict[str, str] = {}
    if info is not None:
        dropped = {t: s for t, s in info.tied.items() if t in names and s in names}
        items = [i for i in items if i.name not in dropped]
        absent = sorted(info.names - names - set(info.tied))
        if absent:
            raise FormatError(
                f"the config's model expects {len(absent)} tensor(s) the checkpoint lacks under "
                f"{prefix!r}, e.g. {absent[:5]}: from_pretrained would initialise them at random"
            )
    return items, dropped


def plan_shards(items: list[Item], max_bytes: int) -> list[list[Item]]:
    """Greedy, in name order: a new file when the next tensor would pass `max_bytes` (a tensor larger
    than that gets a file of its own), as `save_pretrained` does."""
    shards: list[list[Item]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def header_for(items: list[Item], metadata: dict[str, str]) -> tuple[bytes, list[Item]]:
    """The safetensors header (larger elements first, so each tensor is aligned) and the file order."""
    order = sorted(items, key=lambda i: (-ITEMSIZE[i.dtype], i.name))
    doc: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for item in order:
        doc[item.name] = {"dtype": item.dtype, "shape": list(item.entry.shape),
                          "data_offsets": [offset, offset + item.nbytes]}  # fmt: skip
        offset += item.nbytes
    body = json.dumps(doc, separators=(",", ":")).encode()
    body += b" " * (-(len(body) + 8) % 8)
    return struct.pack("<Q", len(body)) + body, order


def slabs(entry: TensorEntry, piece_bytes: int) -> Iterator[tuple[Box, str]]:
    """Boxes (in the entry's index space, with their layout) that cover the tensor in row-major order,
    each at most about `piece_bytes`."""
    itemsize = ITEMSIZE[entry.dtype]
    if entry.layout == "flat" or len(entry.shape) <= 1:
        total = math.prod(entry.shape)
        step = max(1, piece_bytes // itemsize)
        layout = "flat" if entry.layout == "flat" else "boxes"
        if not entry.shape:
            yield Box((), ()), "boxes"
            return
        for start in range(0, total, step) if total else [0]:
            yield Box((start,), (min(step, total - start),)), layout
        return
    row = math.prod(entry.shape[1:]) * itemsize
    rows = max(1, piece_bytes // max(row, 1))
    zeros = (0,) * (len(entry.shape) - 1)
    for start in range(0, entry.shape[0], rows) if entry.shape[0] else [0]:
        n = min(rows, entry.shape[0] - start)
        yield Box((start, *zeros), (n, *entry.shape[1:])), "boxes"


def _write_file(
    path: pathlib.Path, items: list[Item], sources: Sources, piece_bytes: int, metadata: dict[str, str]
) -> list[Item]:
    header, order = header_for(items, metadata)
    tmp = path.with_name(f".tmp-{path.name}")
    with open(tmp, "wb") as f:
        f.write(header)
        for item in order:
            for box, layout in slabs(item.entry, piece_bytes):
                piece = read_box(sources, item.path, box, layout)
                if TORCH_TO_ST[piece.dtype] != item.dtype:
                    piece = piece.to(ST_TO_TORCH[item.dtype])
                if piece.numel():
                    f.write(piece.contiguous().reshape(-1).view(torch.uint8).numpy().data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return order


def _resolve_step(storage: Storage, step: int | None) -> int:
    if step is not None:
        return step
    steps = [s for s, ok in committed_steps(storage).items() if ok]
    if not steps:
        raise FormatError(f"no committed checkpoint under {storage.uri}")
    return max(steps)


def read_config(path: str) -> dict[str, Any]:
    """A `config.json` as an object (bounded, valid JSON)."""
    with open(path, "rb") as f:
        data = f.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise FormatError(f"{path}: more than {MAX_CONFIG_BYTES} bytes; not a model config")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise FormatError(f"{path} must hold a JSON object")
    return doc


def export_hf(
    root: str,
    out_dir: str,
    *,
    step: int | None = None,
    prefix: str | None = None,
    dtype: str | None = None,
    config: str | None = None,
    max_shard_bytes: int = MAX_SHARD_BYTES,
    piece_bytes: int = PIECE_BYTES,
    progress: Callable[[str], None] | None = None,
) -> ExportResult:
    """Write the model weights of `step` (default: the newest committed one) of the checkpoint root
    `root` as a Hugging Face directory `out_dir` (created; must be empty). See the module docstring."""
    say = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    if dtype is not None and dtype not in DTYPES.values():
        raise ValueError(f"dtype must be one of {sorted(DTYPES.values())}, got {dtype!r}")
    storage = open_storage(root.rstrip("/") if root.startswith("s3://") else root)
    manifest = read_manifest(storage, _resolve_step(storage, step))
    config_doc = read_config(config) if config is not None else None
    info = model_info(config_doc) if config_doc is not None else None
    if config_doc is not None and info is None and config_doc.get("tie_word_embeddings", False):
        raise FormatError("the config ties weights but transformers is not installed to say which")
    if prefix is None:
        prefix = find_prefix(manifest, info.names if info is not None else None)
        say(f"export: model weights found under prefix {prefix!r} (pass --prefix to choose)")
    items, dropped = select(manifest, prefix, dtype, info)
    out = pathlib.Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out_dir} exists and is not an empty directory")
    out.mkdir(parents=True, exist_ok=True)
    shards = plan_shards(items, max_shard_bytes)
    sources = Sources(manifest, storage)
    result = ExportResult(step=manifest.step, prefix=prefix, dropped_tied=dropped)
    metadata = {"format": "pt"}
    for i, shard in enumerate(shards):
        name = SINGLE_FILE if len(shards) == 1 else shard_name(i + 1, len(shards))
        order = _write_file(out / name, shard, sources, piece_bytes, metadata)
        result.files[name] = [item.name for item in order]
        size = sum(item.nbytes for item in shard)
        result.total_bytes += size
        say(f"export: wrote {name} ({len(shard)} tensors, {size} bytes) [{i + 1}/{len(shards)}]")
    if len(shards) > 1:
        weight_map = {n: file for file, names in result.files.items() for n in names}
        (out / INDEX_FILE).write_bytes(index_json(weight_map, result.total_bytes))
    if config_doc is not None:
        if dtype is not None:
            torch_name = str(ST_TO_TORCH[dtype]).removeprefix("torch.")
            config_doc["dtype"] = torch_name
            config_doc.pop("torch_dtype", None)
        (out / "config.json").write_text(json.dumps(config_doc, indent=2, sort_keys=True) + "\n")
    return result
