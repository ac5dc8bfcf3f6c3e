"""A checkpoint root is untrusted input: real checkpoints, damaged the way a dying writer, a bad disk or a
hostile user would, through `load()`, `elastra ckpt verify` and `consolidate`.

Every damaged step is refused with a FormatError-class message (verify: DAMAGED, exit 1; consolidate:
exit 1; load: the ranks fall back to the older good step), never loaded, never another exception.
"""

from __future__ import annotations

import json
import os
import re
import socket
import stat
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from elastra.checkpoint import Checkpointer, CheckpointError
from elastra.checkpoint.checksum import crc32
from elastra.checkpoint.cli import main as ckpt_cli

pytestmark = pytest.mark.timeout(120)

Doc = dict[str, Any]


def _good_and_target(root: Path) -> None:
    """Step 1 (good, older) and step 2 (the one each test damages) of a 16-element tensor."""
    ckpt = Checkpointer(str(root))
    ckpt.save(1, {"w": torch.arange(16, dtype=torch.float32), "epoch": 1}).wait()
    ckpt.save(2, {"w": torch.arange(16, dtype=torch.float32) + 100, "epoch": 2}).wait()
    ckpt.close()


def _edit(root: Path, step: int, change: Callable[[Doc, Path], object]) -> None:
    path = root / f"step-{step}" / "manifest.json"
    doc = json.loads(path.read_text())
    result = change(doc, path.parent)
    path.write_bytes(result if isinstance(result, bytes) else json.dumps(doc).encode())


def _shard(root: Path, step: int) -> Path:
    return next((root / f"step-{step}").glob("rank-*.safetensors"))


def _first_half_twice(doc: Doc, where: Path) -> None:
    """Defect 1: the tensor's fragment replaced by its first half [0,8), listed twice (correct CRC)."""
    (frag,) = doc["tensors"]["w"]["fragments"]
    half = dict(frag, length=32, shape=[8])
    data = (where / frag["file"]).read_bytes()[frag["offset"] : frag["offset"] + 32]
    half["crc32"] = [crc32(memoryview(data))]
    doc["tensors"]["w"]["fragments"] = [half, dict(half)]


def _no_fragments(doc: Doc, _where: Path) -> None:
    doc["tensors"]["w"]["fragments"] = []


def _dtype_list(doc: Doc, _where: Path) -> None:
    doc["tensors"]["w"]["dtype"] = ["F32"]


def _deep(doc: Doc, _where: Path) -> bytes:
    text = json.dumps(doc)
    return text.replace('"values": {', '"values": {"x": ' + "[" * 200_000 + "]" * 200_000 + ", ", 1).encode()


