"""The on-storage format (see docs/format.md): the manifest model and the safetensors-layout header.

Pure: parsing and validation of untrusted bytes, no I/O, no torch. Everything read from storage goes
through `parse_manifest` / `parse_shard_header`, which reject anything malformed with `FormatError`.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

from elastra.checkpoint.geometry import Box, tiling_problem

FORMAT_NAME = "elastra-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_BYTES = 4 << 20
"""Checksums cover fixed chunks of each fragment, so a ranged read verifies only what it reads."""
MAX_HEADER_BYTES = 100 << 20
STEP_DIR = re.compile(r"^step-(\d{1,18})$")

ITEMSIZE: dict[str, int] = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "BOOL": 1, "C64": 8, "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}  # fmt: skip
"""Safetensors dtype names this format uses, and their element sizes."""

LAYOUTS = ("boxes", "flat")


class FormatError(ValueError):
    """A manifest or shard file is malformed, inconsistent or from an unknown format version."""


def step_dir(step: int) -> str:
    return f"step-{step}"


def parse_step_dir(name: str) -> int | None:
    match = STEP_DIR.match(name)
    return int(match.group(1)) if match else None


def shard_file(rank: int, save_id: str | None = None) -> str:
    """A rank's shard file name; with `save_id` (what a save writes), unique to that one save, so a
    save of a step that already exists never overwrites a file a committed manifest names."""
    return f"rank-{rank:05d}-{save_id}.safetensors" if save_id else f"rank-{rank:05d}.safetensors"


@dataclass(frozen=True, slots=True)
class Fragment:
    """One saved piece of a logical tensor: a box of it, stored contiguously (row-major) in one file."""

    file: str
    """Shard file name inside the step directory."""
    offset: int
    """Byte offset of the first element in the file."""
    length: int
    """Byte length."""
    box: Box
    """Where the piece sits in the tensor's global index space (in the flattened 1-D space for `flat`)."""
    checksums: tuple[int, ...]
    """CRC-32 of each `chunk_bytes` chunk of the piece's bytes, in order."""


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One logical tensor: its global dtype and shape and where its pieces are."""

    dtype: str
    """Safetensors dtype name."""
    shape: tuple[int, ...]
    """Global shape."""
    layout: str
    """`boxes`: fragments are N-d boxes; `flat`: 1-D boxes over the row-major flattened tensor."""
    sharding: str
    """How it was sharded at save time (informational, e.g. `mesh=(2, 2) [Shard(0), Replicate()]`)."""
    fragments: tuple[Fragment, ...]

    @property
    def space(self) -> tuple[int, ...]:
        """The index space the fragments' boxes live in."""
        return (math.prod(self.shape),) if self.layout == "flat" else self.shape

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * ITEMSIZE[self.dtype]


@dataclass(frozen=True, slots=True)
class Manifest:
    """The commit marker of one checkpoint, written last."""

    step: int
    world_size: int
    """Ranks in the process group that saved it."""
    tensors: dict[str, TensorEntry]
    """Logical tensors by state path."""
    values: dict[str, Any]
    """Non-tensor (JSON) state by state path."""
    files: dict[str, int] = field(default_factory=dict)
    """Shard file name → size in bytes."""
    chunk_bytes: int = CHUNK_BYTES
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form facts: writer version, creation time, save timings."""

    @property
    def nbytes(self) -> int:
        return sum(self.files.values())


def manifest_to_json(manifest: Manifest) -> bytes:
    doc = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "step": manifest.step,
        "world_size": manifest.world_size,
        "chunk_bytes": manifest.chunk_bytes,
        "files": manifest.files,
        "meta": manifest.meta,
        "tensors": {
            path: {
                "dtype": t.dtype,
                "shape": list(t.shape),
                "layout": t.layout,
                "sharding": t.sharding,
                "fragments": [
                    {
                        "file": f.file,
                        "offset": f.offset,
                        "length": f.length,
                        "offsets": list(f.box.offsets),
                        "shape": list(f.box.shape),
                        "crc32": list(f.checksums),
                    }
                    for f in t.fragments
                ],
            }
            for path, t in manifest.tensors.items()
        },
        "values": manifest.values,
    }
    return json.dumps(doc, indent=1, sort_keys=True, allow_nan=False).encode()


MAX_MANIFEST_BYTES = 256 << 20
"""A manifest larger than this is refused before it is read."""
MAX_CHUNK_BYTES = 1 << 30
"""`chunk_bytes` must lie in (0, MAX_CHUNK_BYTES]."""
MAX_DIMS = 64
MAX_WORLD_SIZE = 1 << 20
MAX_FRAGMENTS = 1 << 16
"""Fragments of one tensor (a save writes at most one per holder and box)."""
MAX_FILE_BYTES = 1 << 50
"""A shard file's declared size; the real size is checked against storage before any read."""
MAX_DEPTH = 64
"""Nesting of JSON values and meta (deeper documents are refused, never recursed into)."""
FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
"""A shard file name: one path component, no `..`, no separators."""


