"""Stale writers are fenced (issue 14): a rank frozen mid-upload and thawed after the next generation
committed the same step must not overwrite that generation's shard files.

Every save writes shard files under a name unique to that save (`rank-NNNNN-<save id>.safetensors`,
issue 10), so a stale writer's late upload always lands beside the committed files, never over them."""

from __future__ import annotations

import json
import pathlib

import torch

from elastra.checkpoint import Checkpointer
from elastra.checkpoint.format import shard_file


def _state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(7, dtype=torch.bfloat16)}


def _named_files(step_dir: pathlib.Path) -> set[str]:
    manifest = json.loads((step_dir / "manifest.json").read_text())
    return {f["file"] for t in manifest["tensors"].values() for f in t["fragments"]}


def test_two_saves_of_one_step_never_share_a_file_name(tmp_path: pathlib.Path) -> None:
    first, second = Checkpointer(str(tmp_path)), Checkpointer(str(tmp_path))
    first.save(10, _state()).wait()
    before = _named_files(tmp_path / "step-10")
    second.save(10, _state()).wait()
    after = _named_files(tmp_path / "step-10")
    first.close()
    second.close()
    assert before and after and before.isdisjoint(after)
    assert shard_file(0) not in before | after  # the bare name is never written by a save


def test_a_stale_generation_upload_lands_beside_the_committed_shard(tmp_path: pathlib.Path) -> None:
    state = _state()
    writer = Checkpointer(str(tmp_path))
    writer.save(10, state).wait()
    writer.close()
    # the previous generation's rank 0 was frozen uploading its own step-10 shard; thawed, it completes now
    (tmp_path / "step-10" / shard_file(0, "0123456789ab")).write_bytes(b"\xff" * 8192)
    target = {"w": torch.zeros(4096), "b": torch.zeros(7, dtype=torch.bfloat16)}
    reader = Checkpointer(str(tmp_path))
    assert reader.load(target) == 10
    reader.close()
    assert torch.equal(target["w"], state["w"]) and torch.equal(target["b"], state["b"])
