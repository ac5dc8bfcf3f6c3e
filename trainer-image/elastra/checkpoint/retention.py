"""Retention: keep the newest `keep` committed checkpoints of a tier, remove the rest and leftovers.

`plan_retention` is pure; `apply_retention` lists and deletes, logging and skipping any delete that
fails so that one bad delete never stops the others (or the save pipeline).
"""

from __future__ import annotations

import logging

from elastra.checkpoint.format import MANIFEST, parse_step_dir, step_dir
from elastra.storage import S3Storage, Storage, join_key

log = logging.getLogger(__name__)


def plan_retention(steps: dict[int, bool], keep: int | None, drop_newer_uncommitted: bool) -> list[int]:
    """Steps to delete, given `{step: committed}` of one tier.

    Keeps the newest `keep` (at least 1) committed steps, so the newest committed one always survives;
    `keep=None` keeps every committed step (someone else owns their retention: the operator).
    Uncommitted steps older than the newest committed one are leftovers of failed saves and go; newer
    uncommitted ones go only when `drop_newer_uncommitted` (no save can be in flight, e.g. at start)."""
    committed = sorted((s for s, ok in steps.items() if ok), reverse=True)
    newest = committed[0] if committed else None
    doomed = set(committed[max(keep, 1) :]) if keep is not None else set()
    for s, ok in steps.items():
        if not ok and (drop_newer_uncommitted or (newest is not None and s < newest)):
            doomed.add(s)
    return sorted(doomed)


def committed_steps(storage: Storage) -> dict[int, bool]:
    """`{step: has a manifest}` for every `step-N` directory of a tier."""
    steps: dict[int, bool] = {}
    for name in storage.list_dirs():
        step = parse_step_dir(name)
        if step is not None:
            steps[step] = storage.exists(join_key(name, MANIFEST))
    return steps


def apply_retention(storage: Storage, keep: int | None, drop_newer_uncommitted: bool = False) -> list[int]:
    """Delete what `plan_retention` says; returns the steps actually deleted."""
    deleted = []
    steps = committed_steps(storage)
    abort_stale_uploads(storage, steps, drop_newer_uncommitted)
    for step in plan_retention(steps, keep, drop_newer_uncommitted):
        try:
            # The manifest goes first: a half-deleted step then reads as uncommitted, never as broken.
            _delete_step(storage, step)
            deleted.append(step)
        except Exception as exc:
            log.warning("retention: could not delete %s/%s: %s", storage.uri, step_dir(step), exc)
    return deleted


def _delete_step(storage: Storage, step: int) -> None:
    name = step_dir(step)
    storage.delete(join_key(name, MANIFEST))
    storage.delete_prefix(name)


def abort_stale_uploads(storage: Storage, steps: dict[int, bool], drop_newer_uncommitted: bool) -> int:
    """Abort the incomplete S3 multipart uploads of steps that will never commit: those of a step
    older than the newest committed one (or any uncommitted step, when no save can be in flight),
    and uploads of files a committed step's manifest does not name are left to the step's deletion.
    A no-op for other tiers. Returns how many were aborted; failures are logged, never raised."""
    if not isinstance(storage, S3Storage):
        return 0
    committed = [s for s, ok in steps.items() if ok]
    newest = max(committed) if committed else None
    aborted = 0
    try:
        uploads = storage.list_uploads()
    except Exception as exc:
        log.warning("retention: cannot list incomplete uploads of %s: %s", storage.uri, exc)
        return 0
    for key, upload_id in uploads:
        step = parse_step_dir(key.split("/", 1)[0])
        if step is None or steps.get(step):
            continue
        if drop_newer_uncommitted or (newest is not None and step < newest):
            try:
                storage.abort_upload(key, upload_id)
                aborted += 1
            except Exception as exc:
                log.warning("retention: could not abort the upload of %s: %s", key, exc)
    if aborted:
        log.info("retention: aborted %d incomplete upload(s) under %s", aborted, storage.uri)
    return aborted
