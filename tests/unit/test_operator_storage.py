"""The finalizer's storage deletion on a directory tier: only step-N directories, manifest first; only
the job's own path (derived again from its spec), never through a link, never with ambient credentials."""

from __future__ import annotations

import datetime as dt
import pathlib

import pytest

from elastra.api.checkpoint import CheckpointSpec, StorageAccess
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
    assert "deleted" in storage.delete_checkpoint(_spec(str(step)), expected=str(step), base=str(tmp_path))
    assert not step.exists() and sibling.exists()


def test_already_gone_is_fine(tmp_path: pathlib.Path) -> None:
    assert "already gone" in storage.delete_checkpoint(
        _spec(str(tmp_path / "step-3")), expected=str(tmp_path / "step-3")
    )


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("/", id="root"),
        pytest.param("/data/ns/tj", id="job-root"),
        pytest.param("/x/step-1a", id="odd"),
    ],
)
def test_refuses_anything_but_a_step_directory(tmp_path: pathlib.Path, uri: str) -> None:
    with pytest.raises(storage.StorageKept, match="not a step-N directory"):
        storage.delete_checkpoint(_spec(uri), expected=uri)


def test_a_step_path_that_is_not_a_directory_is_a_storage_error(tmp_path: pathlib.Path) -> None:
    step = tmp_path / "step-1"
    step.write_text("not a directory")
    with pytest.raises(storage.StorageError, match="cannot delete"):
        storage.delete_checkpoint(_spec(str(step)), expected=str(step), base=str(tmp_path))
    assert step.read_text() == "not a directory"


def test_job_root_deletion_takes_step_directories_only(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "ns" / "tj"
    for name in ("step-1", "step-20"):
        (root / name).mkdir(parents=True)
        (root / name / "manifest.json").write_text("{}")
    (root / "README").write_text("mine")
    assert "2 checkpoint directories" in storage.delete_job_storage(str(root), None, base=str(tmp_path))
    assert sorted(p.name for p in root.iterdir()) == ["README"]
    (root / "README").unlink()
    storage.delete_job_storage(str(root), None, base=str(tmp_path))
    assert not root.exists(), "an emptied root goes too"
    assert "already gone" in storage.delete_job_storage(str(root), None, base=str(tmp_path))


def _step(path: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True)
    (path / "manifest.json").write_text("{}")
    return path


def test_refuses_a_uri_that_is_not_the_jobs_own(tmp_path: pathlib.Path) -> None:
    other = _step(tmp_path / "other" / "prod" / "step-7")
    with pytest.raises(storage.StorageKept, match="not the job's own"):
        storage.delete_checkpoint(_spec(str(other)), expected=str(tmp_path / "ns" / "tj" / "step-7"))
    assert (other / "manifest.json").exists()


def test_refuses_a_step_directory_that_is_a_link(tmp_path: pathlib.Path) -> None:
    target = _step(tmp_path / "other" / "step-7")
    link = tmp_path / "ns" / "tj" / "step-7"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)
    with pytest.raises(storage.StorageKept, match="symbolic link"):
        storage.delete_checkpoint(_spec(str(link)), expected=str(link), base=str(tmp_path))
    assert (target / "manifest.json").exists()


def test_refuses_a_job_root_reached_through_a_link(tmp_path: pathlib.Path) -> None:
    target = _step(tmp_path / "elsewhere" / "step-1")
    (tmp_path / "ns").mkdir()
    (tmp_path / "ns" / "tj").symlink_to(target.parent)
    step = tmp_path / "ns" / "tj" / "step-1"
    with pytest.raises(storage.StorageKept, match="symbolic link"):
        storage.delete_checkpoint(_spec(str(step)), expected=str(step), base=str(tmp_path))
    with pytest.raises(storage.StorageKept, match="symbolic link"):
        storage.delete_job_storage(str(tmp_path / "ns" / "tj"), None, base=str(tmp_path))
    assert (target / "manifest.json").exists()


def test_job_root_deletion_skips_step_links(tmp_path: pathlib.Path) -> None:
    target = _step(tmp_path / "victim" / "step-9")
    root = tmp_path / "ns" / "tj"
    _step(root / "step-1")
    (root / "step-9").symlink_to(target)
    done = storage.delete_job_storage(str(root), None, base=str(tmp_path))
    assert "1 checkpoint directories" in done and "step-9" in done
    assert (target / "manifest.json").exists(), "the link target's manifest must survive"
    assert not (root / "step-1").exists()


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param(None, id="no-secret"),
        pytest.param({}, id="empty-secret"),
        pytest.param({"AWS_ACCESS_KEY_ID": "a"}, id="half-secret"),
    ],
)
def test_s3_without_the_jobs_credentials_is_kept_and_nothing_is_contacted(
    credentials: dict[str, str] | None,
) -> None:
    uri = "s3://bucket/ns/tj/step-1"
    # an endpoint nothing listens on: contacting it would be a StorageError, not StorageKept
    spec = _spec(uri).model_copy(update={"storage": StorageAccess(endpoint="http://127.0.0.1:9")})
    with pytest.raises(storage.StorageKept, match="no credentials"):
        storage.delete_checkpoint(spec, credentials, expected=uri)
    with pytest.raises(storage.StorageKept, match="no credentials"):
        storage.delete_job_storage("s3://bucket/ns/tj", spec.storage, credentials)
