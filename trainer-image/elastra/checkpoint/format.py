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

from elastra.checkpoint.geometry import Box
from elastra.storage.base import check_key

FORMAT_NAME = "elastra-checkpoint"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CHUNK_BYTES = 4 << 20
"""Checksums cover fixed chunks of each fragment, so a ranged read verifies only what it reads."""
MAX_HEADER_BYTES = 100 << 20
DIRECT_IO_ALIGN = 4096
"""Shard files are laid out so their data starts at a multiple of this (the page size, a multiple of
every common disk's logical block): the writer stages header and data in one buffer aligned to it and
writes that with direct I/O (no copy into the page cache)."""
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


def shard_file(rank: int) -> str:
    return f"rank-{rank:05d}.safetensors"


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


def _int(value: object, what: str, minimum: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise FormatError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return value


def _ints(value: object, what: str) -> tuple[int, ...]:
    if not isinstance(value, list):
        raise FormatError(f"{what} must be a list of integers, got {value!r}")
    return tuple(_int(v, what) for v in value)


def _fragment(raw: object, path: str, entry_space: tuple[int, ...], itemsize: int, chunk: int) -> Fragment:
    if not isinstance(raw, dict):
        raise FormatError(f"tensor {path}: a fragment must be an object")
    file = raw.get("file")
    if not isinstance(file, str) or "/" in file:
        raise FormatError(f"tensor {path}: bad fragment file {file!r}")
    check_key(file)
    try:
        box = Box(_ints(raw.get("offsets"), f"{path} offsets"), _ints(raw.get("shape"), f"{path} shape"))
    except ValueError as exc:
        raise FormatError(f"tensor {path}: {exc}") from exc
    if not box.within(entry_space):
        raise FormatError(f"tensor {path}: fragment {box} lies outside {entry_space}")
    length = _int(raw.get("length"), f"{path} length")
    if length != box.numel * itemsize:
        raise FormatError(f"tensor {path}: fragment length {length} != {box.numel} elements x {itemsize}")
    checksums = _ints(raw.get("crc32"), f"{path} crc32")
    if len(checksums) != max(1, -(-length // chunk)):
        raise FormatError(f"tensor {path}: {len(checksums)} checksums for {length} bytes")
    return Fragment(file, _int(raw.get("offset"), f"{path} offset"), length, box, checksums)


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate an untrusted manifest."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or doc.get("format") != FORMAT_NAME:
        raise FormatError("not an elastra checkpoint manifest")
    if doc.get("version") != FORMAT_VERSION:
        raise FormatError(
            f"unsupported format version {doc.get('version')!r}; this reader knows {FORMAT_VERSION}"
        )
    chunk = _int(doc.get("chunk_bytes"), "chunk_bytes", 1)
    files_raw = doc.get("files")
    if not isinstance(files_raw, dict):
        raise FormatError("manifest files must be an object")
    files = {check_key(str(k)): _int(v, f"size of {k}") for k, v in files_raw.items()}
    tensors_raw = doc.get("tensors")
    values = doc.get("values")
    meta = doc.get("meta", {})
    if not isinstance(tensors_raw, dict) or not isinstance(values, dict) or not isinstance(meta, dict):
        raise FormatError("manifest tensors, values and meta must be objects")
    tensors: dict[str, TensorEntry] = {}
    for path, raw in tensors_raw.items():
        if not isinstance(raw, dict):
            raise FormatError(f"tensor {path}: must be an object")
        dtype = raw.get("dtype")
        if dtype not in ITEMSIZE:
            raise FormatError(f"tensor {path}: unknown dtype {dtype!r}")
        layout = raw.get("layout")
        if layout not in LAYOUTS:
            raise FormatError(f"tensor {path}: unknown layout {layout!r}")
        shape = _ints(raw.get("shape"), f"{path} shape")
        space = (math.prod(shape),) if layout == "flat" else shape
        fragments_raw = raw.get("fragments")
        if not isinstance(fragments_raw, list):
            raise FormatError(f"tensor {path}: fragments must be a list")
        fragments = tuple(_fragment(f, path, space, ITEMSIZE[dtype], chunk) for f in fragments_raw)
        for f in fragments:
            if f.file not in files or f.offset + f.length > files[f.file]:
                raise FormatError(f"tensor {path}: fragment bytes [{f.offset}, +{f.length}) outside {f.file}")
        sharding = raw.get("sharding", "")
        tensors[path] = TensorEntry(dtype, shape, layout, str(sharding), fragments)
    return Manifest(
        step=_int(doc.get("step"), "step"),
        world_size=_int(doc.get("world_size"), "world_size", 1),
        tensors=tensors,
        values=values,
        files=files,
        chunk_bytes=chunk,
        meta=meta,
    )


def shard_header(
    entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str], *, align: int = 8
) -> bytes:
    """The safetensors header for pieces laid out back to back: `(name, dtype, shape, nbytes)` each.

    Returns the 8-byte little-endian length followed by the JSON, padded with spaces so the data
    section starts `align`-byte aligned: 8 as the safetensors writer does, or a disk block multiple
    (`DIRECT_IO_ALIGN`) so the file can be written from an aligned buffer with direct I/O. Trailing
    spaces are valid JSON, so both read the same."""
    if align < 8 or align % 8:
        raise ValueError(f"header alignment must be a positive multiple of 8, got {align}")
    doc: dict[str, Any] = {"__metadata__": metadata}
    offset = 0
    for name, dtype, shape, nbytes in entries:
        doc[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    body = json.dumps(doc, separators=(",", ":")).encode()
    body += b" " * (-(len(body) + 8) % align)
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
