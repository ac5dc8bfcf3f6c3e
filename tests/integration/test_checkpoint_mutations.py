"""Property tests (hypothesis): random mutations of real checkpoints written by two gloo ranks (an FSDP2
model's DTensor parameters and a `Flat`-partitioned tensor), read back at world size 1.

Every attempt ends one of two ways: a FormatError (ChecksumError included), or a bit-exact load. Never
another exception, and never Python allocations beyond a small multiple of the checkpoint's real size
(a declared size that is trusted would allocate far more). Non-tensor `values` are plain JSON and are
not mutated here: the format does not checksum them (docs/format.md).
"""

from __future__ import annotations

import copy
import json
import shutil
import socket
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from elastra.checkpoint import Checkpointer, Flat, FormatError
from elastra.checkpoint.restore import read_candidate
from elastra.checkpoint.state import split_state
from elastra.storage import LocalStorage

pytestmark = pytest.mark.timeout(300)

STEP = 7
FLAT_SHAPE = (9, 13)
CHUNK = 1024
EXAMPLES = 120


def _model() -> torch.nn.Module:
    torch.manual_seed(3)
    return torch.nn.Sequential(torch.nn.Linear(24, 20), torch.nn.ReLU(), torch.nn.Linear(20, 7))


def _flat_full() -> torch.Tensor:
    return torch.arange(FLAT_SHAPE[0] * FLAT_SHAPE[1], dtype=torch.float32).reshape(FLAT_SHAPE) / 7


def _save(rank: int, port: int, root: str) -> None:
    from torch.distributed.fsdp import fully_shard

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = _model()
    fully_shard(model[0])
    fully_shard(model)
    flat = _flat_full().reshape(-1)
    cut = 50  # uneven on purpose
    lo, hi = (0, cut) if rank == 0 else (cut, flat.numel())
    state = {
        "model": dict(model.named_parameters()),
        "flat": Flat(flat[lo:hi].clone(), lo, hi - lo, FLAT_SHAPE),
        "epoch": 3,
    }
    Checkpointer(root, chunk_bytes=CHUNK).save(STEP, state).wait()
    dist.barrier()
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mutations") / "ckpt"
    mp.spawn(_save, args=(_free_port(), str(root)), nprocs=2, join=True)
    return root


def _expected() -> dict[str, torch.Tensor]:
    model = _model()
    out = {f"model/{k}": v.detach().clone() for k, v in model.named_parameters()}
    out["flat"] = _flat_full()
    return out


def _target() -> dict[str, Any]:
    return {
        "model": {k: torch.zeros_like(v) for k, v in _model().named_parameters()},
        "flat": torch.zeros(FLAT_SHAPE),
        "epoch": 0,
    }


