"""Merging two 1 GiB checkpoints keeps peak RSS under 300 MiB above the interpreter's baseline.

The sources are written cheaply with the format module: one 1 GiB F32 tensor, saved as if by 2 ranks
(source A) and by 3 ranks (source B), whose data repeats one 4 MiB block, so every checksum chunk is
the same and its CRC is computed once. The merge runs in a fresh interpreter; its baseline is its RSS
after the imports, its peak the kernel's high-water mark (VmHWM) after the merge."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from elastra.checkpoint.checksum import crc32
from elastra.checkpoint.format import (
    MANIFEST,
    Fragment,
    Manifest,
    TensorEntry,
    manifest_to_json,
    shard_file,
    shard_header,
)
from elastra.checkpoint.geometry import Box
from elastra.checkpoint.reader import Sources, read_box, read_manifest
from elastra.storage import LocalStorage

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
ROWS = COLS = 16384  # F32: 1 GiB
BLOCK_ROWS = 64  # 64 rows x 16384 x 4 bytes = one 4 MiB checksum chunk
LIMIT_MIB = 300


def pattern(seed: int) -> torch.Tensor:
    return torch.randn(BLOCK_ROWS, COLS, generator=torch.Generator().manual_seed(seed))


def write_source(root: Path, step: int, splits: list[int], block: torch.Tensor) -> None:
    """A committed checkpoint of `model/w` (ROWS x COLS), one shard file per row range in `splits`."""
    data = block.numpy().tobytes()
    chunk = len(data)
    block_crc = crc32(data)
    (root / f"step-{step}").mkdir(parents=True)
    fragments, files = [], {}
    bounds = [0, *splits, ROWS]
    for rank, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        assert lo % BLOCK_ROWS == 0 and hi % BLOCK_ROWS == 0
        nbytes = (hi - lo) * COLS * 4
        header = shard_header(
            [("0:model/w", "F32", (hi - lo, COLS), nbytes)], {"format": "elastra-checkpoint"}
        )
        with open(root / f"step-{step}" / shard_file(rank), "wb") as f:
            f.write(header)
            for _ in range((hi - lo) // BLOCK_ROWS):
                f.write(data)
        files[shard_file(rank)] = len(header) + nbytes
        crcs = (block_crc,) * (nbytes // chunk)
        fragments.append(Fragment(shard_file(rank), len(header), nbytes, Box((lo, 0), (hi - lo, COLS)), crcs))
    entry = TensorEntry(
        "F32", (ROWS, COLS), "boxes", f"mesh=({len(bounds) - 1},) [Shard(0)]", tuple(fragments)
    )
    manifest = Manifest(step=step, world_size=len(bounds) - 1, tensors={"model/w": entry}, values={},
                        files=files, chunk_bytes=chunk)  # fmt: skip
    (root / f"step-{step}" / MANIFEST).write_bytes(manifest_to_json(manifest))


CHILD = textwrap.dedent("""
    import json, resource, sys

    import torch
    from elastra.checkpoint import merge

    def rss(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))

    baseline = rss("VmRSS")
    result = merge(sys.argv[1], sys.argv[2:], weights=[0.25, 0.75])
    print(json.dumps({"baseline": baseline, "peak": rss("VmHWM"), "bytes": result.bytes}))
""")


def test_merging_two_1gib_checkpoints_stays_under_300_mib(tmp_path: Path) -> None:
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    try:
        write_source(a, 10, [8192], pattern(1))
        write_source(b, 20, [5504, 11008], pattern(2))
        child = subprocess.run(
            [sys.executable, "-c", CHILD, str(out), str(a), str(b)],
            capture_output=True,
            text=True,
            timeout=280,
            check=False,
            env={**os.environ, "OMP_NUM_THREADS": "1"},
        )
        assert child.returncode == 0, child.stderr
        report = json.loads(child.stdout.strip().splitlines()[-1])
        above = (report["peak"] - report["baseline"]) / 2**20
        print(f"baseline {report['baseline'] / 2**20:.0f} MiB, peak {report['peak'] / 2**20:.0f} MiB")
        assert report["bytes"] > 1 << 30
        assert above < LIMIT_MIB, f"peak RSS {above:.0f} MiB above the baseline"
        storage = LocalStorage(str(out))
        sources = Sources(read_manifest(storage, 20), storage)
        want = (0.25 * pattern(1).double() + 0.75 * pattern(2).double()).float()
        for row in (0, 5504 - 64, 8192, ROWS - 64):  # across both sources' shard boundaries
            got = read_box(sources, "model/w", Box((row, 0), (BLOCK_ROWS, COLS)), "boxes")
            torch.testing.assert_close(got, want, rtol=2.0**-23, atol=0)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # 3 GiB: do not leave it to pytest's retention
