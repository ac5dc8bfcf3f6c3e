"""The finalizer's storage deletion on a directory tier: only step-N directories, manifest first."""

from __future__ import annotations

import datetime as dt
import pathlib

import pytest

from elastra.api.checkpoint import CheckpointSpec
from elastra_operator import storage


def _spec(uri: str) -> CheckpointSpec:
    return CheckpointSpec.model_construct(
        job="tj",
        step=1,
        world_size=1,
        format_version=1,
        uri=uri,
        manifest_digest="sha256:00",
        committed_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC),
        storage=None,
        tiers=(),
        bytes=0,
        generation=0,
    )


def test_deletes_a_step_directory(tmp_path: pathlib.Path) -> None:
    step = tmp_path / "ns" / "tj" / "step-10"
    (step / "shards").mkdir(parents=True)
    (step / "manifest.json").write_text("{}")
    (step / "shards" / "0.bin").write_bytes(b"x")
    sibling = tmp_path / "ns" / "tj" / "step-20"
    sibling.mkdir()
    assert "deleted" in storage.delete_checkpoint(_spec(str(step)))
    assert not step.exists() and sibling.exists()


def test_already_gone_is_fine(tmp_path: pathlib.Path) -> None:
    assert "already gone" in storage.delete_checkpoint(_spec(str(tmp_path / "step-3")))


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("/", id="root"),
        pytest.param("/data/ns/tj", id="job-root"),
        pytest.param("/x/step-1a", id="odd"),
    ],
)
def test_refuses_anything_but_a_step_directory(tmp_path: pathlib.Path, uri: str) -> None:
    with pytest.raises(storage.StorageError, match="not a step-N directory"):
        storage.delete_checkpoint(_spec(uri))


def test_a_step_path_that_is_not_a_directory_is_a_storage_error(tmp_path: pathlib.Path) -> None:
    step = tmp_path / "step-1"
    step.write_text("not a directory")
    with pytest.raises(storage.StorageError, match="cannot delete"):
        storage.delete_checkpoint(_spec(str(step)))
    assert step.read_text() == "not a directory"


def test_job_root_deletion_takes_step_directories_only(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "ns" / "tj"
    for name in ("step-1", "step-20"):
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text("{}")
    (root / "README").write_text("mine")
    assert "2 checkpoint directories" in storage.delete_job_storage(str(root), None)
    assert sorted(p.name for p in root.iterdir()) == ["README"]
    (root / "README").unlink()
    storage.delete_job_storage(str(root), None)
    assert not root.exists(), "an emptied root goes too"
    assert "already gone" in storage.delete_job_storage(str(root), None)