def _attempt(root: Path) -> tuple[str, int]:
    """Read step STEP into a fresh target: ("ok"|error class name, peak Python bytes allocated)."""
    target = _target()
    leaves, _ = split_state(target)
    tracemalloc.start()
    try:
        try:
            _, _, restored = read_candidate(LocalStorage(str(root)), None, STEP, leaves)
        except FormatError as exc:
            return type(exc).__name__, tracemalloc.get_traced_memory()[1]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    expected = _expected()
    for leaf, data in zip(leaves, restored, strict=True):
        assert torch.equal(data.view(leaf.local.shape), expected[leaf.path]), f"{leaf.path}: not bit-exact"
    return "ok", peak


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path into the manifest except under `values` (unchecksummed JSON state)."""
    out = [prefix] if prefix else []
    if prefix[:1] == ("values",):
        return []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out += _paths(v, (*prefix, i))
    return out


LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 8, 15, 16, 1023, 1024, 2**31, 2**32, 2**62, 2**63, 2**64]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=6),
    st.sampled_from(["F32", "BF16", "I64", "flat", "boxes", "..", "manifest.json", "/etc/passwd"]),
)
VALUES = st.recursive(
    LEAVES, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=4), kids, max_size=3),
    max_leaves=6,
)  # fmt: skip


def _mutate(doc: dict[str, Any], data: st.DataObject) -> bytes:
    for _ in range(data.draw(st.integers(1, 2), label="mutations")):
        paths = _paths(doc)
        # Half the time a whole fragment or one of its fields: where the geometry lives.
        fragments = [p for p in paths if "fragments" in p[-3:-1] or p[-1:] == ("fragments",)]
        pool = fragments if fragments and data.draw(st.booleans(), label="geometry") else paths
        path = data.draw(st.sampled_from(pool), label="path")
        parent: Any = doc
        for key in path[:-1]:
            parent = parent[key]
        key = path[-1]
        kinds = ["replace", "delete", "duplicate", "clone", "nudge", "nest"]
        kind = data.draw(st.sampled_from(kinds), label="kind")
        if kind == "replace":
            parent[key] = data.draw(VALUES, label="value")
        elif kind == "delete":
            del parent[key]
        elif kind == "duplicate" and isinstance(parent, list):
            parent.insert(key, copy.deepcopy(parent[key]))
        elif kind == "clone" and isinstance(parent, list) and len(parent) > 1:  # [A, B] -> [A, A]
            other = data.draw(st.sampled_from([i for i in range(len(parent)) if i != key]), label="other")
            parent[key] = copy.deepcopy(parent[other])
        elif kind == "nudge" and isinstance(parent[key], int) and not isinstance(parent[key], bool):
            parent[key] += data.draw(st.sampled_from([-1, 1, -8, 8, 1024, 2**40]), label="delta")
        elif kind == "nest":
            parent[key] = json.loads("[" * 200 + json.dumps(parent[key]) + "]" * 200)
    text = json.dumps(doc).encode()
    if data.draw(st.booleans(), label="byte-level"):
        at = data.draw(st.integers(0, len(text) - 1), label="at")
        if data.draw(st.booleans(), label="truncate"):
            text = text[:at]
        else:
            text = (
                text[:at]
                + bytes([text[at] ^ (1 << data.draw(st.integers(0, 7), label="bit"))])
                + text[at + 1 :]
            )
    return text


def _real_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in (root / f"step-{STEP}").iterdir())


def test_unmutated_checkpoint_loads_bit_exact(saved: Path) -> None:
    manifest = json.loads((saved / f"step-{STEP}" / "manifest.json").read_text())
    assert manifest["world_size"] == 2 and len(manifest["files"]) == 2, "written by two ranks"
    layouts = {t["layout"] for t in manifest["tensors"].values()}
    assert layouts == {"boxes", "flat"}, "DTensor (FSDP2) and Flat tensors"
    assert _attempt(saved)[0] == "ok"


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(data=st.data())
def test_mutated_manifest_is_refused_or_loads_bit_exact(
    saved: Path, tmp_path_factory: Any, data: Any
) -> None:
    root = tmp_path_factory.mktemp("m") / "ckpt"
    shutil.copytree(saved, root)
    manifest = root / f"step-{STEP}" / "manifest.json"
    manifest.write_bytes(_mutate(json.loads(manifest.read_text()), data))
    outcome, peak = _attempt(root)  # any other exception fails the property
    assert outcome in ("ok", "FormatError", "ChecksumError")
    assert peak < 4 * _real_bytes(root) + (8 << 20), f"{outcome}: {peak} bytes allocated"


@settings(max_examples=EXAMPLES // 2, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(data=st.data())
def test_damaged_shard_bytes_are_refused_or_harmless(saved: Path, tmp_path_factory: Any, data: Any) -> None:
    root = tmp_path_factory.mktemp("s") / "ckpt"
    shutil.copytree(saved, root)
    shards = sorted((root / f"step-{STEP}").glob("rank-*.safetensors"))
    shard = data.draw(st.sampled_from(shards), label="shard")
    blob = bytearray(shard.read_bytes())
    if data.draw(st.booleans(), label="truncate"):
        del blob[data.draw(st.integers(0, len(blob) - 1), label="at") :]
    else:
        at = data.draw(st.integers(0, len(blob) - 1), label="at")
        blob[at] ^= 1 << data.draw(st.integers(0, 7), label="bit")
    shard.write_bytes(bytes(blob))
    outcome, _ = _attempt(root)
    # A flipped bit in the (unread) safetensors header is harmless; in the data it fails its checksum.
    assert outcome in ("ok", "FormatError", "ChecksumError")