class _Where:
    """Names the step, tensor and field of a problem, so every FormatError says where it is."""

    __slots__ = ("step", "tensor")

    def __init__(self, step: object = None, tensor: str | None = None) -> None:
        self.step, self.tensor = step, tensor

    def error(self, field_name: str, problem: str) -> FormatError:
        step = f"step {self.step}" if isinstance(self.step, int) else "manifest"
        tensor = f", tensor {self.tensor!r}" if self.tensor is not None else ""
        return FormatError(f"{step}{tensor}, field {field_name!r}: {problem}")

    def int_(self, value: object, field_name: str, lo: int = 0, hi: int = 1 << 62) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(field_name, f"must be an integer, got {type(value).__name__}")
        if not lo <= value <= hi:
            raise self.error(field_name, f"must lie in [{lo}, {hi}], got {value}")
        return value

    def ints(self, value: object, field_name: str, *, most: int, hi: int = 1 << 62) -> tuple[int, ...]:
        if not isinstance(value, list):
            raise self.error(field_name, f"must be a list of integers, got {type(value).__name__}")
        if len(value) > most:
            raise self.error(field_name, f"has {len(value)} entries, at most {most} allowed")
        return tuple(self.int_(v, field_name, 0, hi) for v in value)

    def obj(self, value: object, field_name: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(field_name, f"must be an object, got {type(value).__name__}")
        return value

    def str_(self, value: object, field_name: str, most: int = 4096) -> str:
        if not isinstance(value, str):
            raise self.error(field_name, f"must be a string, got {type(value).__name__}")
        if len(value) > most:
            raise self.error(field_name, f"is {len(value)} characters long, at most {most} allowed")
        return value


def _depth_problem(value: object, limit: int) -> bool:
    """Whether JSON `value` nests deeper than `limit` (iterative: never recurses)."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return True
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return False


def _fragment(raw: object, where: _Where, entry: _Entry, files: dict[str, int], chunk: int) -> Fragment:
    item = where.obj(raw, "fragments[]")
    file = where.str_(item.get("file"), "fragments[].file", 255)
    if not FILE_NAME.match(file) or file == MANIFEST:
        raise where.error("fragments[].file", f"{file!r} is not a shard file name")
    if file not in files:
        raise where.error("fragments[].file", f"{file!r} is not listed in files")
    dims = len(entry.space)
    offsets = where.ints(item.get("offsets"), "fragments[].offsets", most=dims, hi=1 << 62)
    shape = where.ints(item.get("shape"), "fragments[].shape", most=dims, hi=1 << 62)
    if len(offsets) != dims or len(shape) != dims:
        raise where.error("fragments[].shape", f"box rank {len(offsets)}/{len(shape)} != {dims}")
    box = Box(offsets, shape)
    if not box.within(entry.space):
        raise where.error("fragments[].offsets", f"box {offsets}+{shape} lies outside {entry.space}")
    numel = math.prod(shape)
    length = where.int_(item.get("length"), "fragments[].length", 0, files[file])
    if length != numel * ITEMSIZE[entry.dtype]:
        raise where.error(
            "fragments[].length", f"{length} != {numel} elements x {ITEMSIZE[entry.dtype]} bytes"
        )
    offset = where.int_(item.get("offset"), "fragments[].offset", 0, files[file])
    if offset + length > files[file]:
        raise where.error("fragments[].offset", f"bytes [{offset}, +{length}) lie outside {file}")
    expected = max(1, -(-length // chunk))
    checksums = where.ints(item.get("crc32"), "fragments[].crc32", most=expected, hi=0xFFFFFFFF)
    if len(checksums) != expected:
        raise where.error("fragments[].crc32", f"{len(checksums)} checksums for {length} bytes")
    return Fragment(file, offset, length, box, checksums)


@dataclass(frozen=True, slots=True)
class _Entry:
    dtype: str
    shape: tuple[int, ...]
    space: tuple[int, ...]


def _tensor(path: str, raw: object, where: _Where, files: dict[str, int], chunk: int) -> TensorEntry:
    item = where.obj(raw, "tensors[]")
    dtype = where.str_(item.get("dtype"), "dtype", 16)
    if dtype not in ITEMSIZE:
        raise where.error("dtype", f"unknown dtype {dtype!r}")
    layout = where.str_(item.get("layout"), "layout", 16)
    if layout not in LAYOUTS:
        raise where.error("layout", f"unknown layout {layout!r}")
    shape = where.ints(item.get("shape"), "shape", most=MAX_DIMS, hi=1 << 62)
    nbytes = math.prod(shape) * ITEMSIZE[dtype]
    if nbytes > sum(files.values()):
        raise where.error("shape", f"{shape} of {dtype} needs {nbytes} bytes; the files hold fewer")
    space = (math.prod(shape),) if layout == "flat" else shape
    fragments_raw = item.get("fragments")
    if not isinstance(fragments_raw, list):
        raise where.error("fragments", "must be a list")
    if len(fragments_raw) > MAX_FRAGMENTS:
        raise where.error("fragments", f"{len(fragments_raw)} fragments, at most {MAX_FRAGMENTS}")
    entry = _Entry(dtype, shape, space)
    fragments = tuple(_fragment(f, where, entry, files, chunk) for f in fragments_raw)
    if math.prod(space) == 0:
        if fragments:
            raise where.error("fragments", "a tensor without elements has no fragments")
    else:
        problem = tiling_problem(space, [f.box for f in fragments])
        if problem is not None:
            raise where.error("fragments", f"do not tile shape {shape} exactly: {problem}")
    sharding = where.str_(item.get("sharding", ""), "sharding")
    return TensorEntry(dtype, shape, layout, sharding, fragments)


def parse_manifest(data: bytes, step: int | None = None) -> Manifest:
    """Parse and validate an untrusted manifest (of `step`, when the caller knows it).

    Every failure is a FormatError naming the step, the tensor and the field; nothing else escapes.
    Numbers are bounded (file sizes by the files listed, which a reader checks against storage before
    reading; `chunk_bytes` by (0, 1 GiB]); each tensor's fragments tile its shape exactly."""
    where = _Where(step)
    if len(data) > MAX_MANIFEST_BYTES:
        raise where.error("(document)", f"{len(data)} bytes, at most {MAX_MANIFEST_BYTES} allowed")
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise where.error("(document)", f"not valid JSON: {exc}") from None
    except RecursionError:
        raise where.error("(document)", "nested too deeply") from None
    doc = where.obj(doc, "(document)")
    if doc.get("format") != FORMAT_NAME:
        raise where.error("format", "not an elastra checkpoint manifest")
    if doc.get("version") != FORMAT_VERSION:
        raise where.error(
            "version", f"unsupported version {doc.get('version')!r}; this reader knows {FORMAT_VERSION}"
        )
    saved_step = where.int_(doc.get("step"), "step")
    if step is not None and saved_step != step:
        raise where.error("step", f"the manifest of step-{step} says step {saved_step}")
    where.step = saved_step
    world_size = where.int_(doc.get("world_size"), "world_size", 1, MAX_WORLD_SIZE)
    chunk = where.int_(doc.get("chunk_bytes"), "chunk_bytes", 1, MAX_CHUNK_BYTES)
    files: dict[str, int] = {}
    for name, size in where.obj(doc.get("files"), "files").items():
        if not FILE_NAME.match(name) or name == MANIFEST:
            raise where.error("files", f"{name!r} is not a shard file name")
        files[name] = where.int_(size, f"files[{name!r}]", 0, MAX_FILE_BYTES)
    values = where.obj(doc.get("values"), "values")
    meta = where.obj(doc.get("meta", {}), "meta")
    for name, value in (("values", values), ("meta", meta)):
        if _depth_problem(value, MAX_DEPTH):
            raise where.error(name, f"nested deeper than {MAX_DEPTH}")
    tensors: dict[str, TensorEntry] = {}
    for path, raw in where.obj(doc.get("tensors"), "tensors").items():
        tensors[path] = _tensor(path, raw, _Where(saved_step, path), files, chunk)
    return Manifest(step=saved_step, world_size=world_size, tensors=tensors, values=values, files=files,
                    chunk_bytes=chunk, meta=meta)  # fmt: skip


def shard_header(entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str]) -> bytes:
    """The safetensors header for pieces laid out back to back: `(name, dtype, shape, nbytes)` each.

    Returns the 8-byte little-endian length followed by the JSON, padded with spaces so the data
    section starts 8-byte aligned (as the safetensors writer does)."""
    doc: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    body = json.dumps(doc, separators=(",", ":")).encode()
    body += b" " * (-(len(body) + 8) % 8)
    return struct.pack("<Q", len(body)) + body


def parse_shard_header(prefix: bytes) -> tuple[int, dict[str, Any]]:
    """(data start offset, header dict) from the first bytes of a safetensors-layout file."""
    if len(prefix) < 8:
        raise FormatError("shard file shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES:
        raise FormatError(f"shard header of {length} bytes is implausibly large")
    if len(prefix) < 8 + length:
        raise FormatError("shard file shorter than its header")
    try:
        header = json.loads(prefix[8 : 8 + length])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"shard header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise FormatError("shard header must be a JSON object")
    return 8 + length, header
