"""The save write path: one aligned staging buffer, checksums while staging, direct I/O, sized S3 parts.

Each test fails on the engine before issue 15: the header was 8-byte padded, lazy staging left the
checksums to a second pass, the file tier copied every byte into the page cache, and S3 parts were a
fixed 8 MiB with one GET per read.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import pathlib
import zlib
from typing import Any

import pytest
import torch
from safetensors import safe_open

from elastra.checkpoint import Checkpointer
from elastra.checkpoint.format import DIRECT_IO_ALIGN
from elastra.storage.local import LocalStorage
from elastra.storage.s3 import S3Options, part_bytes, split_views

MIB = 1 << 20


def resident_pages(path: pathlib.Path) -> int:
    """How many pages of `path` are in the page cache (mincore on a private mapping of it)."""
    size = path.stat().st_size
    with path.open("rb") as f, mmap.mmap(f.fileno(), size, flags=mmap.MAP_PRIVATE) as mapped:
        pages = -(-size // mmap.PAGESIZE)
        vector = (ctypes.c_ubyte * pages)()
        libc = ctypes.CDLL(None, use_errno=True)
        address = ctypes.addressof(ctypes.c_char.from_buffer(mapped))
        if libc.mincore(ctypes.c_void_p(address), ctypes.c_size_t(size), vector) != 0:
            raise OSError(ctypes.get_errno(), "mincore")
        del address
        return sum(v & 1 for v in vector)


def aligned(nbytes: int) -> memoryview:
    raw = torch.arange(nbytes + DIRECT_IO_ALIGN, dtype=torch.int64).to(torch.uint8)
    shift = -raw.data_ptr() % DIRECT_IO_ALIGN
    array: Any = raw[shift : shift + nbytes].numpy()
    return memoryview(array)


@pytest.mark.parametrize(
    ("make_parts", "direct"),
    [
        pytest.param(lambda: [aligned(4 * MIB)], True, id="aligned-whole-pages"),
        pytest.param(lambda: [aligned(4 * MIB + 123)], True, id="aligned-with-a-short-tail"),
        pytest.param(lambda: [memoryview(b"h" * 4096), aligned(2 * MIB + 7)], True, id="header-then-aligned"),
        pytest.param(lambda: [memoryview(b"h" * 5), aligned(2 * MIB)], False, id="unaligned-offset"),
        pytest.param(lambda: [aligned(2 * MIB + 1)[1:]], False, id="unaligned-address"),
        pytest.param(lambda: [memoryview(bytes(3 * MIB))], False, id="read-only-bytes"),
    ],
)
def test_parts_are_written_exactly_and_bulk_goes_around_the_page_cache(
    tmp_path: pathlib.Path, make_parts: object, direct: bool
) -> None:
    parts = make_parts()  # type: ignore[operator]
    storage = LocalStorage(str(tmp_path))
    storage.put_parts("step-1/f", parts)
    path = tmp_path / "step-1" / "f"
    pages = -(-path.stat().st_size // mmap.PAGESIZE)
    resident = resident_pages(path)  # before reading it back, which caches it
    assert path.read_bytes() == b"".join(bytes(p) for p in parts)
    if not storage.direct_io:  # this file system refused O_DIRECT: written through the cache, still exact
        return
    if direct:  # at most the buffered header page and tail page are cached
        assert resident <= 2 < pages
    else:
        assert resident == pages


@pytest.mark.parametrize("staging", ["eager", "lazy"])
@pytest.mark.parametrize(
    "make_state",
    [
        pytest.param(
            lambda: {"w": torch.arange(3 * MIB, dtype=torch.float32).view(-1, 1024)}, id="contiguous"
        ),
        pytest.param(
            lambda: {"w": torch.arange(1 << 20, dtype=torch.float32).view(1024, 1024).t()}, id="transposed"
        ),
        pytest.param(
            lambda: {"a": torch.ones(5, dtype=torch.int8), "b": torch.zeros(0), "c": torch.tensor(2.5)},
            id="small-empty-scalar",
        ),
    ],
)
def test_staged_files_are_aligned_safetensors_with_the_checksums_of_their_bytes(
    tmp_path: pathlib.Path, staging: str, make_state: object
) -> None:
    state = make_state()  # type: ignore[operator]
    ckpt = Checkpointer(str(tmp_path), chunk_bytes=1 * MIB)
    ckpt.save(1, state, staging=staging).wait()
    ckpt.close()
    step = tmp_path / "step-1"
    manifest = json.loads((step / "manifest.json").read_text())
    for entry in manifest["tensors"].values():
        for fragment in entry["fragments"]:
            data = (step / fragment["file"]).read_bytes()
            start = fragment["offset"]
            chunks = [data[s : min(s + MIB, start + fragment["length"])]
                      for s in range(start, start + max(fragment["length"], 1), MIB)]  # fmt: skip
            assert fragment["crc32"] == [zlib.crc32(c) for c in chunks]
    file = next(step.glob("*.safetensors"))
    header_length = int.from_bytes(file.read_bytes()[:8], "little") + 8
    assert header_length % DIRECT_IO_ALIGN == 0
    with safe_open(str(file), framework="pt") as opened:
        for name in opened.keys():  # noqa: SIM118
            path = name.split(":", 1)[1]
            assert torch.equal(opened.get_tensor(name), state[path].contiguous())


@pytest.mark.parametrize(
    ("size", "options", "expected"),
    [
        pytest.param(4 * MIB, S3Options(), 8 * MIB, id="small-object-keeps-the-minimum"),
        pytest.param(256 * MIB, S3Options(), 32 * MIB, id="one-part-per-upload-thread"),
        pytest.param(100 * MIB + 1, S3Options(max_concurrency=4), 26 * MIB, id="rounded-up-to-a-mib"),
        pytest.param(4 * 1024 * MIB, S3Options(), 64 * MIB, id="capped-so-in-flight-parts-bound-memory"),
        pytest.param(
            1000 * 1024 * MIB, S3Options(max_concurrency=1), 103 * MIB, id="part-limit-beats-the-cap"
        ),
    ],
)
def test_part_bytes_is_sized_to_the_object(size: int, options: S3Options, expected: int) -> None:
    got = part_bytes(size, options)
    assert got == expected
    assert -(-size // got) <= 10_000


@pytest.mark.parametrize(
    ("sizes", "pieces", "minimum", "runs"),
    [
        pytest.param([10], 4, 4, [4, 4, 2], id="one-view-cut-in-minimum-runs"),
        pytest.param([3, 3, 3], 3, 1, [3, 3, 3], id="runs-follow-the-total"),
        pytest.param([5, 1], 2, 1, [3, 3], id="runs-span-views"),
        pytest.param([2], 8, 16, [2], id="small-read-is-one-run"),
    ],
)
def test_split_views_covers_every_byte_once(
    sizes: list[int], pieces: int, minimum: int, runs: list[int]
) -> None:
    buffers = [bytearray(n) for n in sizes]
    got = split_views([memoryview(b) for b in buffers], pieces, minimum)
    assert [sum(v.nbytes for v in run) for _, run in got] == runs
    offsets = [offset for offset, _ in got]
    assert offsets == [sum(runs[:i]) for i in range(len(runs))]
    value = 0
    for _, run in got:
        for view in run:
            for i in range(view.nbytes):
                view[i] = value % 251
                value += 1
    assert b"".join(buffers) == bytes(i % 251 for i in range(sum(sizes)))
