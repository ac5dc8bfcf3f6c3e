"""Hugging Face safetensors files and their shard index, parsed as untrusted input. Pure: no I/O, no torch.

A Hugging Face model directory holds `model.safetensors`, or shards `model-0000i-of-0000n.safetensors`
listed in `model.safetensors.index.json` (`{"metadata": {...}, "weight_map": {name: file}}`). A
safetensors file is an 8-byte little-endian header length, a JSON header
`{"__metadata__": {str: str}, name: {"dtype", "shape", "data_offsets": [begin, end]}}`, then the data
section. Everything here is checked against the real file size before anything is allocated or read:
header length, every tensor's byte range (inside the data section, no overlap, exactly
`numel x itemsize` bytes), dtypes, shapes and names. Every failure is a `FormatError` naming the file
and the field.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from elastra.checkpoint.format import ITEMSIZE, FormatError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_HEADER_BYTES = 100 << 20
"""safetensors' own limit on a header (100 MB)."""
MAX_INDEX_BYTES = 64 << 20
"""An index of a few hundred thousand tensors is a few tens of MB."""
MAX_NDIM = 32
MAX_NAME_CHARS = 1024
SHARD_FILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,200}\.safetensors$")
"""Shard file names an index may name: plain names in the model directory, nothing that walks out."""


@dataclass(frozen=True, slots=True)
class HFTensor:
    """One tensor of a Hugging Face safetensors file."""

    name: str
    """Its Hugging Face name (`transformer.h.0.attn.c_attn.weight`)."""
    file: str
    """File name inside the model directory."""
    dtype: str
    """Safetensors dtype name (one of `elastra.checkpoint.format.ITEMSIZE`)."""
    shape: tuple[int, ...]
    offset: int
    """Absolute byte offset of the first element in the file."""
    length: int
    """Byte length (`numel x itemsize`)."""

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise FormatError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data, object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"{what} is not valid JSON: {type(exc).__name__}: {str(exc)[:200]}") from None
    except FormatError as exc:
        raise FormatError(f"{what}: {exc}") from None


def header_length(prefix: bytes, file: str, file_size: int) -> int:
    """The JSON header length declared by the first 8 bytes of `file`, checked against its size."""
    if file_size < 8 or len(prefix) < 8:
        raise FormatError(f"{file}: {file_size} bytes is shorter than the 8-byte header length")
    (length,) = struct.unpack("<Q", prefix[:8])
    if length < 2 or length > MAX_HEADER_BYTES or 8 + length > file_size:
        raise FormatError(
            f"{file}: header length {length} is impossible for a file of {file_size} bytes "
            f"(at most {MAX_HEADER_BYTES} bytes, inside the file)"
        )
    return int(length)


