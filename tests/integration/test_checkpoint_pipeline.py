"""The save pipeline and restore in one process (world size 1): S3 over real HTTP (moto), the local
tier, torn saves, corruption and fallback, retention, the busy policy and the CLI."""

from __future__ import annotations

import json
import sys
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from elastra.checkpoint import Checkpointer, CheckpointError, Flat, latest
from elastra.checkpoint import cli as ckpt_cli
from elastra.checkpoint.retention import apply_retention
from elastra.storage import LocalStorage, S3Options, StorageError

pytestmark = pytest.mark.timeout(120)


def make_state(seed: int, big: int = 64) -> dict[str, object]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "model": {
            "w": torch.randn(big, 33, generator=gen),
            "b": torch.randn(33, generator=gen).to(torch.bfloat16),
        },
        "count": torch.tensor(seed, dtype=torch.int64),
        "rng": torch.get_rng_state(),
        "flat": Flat(torch.randn(10, generator=gen, dtype=torch.float64), 0, 10, (2, 5)),
        "loader": {"epoch": seed, "offset": [1, 2, seed]},
    }


def zeros_like_state(state: dict[str, object]) -> dict[str, object]:
    def z(v: object) -> object:
        if isinstance(v, Flat):
            return Flat(torch.zeros_like(v.local), v.offset, v.numel, v.shape)
        if isinstance(v, torch.Tensor):
            return torch.zeros_like(v)
        if isinstance(v, dict):
            return {k: z(x) for k, x in v.items()}
        return None if not isinstance(v, list) else [0] * len(v)

    return {k: z(v) for k, v in state.items()}  # type: ignore[misc]


def assert_same(a: object, b: object) -> None:
    if isinstance(a, Flat):
        assert isinstance(b, Flat) and torch.equal(a.local, b.local)
    elif isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    else:
        assert a == b


def test_s3_multipart_upload_local_tier_and_restore_from_s3_only(s3_server, tmp_path: Path) -> None:
    bucket = s3_server.make_bucket("ckpt-roundtrip")
    uri = f"s3://{bucket}/jobs/a"
    small_parts = S3Options(multipart_threshold=5 << 20, part_size=5 << 20, max_concurrency=4)
    state = make_state(1, big=48 * 1024)  # ~6 MiB of float32: uploaded as two parts in parallel
    ckpt = Checkpointer(uri, local_dir=str(tmp_path / "nvme"), keep=2, s3=small_parts)
    info = ckpt.save(10, state).wait()
    assert info is not None and info.tiers == ("local", "durable") and info.uri == f"{uri}/step-10"
    assert latest(uri) == 10
    listed = s3_server.client().list_objects_v2(Bucket=bucket, Prefix="jobs/a/step-10/rank-00000-")
    (shard,) = [o["Key"] for o in listed["Contents"]]  # named per save: a re-save never overwrites it
    head = s3_server.client().head_object(Bucket=bucket, Key=shard)
    assert "-" in head["ETag"]  # a multipart ETag: "<md5>-<parts>"

    fresh = zeros_like_state(state)
    assert Checkpointer(uri, local_dir=str(tmp_path / "nvme"), s3=small_parts).load(fresh) == 10
    assert_same(state, fresh)

    remote_only = Checkpointer(uri, s3=small_parts)
    fresh = zeros_like_state(state)
    assert remote_only.load(fresh) == 10
    assert_same(state, fresh)
    assert remote_only.stats.restore_bytes_by_tier["durable"] > 6 << 20
    assert remote_only.stats.restore_bytes_by_tier["local"] == 0


def test_local_tier_is_preferred_on_restore(tmp_path: Path) -> None:
    state = make_state(2)
    Checkpointer(str(tmp_path / "durable"), local_dir=str(tmp_path / "nvme")).save(3, state).wait()
    reader = Checkpointer(str(tmp_path / "durable"), local_dir=str(tmp_path / "nvme"))
    fresh = zeros_like_state(state)
    assert reader.load(fresh) == 3
    assert (
        reader.stats.restore_bytes_by_tier["durable"] == 0 and reader.stats.restore_bytes_by_tier["local"] > 0
    )
    assert_same(state, fresh)


def test_torn_save_mutation_after_save_returns_does_not_change_what_is_stored(tmp_path: Path) -> None:
    state = make_state(3, big=4096)
    expected = {"w": state["model"]["w"].clone(), "count": state["count"].clone()}  # type: ignore[index]
    ckpt = Checkpointer(str(tmp_path))
    handle = ckpt.save(1, state)
    state["model"]["w"].add_(1.0)  # type: ignore[index]
    state["count"].fill_(-5)  # type: ignore[attr-defined]
    handle.wait()
    fresh = zeros_like_state(state)
    ckpt.load(fresh)
    assert torch.equal(fresh["model"]["w"], expected["w"])  # type: ignore[index]
    assert torch.equal(fresh["count"], expected["count"])  # type: ignore[arg-type]


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def test_flipped_byte_is_reported_by_verify_and_load_falls_back(tmp_path: Path, capsys, caplog) -> None:
    root = str(tmp_path / "ckpt")
    ckpt = Checkpointer(root)
    old, new = make_state(4), make_state(5)
    ckpt.save(1, old).wait()
    ckpt.save(2, new).wait()
    assert ckpt_cli.main(["verify", root]) == 0
    manifest = json.loads((tmp_path / "ckpt" / "step-2" / "manifest.json").read_text())
    fragment = manifest["tensors"]["model/w"]["fragments"][0]
    flip_byte(tmp_path / "ckpt" / "step-2" / fragment["file"], fragment["offset"] + 100)

    capsys.readouterr()
    assert ckpt_cli.main(["verify", root]) == 1
    out = capsys.readouterr().out
    assert "step-2: DAMAGED" in out and "checksum mismatch" in out and "step-1: OK" in out
    assert ckpt_cli.main(["verify", f"{root}/step-1"]) == 0

    fresh = zeros_like_state(old)
    assert Checkpointer(root).load(fresh) == 1
    assert_same(old, fresh)
    assert "step-2 is unusable" in caplog.text
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        Checkpointer(root).load(zeros_like_state(old), step=2)


