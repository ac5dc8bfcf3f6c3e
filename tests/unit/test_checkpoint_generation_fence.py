"""Stale writers are fenced by generation (issue 14): a rank frozen mid-upload and thawed after the next
generation committed the same step must not overwrite that generation's shard files."""

from __future__ import annotations

import pathlib

import pytest
import torch

from elastra.checkpoint import Checkpointer
from elastra.checkpoint.format import shard_file
from elastra.checkpoint.handles import CheckpointError
from elastra.checkpoint.plan import Piece, plan_save
from elastra.checkpoint.state import split_state


def _state() -> dict[str, torch.Tensor]:
    return {"w": torch.arange(4096, dtype=torch.float32), "b": torch.ones(7, dtype=torch.bfloat16)}


@pytest.mark.parametrize(
    ("tag", "name"),
    [
        pytest.param("", "rank-00003.safetensors", id="untagged"),
        pytest.param("g7", "rank-00003-g7.safetensors", id="g7"),
    ],
)
def test_shard_file_names_carry_the_tag(tag: str, name: str) -> None:
    assert shard_file(3, tag) == name
    leaves, _ = split_state(_state())
    pieces = [Piece(x.path, x.dtype, x.shape, x.layout, x.sharding, x.box) for x in leaves]
    assert plan_save([pieces], file_tag=tag).writes[0].file == shard_file(0, tag)


@pytest.mark.parametrize("tag", ["../g1", "g-1", "g" * 17, "g 1"])
def test_a_tag_that_is_not_a_short_alphanumeric_is_refused(tmp_path: pathlib.Path, tag: str) -> None:
    with pytest.raises(ValueError, match="file_tag"):
        Checkpointer(str(tmp_path), file_tag=tag)


def _commit_then_late_stale_upload(root: pathlib.Path, current: str, stale: str) -> dict[str, torch.Tensor]:
    state = _state()
    writer = Checkpointer(str(root), file_tag=current)
    writer.save(10, state).wait()
    writer.close()
    # generation 1's rank 0 was frozen uploading its step-10 shard; thawed, the upload completes now
    (root / "step-10" / shard_file(0, stale)).write_bytes(b"\xff" * 8192)
    return state


def test_a_stale_generation_upload_lands_beside_the_committed_shard(tmp_path: pathlib.Path) -> None:
    state = _commit_then_late_stale_upload(tmp_path, current="g2", stale="g1")
    target = {"w": torch.zeros(4096), "b": torch.zeros(7, dtype=torch.bfloat16)}
    reader = Checkpointer(str(tmp_path), file_tag="g3")
    assert reader.load(target) == 10
    reader.close()
    assert torch.equal(target["w"], state["w"]) and torch.equal(target["b"], state["b"])


def test_without_tags_the_same_late_upload_would_break_the_commit(tmp_path: pathlib.Path) -> None:
    """Why the tag: untagged (the names before issue 14), the stale bytes replace the committed shard;
    checksums catch it, but the checkpoint is lost."""
    _commit_then_late_stale_upload(tmp_path, current="", stale="")
    reader = Checkpointer(str(tmp_path))
    with pytest.raises(CheckpointError):
        reader.load({"w": torch.zeros(4096), "b": torch.zeros(7, dtype=torch.bfloat16)})
    reader.close()