def _int(value: object, file: str, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise FormatError(f"{file}: {what} must be an integer >= 0, got {str(value)[:80]}")
    return value


def _tensor(name: str, raw: object, file: str, data_start: int, data_size: int) -> HFTensor:
    """One header entry, checked: known dtype, at most `MAX_NDIM` dims, bytes inside the data section
    and exactly `numel x itemsize` of them."""
    where = f"tensor {name[:MAX_NAME_CHARS]!r}"
    if not name or len(name) > MAX_NAME_CHARS:
        raise FormatError(f"{file}: {where}: names must be 1 to {MAX_NAME_CHARS} characters")
    if not isinstance(raw, dict):
        raise FormatError(f"{file}: {where} must be an object")
    dtype = raw.get("dtype")
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        raise FormatError(f"{file}: {where}: unsupported dtype {str(dtype)[:40]!r}")
    shape_raw = raw.get("shape")
    if not isinstance(shape_raw, list) or len(shape_raw) > MAX_NDIM:
        raise FormatError(f"{file}: {where}: shape must be a list of at most {MAX_NDIM} integers")
    shape = tuple(_int(d, file, f"{where} shape") for d in shape_raw)
    offsets = raw.get("data_offsets")
    if not isinstance(offsets, list) or len(offsets) != 2:
        raise FormatError(f"{file}: {where}: data_offsets must be [begin, end]")
    begin, end = (_int(o, file, f"{where} data_offsets") for o in offsets)
    if not begin <= end <= data_size:
        raise FormatError(
            f"{file}: {where}: data_offsets [{begin}, {end}) outside the {data_size}-byte data section"
        )
    if end - begin != math.prod(shape) * ITEMSIZE[dtype]:
        raise FormatError(
            f"{file}: {where}: {end - begin} bytes for shape {list(shape)} of {dtype} "
            f"({math.prod(shape) * ITEMSIZE[dtype]} expected)"
        )
    return HFTensor(name, file, dtype, shape, data_start + begin, end - begin)


def parse_header(header: bytes, file: str, file_size: int) -> tuple[dict[str, str], list[HFTensor]]:
    """`(metadata, tensors)` of a safetensors file from its JSON header (the bytes after the length).

    Checks every tensor against `file_size`: known dtype, at most `MAX_NDIM` non-negative dims, byte
    range `[begin, end)` inside the data section and exactly `numel x itemsize` long, no two ranges
    overlapping."""
    data_start = 8 + len(header)
    doc = _json(header, f"{file} header")
    if not isinstance(doc, dict):
        raise FormatError(f"{file}: the header must be a JSON object")
    metadata = doc.pop("__metadata__", {}) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise FormatError(f"{file}: __metadata__ must map strings to strings")
    data_size = file_size - data_start
    tensors = [_tensor(name, raw, file, data_start, data_size) for name, raw in doc.items()]
    previous: HFTensor | None = None
    for t in sorted(tensors, key=lambda t: (t.offset, t.length)):
        if previous is not None and t.length and t.offset < previous.offset + previous.length:
            raise FormatError(f"{file}: tensors {previous.name!r} and {t.name!r} overlap")
        if t.length:
            previous = t
    return metadata, tensors


def parse_index(data: bytes) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file name) of `model.safetensors.index.json`."""
    if len(data) > MAX_INDEX_BYTES:
        raise FormatError(f"{INDEX_FILE}: {len(data)} bytes is more than the {MAX_INDEX_BYTES} allowed")
    doc = _json(data, INDEX_FILE)
    if not isinstance(doc, dict) or not isinstance(doc.get("weight_map"), dict):
        raise FormatError(f"{INDEX_FILE}: needs a weight_map object")
    weight_map: dict[str, str] = {}
    for name, file in doc["weight_map"].items():
        if not isinstance(file, str) or not SHARD_FILE.match(file):
            raise FormatError(
                f"{INDEX_FILE}: tensor {name[:200]!r} maps to an invalid file {str(file)[:200]!r}"
            )
        weight_map[name] = file
    if not weight_map:
        raise FormatError(f"{INDEX_FILE}: the weight_map is empty")
    return weight_map


def check_against_index(weight_map: Mapping[str, str], tensors: list[HFTensor]) -> dict[str, HFTensor]:
    """The tensors of every shard by name, checked against the index: each tensor exactly once, in the
    file the index names, and every indexed tensor present."""
    by_name: dict[str, HFTensor] = {}
    for t in tensors:
        if t.name in by_name:
            raise FormatError(f"tensor {t.name!r} is in both {by_name[t.name].file} and {t.file}")
        if weight_map.get(t.name) != t.file:
            raise FormatError(
                f"{t.file}: holds tensor {t.name!r}, which {INDEX_FILE} puts in {weight_map.get(t.name)!r}"
            )
        by_name[t.name] = t
    absent = sorted(set(weight_map) - set(by_name))
    if absent:
        raise FormatError(f"{INDEX_FILE} lists {len(absent)} tensor(s) no shard holds, e.g. {absent[:3]}")
    return by_name


def shard_name(index: int, count: int) -> str:
    """Hugging Face's shard file name: `model-00001-of-00003.safetensors` (1-based)."""
    return f"model-{index:05d}-of-{count:05d}.safetensors"


def index_json(weight_map: Mapping[str, str], total_size: int) -> bytes:
    """The index file Hugging Face writes for sharded weights."""
    doc = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode()


def parse_size(text: str) -> int:
    """`5GB`, `500MB`, `10KiB` or a byte count, as Hugging Face's `max_shard_size` reads them."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMGT]?i?B)?\s*", text, re.IGNORECASE)
    if not match:
        raise ValueError(f"not a size: {text!r} (e.g. 5GB, 500MB or a byte count)")
    number, unit = int(match.group(1)), (match.group(2) or "B").upper()
    power = "BKMGT".index(unit[0]) if unit != "B" else 0
    base = 1024 if "I" in unit else 1000
    size = int(number * base**power)
    if size < 1:
        raise ValueError(f"size must be positive, got {text!r}")
    return size
