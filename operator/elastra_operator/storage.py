"""Deleting one checkpoint's durable storage: the work of the Checkpoint finalizer.

Only a `step-N` directory is ever deleted (the Checkpoint model refuses other URIs), and its
`manifest.json` goes first: a checkpoint is committed when its manifest exists, so a deletion cut short
leaves an uncommitted leftover that no restore will pick, never a committed checkpoint with holes.

The tiers are `elastra.storage`'s (the same code the trainers write with): directory URIs on the
operator's filesystem (it must mount the shared tier, as on localcluster), `s3://` URIs with boto3
(imported lazily: the operator image carries boto3, never torch).

What gets deleted is never taken from a report alone: the caller derives the uri again from the job's
spec and passes it as `expected`; anything else is refused with `StorageKept`. No path component from
the tier's base down to the step directory may be a symbolic link (lstat), and a `step-N` link under a
job's root is skipped, not followed. S3 is only contacted with the job's own credentials: with none,
the data is kept (`StorageKept`), never deleted with the operator's ambient identity.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import stat

from elastra.api.checkpoint import STEP_DIR, CheckpointSpec, StorageAccess
from elastra.storage import LocalStorage, S3Options, S3Storage, Storage
from elastra.storage import StorageError as TierError

MANIFEST = "manifest.json"


class StorageError(RuntimeError):
    """Deleting failed; the finalizer keeps the object and retries."""


class StorageKept(RuntimeError):
    """Deleting was refused for good (not the job's own path, a symbolic link, no credentials): the
    finalizer leaves the data, says so in an Event and lets the object go."""


CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def _require_credentials(credentials: dict[str, str] | None, uri: str) -> dict[str, str]:
    if not credentials or not all(credentials.get(k) for k in CREDENTIAL_KEYS):
        raise StorageKept(
            f"no credentials Secret with {' and '.join(CREDENTIAL_KEYS)} for {uri}: the data is kept "
            "(the operator never deletes with its own identity)"
        )
    return credentials


def no_links(base: pathlib.Path, path: pathlib.Path) -> None:
    """StorageKept unless `path` lies under `base` (lexically) and no component from `base` down to
    `path` is a symbolic link (lstat, nothing followed). Missing components are fine."""
    if ".." in path.parts or not path.is_relative_to(base):
        raise StorageKept(f"{path} is not under the tier's base {base}")
    current = pathlib.Path(base.anchor)
    for part in path.parts[1:]:
        current = current / part
        try:
            mode = os.lstat(current).st_mode
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StorageError(f"cannot inspect {current}: {exc}") from exc
        if stat.S_ISLNK(mode) and current.is_relative_to(base) and current != base:
            raise StorageKept(f"{current} is a symbolic link: nothing under it is deleted")


def delete_checkpoint(
    spec: CheckpointSpec,
    credentials: dict[str, str] | None = None,
    *,
    expected: str,
    base: str | None = None,
) -> str:
    """Delete the durable step directory of `spec`, which must be `expected` (the uri derived again
    from the job's spec); `base` is the directory tier's path. Returns what was done."""
    uri = spec.uri.rstrip("/")
    if uri != expected.rstrip("/"):
        raise StorageKept(f"{uri!r} is not the job's own {expected!r}: nothing deleted")
    root, _, step = uri.rpartition("/")
    if not STEP_DIR.match(step):  # the model checks this too; never widen a deletion
        raise StorageKept(f"refusing to delete {uri!r}: not a step-N directory")
    if uri.startswith("s3://"):
        tier: Storage = _s3(root, spec.storage, _require_credentials(credentials, uri))
        manifests, others = _delete_step(tier, step, uri, always_manifest=True)
        return f"deleted {manifests} manifest(s) and {others} other object(s) under {uri}"
    path = pathlib.Path(uri)
    no_links(pathlib.Path(base or path.anchor), path)
    return _delete_directory(path)


def delete_job_storage(
    root: str,
    access: StorageAccess | None,
    credentials: dict[str, str] | None = None,
    *,
    base: str | None = None,
) -> str:
    """Delete every `step-N` directory under a deleted job's checkpoint root (`root`, derived from its
    spec): the ones its Checkpoint objects cover, and commits made while the job was going away.
    Nothing else under the root is touched; `step-N` symbolic links are skipped."""
    root = root.rstrip("/")
    if root.startswith("s3://"):
        tier = _s3(root, access, _require_credentials(credentials, root))
        try:
            steps = [d for d in tier.list_dirs() if STEP_DIR.match(d)]
        except TierError as exc:
            raise StorageError(f"cannot delete {root}: {exc}") from exc
        manifests = others = 0
        for step in steps:
            m, o = _delete_step(tier, step, f"{root}/{step}", always_manifest=False)
            manifests, others = manifests + m, others + o
        return f"deleted {manifests} manifest(s) and {others} other object(s) under {root}"
    base_path = pathlib.Path(root)
    no_links(pathlib.Path(base or base_path.anchor), base_path)
    if not base_path.is_dir():
        return f"{base_path} already gone"
    links = [c.name for c in base_path.iterdir() if STEP_DIR.match(c.name) and c.is_symlink()]
    done = [
        _delete_directory(child)
        for child in sorted(base_path.iterdir())
        if STEP_DIR.match(child.name) and not child.is_symlink()
    ]
    with contextlib.suppress(OSError):
        base_path.rmdir()  # only when nothing else is left in it
    skipped = f"; symbolic links left alone: {', '.join(sorted(links))}" if links else ""
    return f"{len(done)} checkpoint directories under {base_path} deleted{skipped}"


def _delete_directory(path: pathlib.Path) -> str:
    if path.is_symlink():
        raise StorageKept(f"{path} is a symbolic link: nothing under it is deleted")
    if not path.exists():
        return f"{path} already gone"
    if not path.is_dir():
        raise StorageError(f"cannot delete {path}: not a directory")
    tier = LocalStorage(str(path.parent))
    _delete_step(tier, path.name, str(path), always_manifest=True)
    return f"deleted {path}"


def _s3(root: str, access: StorageAccess | None, credentials: dict[str, str]) -> S3Storage:
    options = S3Options(
        endpoint_url=access.endpoint if access else None,
        region=access.region if access else None,
        access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
    )
    try:
        return S3Storage(root, options)
    except TierError as exc:
        raise StorageError(f"cannot delete under {root}: {exc}") from exc


def _delete_step(tier: Storage, step: str, uri: str, *, always_manifest: bool) -> tuple[int, int]:
    """Delete one step directory of `tier`, its manifest first; (manifests, other objects) deleted."""
    manifest = f"{step}/{MANIFEST}"
    try:
        keys = tier.list(step)
        has_manifest = manifest in keys
        if has_manifest or always_manifest:
            tier.delete(manifest)
        tier.delete_prefix(step)
    except TierError as exc:
        raise StorageError(f"cannot delete {uri}: {exc}") from exc
    return int(has_manifest or always_manifest), len([k for k in keys if k != manifest])