def test_cli_ls_inspect_consolidate(tmp_path: Path, capsys) -> None:
    root = str(tmp_path / "ckpt")
    state = make_state(6)
    Checkpointer(root).save(5, state).wait()
    (tmp_path / "ckpt" / "step-9").mkdir()  # an uncommitted leftover shows as such
    assert ckpt_cli.main(["ls", root]) == 0
    out = capsys.readouterr().out
    assert "committed" in out and "uncommitted" in out
    assert ckpt_cli.main(["inspect", f"{root}/step-5"]) == 0
    out = capsys.readouterr().out
    assert "model/w  F32 [64, 33]  replicated" in out and "loader/epoch = 6" in out
    target = tmp_path / "model.safetensors"
    assert ckpt_cli.main(["consolidate", root, "--out", str(target)]) == 0
    tensors = load_file(str(target))
    assert torch.equal(tensors["model/w"], state["model"]["w"])  # type: ignore[index]
    assert torch.equal(tensors["flat"], state["flat"].local.reshape(2, 5))  # type: ignore[attr-defined]
    assert ckpt_cli.main(["verify", str(tmp_path / "empty")]) == 1
    assert f"no committed checkpoint under {tmp_path / 'empty'}" in capsys.readouterr().err


def test_retention_keeps_newest_and_staging_buffer_is_reused(tmp_path: Path) -> None:
    ckpt = Checkpointer(str(tmp_path / "d"), local_dir=str(tmp_path / "l"), keep=2)
    state = make_state(7)
    for step in range(1, 6):
        ckpt.save(step, state).wait()
    for tier in ("d", "l"):
        assert sorted(p.name for p in (tmp_path / tier).iterdir()) == ["step-4", "step-5"]
    assert ckpt._staging.allocations == 1  # preallocated once, reused by every later save


class BlockingStorage(LocalStorage):
    """A durable tier whose uploads wait for a gate: keeps a save in flight deterministically."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.gate = threading.Event()

    def put_parts(self, key: str, parts: list[memoryview]) -> None:
        assert self.gate.wait(30)
        super().put_parts(key, parts)


def release_when_waiting(thread_id: int, gate: threading.Event) -> None:
    """Open the gate once the training thread is blocked waiting for the in-flight save."""
    for _ in range(3000):
        frame = sys._current_frames().get(thread_id)
        while frame is not None and frame.f_code.co_name != "save":
            frame = frame.f_back
        if frame is not None and sys._current_frames()[thread_id].f_code.co_name in {"wait", "acquire"}:
            break
        threading.Event().wait(0.01)
    gate.set()


@pytest.mark.parametrize(
    ("policy", "committed"),
    [
        pytest.param("skip", [1], id="skip-counts-and-drops-the-second"),
        pytest.param("wait", [1, 2], id="wait-counts-and-keeps-both"),
    ],
)
def test_busy_policy(tmp_path: Path, policy: str, committed: list[int]) -> None:
    ckpt = Checkpointer(str(tmp_path), busy_policy=policy)
    blocking = BlockingStorage(str(tmp_path))
    ckpt._durable = blocking
    state = make_state(8)
    first = ckpt.save(1, state)
    if policy == "wait":
        threading.Thread(target=release_when_waiting, args=(threading.get_ident(), blocking.gate)).start()
    second = ckpt.save(2, state)
    blocking.gate.set()
    first.wait()
    second.wait()
    assert second.skipped is (policy == "skip")
    assert (ckpt.stats.skipped, ckpt.stats.waited) == ((1, 0) if policy == "skip" else (0, 1))
    assert (
        sorted(int(p.name.split("-")[1]) for p in tmp_path.iterdir() if (p / "manifest.json").exists())
        == committed
    )


class FlakyDelete(LocalStorage):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        self.failures = 1

    def delete_prefix(self, prefix: str) -> None:
        if self.failures:
            self.failures -= 1
            raise StorageError(f"injected failure deleting {prefix}")
        super().delete_prefix(prefix)


def test_retention_survives_one_failed_delete(tmp_path: Path) -> None:
    ckpt = Checkpointer(str(tmp_path), keep=5)
    for step in range(1, 5):
        ckpt.save(step, make_state(step)).wait()
    storage = FlakyDelete(str(tmp_path))
    assert apply_retention(storage, keep=1) == [2, 3]  # step 1's delete failed, the others went on
    assert latest(str(tmp_path)) == 4
    assert apply_retention(storage, keep=1) == [1]


def test_a_changed_layout_is_planned_again(tmp_path: Path) -> None:
    ckpt = Checkpointer(str(tmp_path))
    ckpt.save(1, {"w": torch.ones(4)}).wait()
    ckpt.save(2, {"w": torch.full((4,), 2.0)}).wait()  # same layout: the cached plan
    ckpt.save(3, {"w": torch.full((6,), 3.0), "b": torch.zeros(2, dtype=torch.int32)}).wait()
    fresh = {"w": torch.zeros(6), "b": torch.ones(2, dtype=torch.int32)}
    assert ckpt.load(fresh) == 3
    assert torch.equal(fresh["w"], torch.full((6,), 3.0)) and torch.equal(
        fresh["b"], torch.zeros(2, dtype=torch.int32)
    )
    ckpt.close()