def _huge_length(doc: Doc, _where: Path) -> None:
    (frag,) = doc["tensors"]["w"]["fragments"]
    frag["length"] = 4 << 30
    frag["crc32"] = [0] * ((4 << 30) // doc["chunk_bytes"])
    frag["shape"] = [1 << 30]
    doc["tensors"]["w"]["shape"] = [1 << 30]
    doc["files"][frag["file"]] = (4 << 30) + 4096


def _chunk_zero(doc: Doc, _where: Path) -> None:
    doc["chunk_bytes"] = 0


DAMAGE = [
    pytest.param(_first_half_twice, "overlap", id="1-duplicate-fragment"),
    pytest.param(_no_fragments, "cover 0 of 16", id="2-no-fragments"),
    pytest.param(_dtype_list, "'dtype': must be a string", id="3-wrong-type"),
    pytest.param(_deep, "nested too deeply", id="3-deep-nesting"),
    pytest.param(_huge_length, "storage holds", id="4-declared-size-larger-than-the-file"),
    pytest.param(_chunk_zero, "'chunk_bytes'", id="4-chunk-bytes-zero"),
]


@pytest.mark.parametrize(("damage", "message"), DAMAGE)
def test_damaged_manifest_is_refused_by_load_verify_and_consolidate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[Doc, Path], object], message: str
) -> None:
    root = tmp_path / "ckpt"
    _good_and_target(root)
    _edit(root, 2, damage)

    tracemalloc.start()
    try:
        assert ckpt_cli(["verify", str(root)]) == 1
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    out = capsys.readouterr().out
    assert "step-2: DAMAGED" in out and message in out and "step-1: OK" in out
    assert "step 2" in out, "the error names the step"
    assert peak < 64 << 20, f"verify allocated {peak} bytes for a checkpoint of a few hundred"

    assert ckpt_cli(["consolidate", str(root / "step-2"), "--out", str(tmp_path / "out.safetensors")]) == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.safetensors").exists()

    fresh = {"w": torch.zeros(16), "epoch": 0}
    ckpt = Checkpointer(str(root))
    assert ckpt.load(fresh) == 1, "load falls back to the older good step"
    assert torch.equal(fresh["w"], torch.arange(16, dtype=torch.float32)) and fresh["epoch"] == 1
    assert ckpt.last_restore is not None and [s.step for s in ckpt.last_restore.skipped] == [2]
    assert "step 2" in ckpt.last_restore.skipped[0].reason
    with pytest.raises(CheckpointError, match="step-2"):
        ckpt.load(fresh, step=2)  # asked for explicitly, without fallback: a clear error


def test_global_shape_or_dtype_mismatch_is_refused(tmp_path: Path) -> None:
    """Defect 5: a [4] target restored from a [8] checkpoint used to get the first 4 values."""
    root = tmp_path / "ckpt"
    Checkpointer(str(root)).save(3, {"w": torch.arange(8, dtype=torch.float32)}).wait()
    cases = [
        (torch.zeros(4), "'shape': saved [8], the target is [4]"),
        (torch.zeros(8, dtype=torch.float64), "'dtype': saved F32, the target is F64"),
    ]
    for target, field in cases:
        with pytest.raises(CheckpointError, match=re.escape(field)):
            Checkpointer(str(root)).load({"w": target})
        assert not target.any(), "nothing was written into the target"


