"""Filling slices from saved fragments: in-place reads of whole checksum chunks, partial chunks at the
ends, non-contiguous overlaps, and checksum failures, against an in-memory tier (our Storage protocol)."""

from __future__ import annotations

import math
import zlib

import pytest
import torch

from elastra.checkpoint.checksum import crc32
from elastra.checkpoint.format import Fragment, Manifest, TensorEntry, shard_file
from elastra.checkpoint.geometry import Box
from elastra.checkpoint.plan import checksum_chunks
from elastra.checkpoint.reader import ChecksumError, Sources, fill_tasks, read_box, run_reads
from elastra.storage import NotFoundError, StorageError

CHUNK = 32
"""Tiny checksum chunks (8 float32 elements), so small tensors have whole and partial chunks."""


class MemoryTier:
    """A tier holding files in memory; counts the bytes each read asks for."""

    uri = "memory://"

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.reads: list[int] = []

    def size(self, key: str) -> int | None:
        return len(self.files[key]) if key in self.files else None

    def read_into(self, key: str, start: int, parts: list[memoryview]) -> None:
        if key not in self.files:
            raise NotFoundError(key)
        total = sum(p.nbytes for p in parts)
        data = self.files[key][start : start + total]
        if len(data) != total:
            raise StorageError(f"short read of {key}")
        for part in parts:
            part[:] = data[: part.nbytes]
            data = data[part.nbytes :]
        self.reads.append(total)


def saved(shape: tuple[int, ...], row_splits: int, pad: int = 12) -> tuple[torch.Tensor, Manifest, bytes]:
    """A float32 tensor saved as `row_splits` row blocks in one file (after a `pad`-byte header)."""
    full = torch.arange(math.prod(shape), dtype=torch.float32).reshape(shape)
    blob = bytearray(pad)
    fragments = []
    rows = -(-shape[0] // row_splits)
    for start in range(0, shape[0], rows):
        part = full[start : start + rows].contiguous()
        data = part.numpy().tobytes()
        crcs = tuple(zlib.crc32(data[a:b]) for a, b in checksum_chunks(len(data), CHUNK))
        box = Box((start, *([0] * (len(shape) - 1))), tuple(part.shape))
        fragments.append(Fragment(shard_file(0), len(blob), len(data), box, crcs))
        blob += data
    entry = TensorEntry("F32", shape, "boxes", "", tuple(fragments))
    manifest = Manifest(step=3, world_size=1, tensors={"t": entry}, values={},
                        files={shard_file(0): len(blob)}, chunk_bytes=CHUNK)  # fmt: skip
    return full, manifest, bytes(blob)


def key() -> str:
    return f"step-3/{shard_file(0)}"


CASES = [
    pytest.param((16, 8), 2, Box((0, 0), (16, 8)), id="whole-fragments-read-in-place"),
    pytest.param((16, 8), 2, Box((3, 0), (9, 8)), id="rows-across-fragments-partial-chunks-at-both-ends"),
    pytest.param((16, 8), 1, Box((1, 0), (1, 8)), id="one-row-inside-one-chunk"),
    pytest.param((16, 6), 3, Box((2, 0), (13, 6)), id="rows-not-aligned-to-chunks"),
    pytest.param((16, 8), 2, Box((0, 2), (16, 3)), id="column-slice-not-contiguous"),
    pytest.param((5, 3), 2, Box((0, 0), (5, 3)), id="fragments-shorter-than-a-chunk"),
]


@pytest.mark.parametrize(("shape", "splits", "target"), CASES)
def test_fill_puts_every_element_where_it_belongs(shape, splits, target) -> None:
    full, manifest, blob = saved(shape, splits)
    sources = Sources(manifest, MemoryTier({key(): blob}))
    out = read_box(sources, "t", target, "boxes")
    want = full[tuple(slice(o, o + n) for o, n in zip(target.offsets, target.shape, strict=True))]
    assert torch.equal(out, want)


def test_contiguous_overlap_is_read_into_the_target_and_only_the_needed_chunks() -> None:
    full, manifest, blob = saved((64, 8), 1)
    tier = MemoryTier({key(): blob})
    target = Box((8, 0), (32, 8))  # rows 8..39: exactly chunks 8..39 of the one fragment
    dst = torch.zeros(32, 8)
    pointer = dst.data_ptr()
    sources = Sources(manifest, tier)
    run_reads(sources, fill_tasks(sources, "t", target, "boxes", dst), None)
    assert dst.data_ptr() == pointer and torch.equal(dst, full[8:40])
    assert sum(tier.reads) == 32 * 8 * 4  # not a byte outside the slice: it is chunk-aligned


def test_flipped_byte_in_a_chunk_read_in_place_is_a_checksum_error() -> None:
    _full, manifest, blob = saved((16, 8), 2)
    bad = bytearray(blob)
    bad[12 + 5 * CHUNK + 3] ^= 0x10
    sources = Sources(manifest, MemoryTier({key(): bytes(bad)}))
    with pytest.raises(ChecksumError, match="checksum mismatch in bytes"):
        read_box(sources, "t", Box((0, 0), (16, 8)), "boxes")


def test_bad_local_copy_falls_back_to_the_durable_tier_in_place() -> None:
    full, manifest, blob = saved((16, 8), 2)
    bad = bytearray(blob)
    bad[-1] ^= 0x01
    sources = Sources(manifest, MemoryTier({key(): blob}), MemoryTier({key(): bytes(bad)}))
    out = read_box(sources, "t", Box((0, 0), (16, 8)), "boxes")
    assert torch.equal(out, full)
    assert sources.bytes_by_tier["durable"] > 0


def test_target_of_another_dtype_is_refused() -> None:
    _full, manifest, blob = saved((4, 8), 1)
    with pytest.raises(ValueError, match="contiguous CPU F32"):
        fill_tasks(Sources(manifest, MemoryTier({key(): blob})), "t", Box((0, 0), (4, 8)), "boxes",
                   torch.zeros(4, 8, dtype=torch.float64))  # fmt: skip


@pytest.mark.parametrize("size", [0, 1, 31, 4096, (1 << 20) + 7])
def test_crc32_equals_zlib(size: int) -> None:
    data = bytes((i * 131) % 251 for i in range(size))
    assert crc32(memoryview(data)) == zlib.crc32(data)


def test_adjacent_fragments_of_a_file_are_read_in_one_call() -> None:
    full, manifest, blob = saved((16, 8), 4)  # four row blocks, back to back in one file
    tier = MemoryTier({key(): blob})
    out = read_box(Sources(manifest, tier), "t", Box((0, 0), (16, 8)), "boxes")
    assert torch.equal(out, full)
    assert tier.reads == [16 * 8 * 4]