def test_symlinked_or_special_shard_is_never_read(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Defect 6: a shard replaced by a symlink (here to a byte-identical copy, so only the refusal to
    follow it can catch it) or by a FIFO is refused, and load falls back."""
    root = tmp_path / "ckpt"
    _good_and_target(root)
    shard = _shard(root, 2)
    elsewhere = tmp_path / "elsewhere.safetensors"
    elsewhere.write_bytes(shard.read_bytes())
    shard.unlink()
    shard.symlink_to(elsewhere)
    assert ckpt_cli(["verify", str(root / "step-2")]) == 1
    assert "not a regular file" in capsys.readouterr().out
    fresh = {"w": torch.zeros(16), "epoch": 0}
    assert Checkpointer(str(root)).load(fresh) == 1

    shard.unlink()
    os.mkfifo(shard)  # a reader that opened it would block forever
    assert stat.S_ISFIFO(shard.lstat().st_mode)
    assert ckpt_cli(["verify", str(root / "step-2")]) == 1
    assert "not a regular file" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _one_rank_fails_to_parse(rank: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    ckpt = Checkpointer(root, timeout_s=20)
    for step in (1, 2, 3):
        w = torch.arange(8, dtype=torch.float32) * step
        ckpt.save(step, {"w": w[rank * 4 : rank * 4 + 4].clone()}).wait()  # not a DTensor: replicated
    if rank == 1:  # only this rank sees broken manifests (e.g. a stale cache): bug-class exceptions
        import elastra.checkpoint.restore as attempt

        real = attempt.read_manifest
        failures = {3: TypeError("unhashable type: 'list'"), 2: RecursionError("maximum recursion depth")}

        def broken(storage: Any, step: int) -> Any:
            if step in failures:
                raise failures[step]
            return real(storage, step)

        # where a restore attempt looks the manifest up
        attempt.read_manifest = broken  # type: ignore[assignment]
    fresh = {"w": torch.zeros(4)}
    assert ckpt.load(fresh) == 1, f"rank {rank}: every rank falls back together"
    assert ckpt.last_restore is not None and [s.step for s in ckpt.last_restore.skipped] == [3, 2]
    reasons = " ".join(s.reason for s in ckpt.last_restore.skipped)
    assert ("TypeError" in reasons and "RecursionError" in reasons) if rank else "another rank" in reasons
    ckpt.close()
    dist.destroy_process_group()


def test_a_parse_failure_on_one_rank_makes_every_rank_fall_back_without_a_hang(tmp_path: Path) -> None:
    """Defect 3 with several ranks: the failing rank used to skip the agreement, its peer hung."""
    mp.spawn(_one_rank_fails_to_parse, args=(_free_port(), str(tmp_path / "ckpt")), nprocs=2, join=True)


def test_new_step_directory_is_fsynced_in_its_parent(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Defect 11: a new step directory's name is made durable (its parent fsynced), not only its files."""
    synced: list[str] = []
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    root = tmp_path / "ckpt"
    Checkpointer(str(root), local_dir=str(tmp_path / "local")).save(4, {"w": torch.ones(3)}).wait()
    assert str(root) in synced, "the durable root, parent of step-4, was fsynced"
    assert str(tmp_path / "local") in synced, "and the local tier's"


def test_incomplete_multipart_uploads_of_uncommitted_steps_are_aborted(s3_server: Any) -> None:
    """Defect 11: a kill -9 mid-upload leaves an incomplete multipart upload (no object, no listing,
    billed parts); the next commit aborts those of steps that never committed, and no others."""
    bucket = s3_server.make_bucket("ckpt-debris")
    client = s3_server.client()
    uri = f"s3://{bucket}/jobs/d"
    ckpt = Checkpointer(uri)
    ckpt.save(1, {"w": torch.ones(4)}).wait()
    stale = client.create_multipart_upload(Bucket=bucket, Key="jobs/d/step-2/rank-00000-dead.safetensors")
    client.upload_part(Bucket=bucket, Key="jobs/d/step-2/rank-00000-dead.safetensors", PartNumber=1,
                       UploadId=stale["UploadId"], Body=b"x" * 1024)  # fmt: skip
    in_flight = client.create_multipart_upload(Bucket=bucket, Key="jobs/d/step-9/rank-00001-live.safetensors")

    ckpt.save(3, {"w": torch.ones(4) * 3}).wait()

    left = {u["Key"] for u in client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert left == {"jobs/d/step-9/rank-00001-live.safetensors"}, "only the newer, possibly in-flight one"
    client.abort_multipart_upload(
        Bucket=bucket, Key="jobs/d/step-9/rank-00001-live.safetensors", UploadId=in_flight["UploadId"]
    )
    ckpt.close()


def _steps(root: Path) -> list[int]:
    return sorted(int(p.parent.name.removeprefix("step-")) for p in root.glob("step-*/manifest.json"))


def test_under_the_operator_trainers_prune_only_their_local_tier(tmp_path: Path) -> None:
    """Defect 9/10: one owner of durable retention (the operator); trainers honour `local.keep`."""
    durable, local = tmp_path / "durable", tmp_path / "local"
    ckpt = Checkpointer(str(durable), local_dir=str(local), keep=1, local_keep=2, prune_durable=False)
    for step in (1, 2, 3):
        ckpt.save(step, {"w": torch.ones(3) * step}).wait()
    assert _steps(durable) == [1, 2, 3] and _steps(local) == [2, 3]
    standalone = Checkpointer(str(tmp_path / "alone"), keep=1)  # no operator: the Checkpointer's keep
    for step in (1, 2):
        standalone.save(step, {"w": torch.ones(3) * step}).wait()
    assert _steps(tmp_path / "alone") == [2]
