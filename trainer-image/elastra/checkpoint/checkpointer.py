"""The `Checkpointer`: asynchronous sharded save, commit, retention, and reshard-on-restore.

Save, per rank: agree on a save plan (one small collective on the training thread), **stage** the
pieces this rank writes into a reusable host buffer (the only blocking part; with lazy staging it runs
on the background thread too, and only the next mutation waits for it: `fence()` / `guard()`), then
on a background thread **persist** the shard file to the local tier (tmp, fsync, rename), **upload**
it to the durable tier, and **commit**: rank 0 gathers every rank's shard index and writes
`manifest.json` only when every shard is durable. Checkpoint collectives run on two private gloo
groups, one used only by the training thread and one only by the background thread, so they never
interleave with training collectives or with each other.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.hooks import RemovableHandle

from elastra.checkpoint import faults
from elastra.checkpoint.format import (
    CHUNK_BYTES,
    DIRECT_IO_ALIGN,
    FORMAT_VERSION,
    MANIFEST,
    Fragment,
    Manifest,
    TensorEntry,
    manifest_to_json,
    shard_file,
    shard_header,
    step_dir,
)  # fmt: skip
from elastra.checkpoint.geometry import Box
from elastra.checkpoint.handles import CheckpointError, CheckpointStats, CommitInfo, SaveHandle
from elastra.checkpoint.plan import Piece, RankWrites, SavePlan, plan_save
from elastra.checkpoint.report import RestoreReport
from elastra.checkpoint.restore import (
    NONE,
    RestoreResult,
    Skipped,
    apply_restored,
    next_candidate,
    restore_report,
    split_source,
    try_candidate,
)
from elastra.checkpoint.retention import apply_retention, committed_steps
from elastra.checkpoint.staging import (
    Staged,
    StagingBuffer,
    StagingJob,
    checksum_pieces,
)
from elastra.checkpoint.state import split_state
from elastra.storage import LocalStorage, S3Options, Storage, StorageError, join_key, open_storage
from elastra.storage.local import make_private

log = logging.getLogger(__name__)

BUSY_POLICIES = ("wait", "skip")
STAGING_MODES = ("eager", "lazy")
MISMATCH = 2
"""A restore verdict: the state does not fit the checkpoint (1: the checkpoint is unusable)."""


def _signature(pieces: list[Piece]) -> int:
    """A 63-bit digest of a rank's layout: equal layouts, equal signatures."""
    digest = hashlib.sha256(json.dumps([p.to_json() for p in pieces]).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


class Checkpointer:
    """Save and load sharded training state under `uri` (`s3://bucket/prefix` or a directory).

    `local_dir`, when given, is a faster node-local tier written first and preferred on restore.
    `keep` committed checkpoints are kept per tier (`local_keep` overrides it for the local tier).
    `prune_durable=False` leaves the durable tier's retention to someone else: under the operator,
    only the operator deletes durable checkpoints (through their Checkpoint objects), so a trainer
    never deletes the step a new generation is about to read. `process_group` defaults to the default
    group when torch.distributed is initialized, else a world of one. Must be constructed on every
    rank."""

    def __init__(
        self,
        uri: str,
        local_dir: str | None = None,
        keep: int = 3,
        process_group: dist.ProcessGroup | None = None,
        *,
        busy_policy: str = "wait",
        s3: S3Options | None = None,
        timeout_s: float = 600.0,
        chunk_bytes: int = CHUNK_BYTES,
        local_keep: int | None = None,
        prune_durable: bool = True,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, got {keep}")
        if local_keep is not None and local_keep < 1:
            raise ValueError(f"local_keep must be at least 1, got {local_keep}")
        if busy_policy not in BUSY_POLICIES:
            raise ValueError(f"busy_policy must be one of {BUSY_POLICIES}, got {busy_policy!r}")
        if chunk_bytes < 1 << 10 or chunk_bytes % 16:
            raise ValueError(f"chunk_bytes must be a multiple of 16 and at least 1 KiB, got {chunk_bytes}")
        self.uri = uri.rstrip("/") if uri.startswith("s3://") else uri
        self.keep = keep
        self.local_keep = local_keep if local_keep is not None else keep
        self.prune_durable = prune_durable
        self.last_restore: RestoreResult | None = None
        self.last_report: RestoreReport | None = None
        """What the newest successful `load` restored, left missing, found unexpected or tied."""
        """What the newest `load` restored and which newer checkpoints it skipped, and why."""
        self._s3 = s3
        self.busy_policy = busy_policy
        self.chunk_bytes = chunk_bytes
        self.stats = CheckpointStats()
        self._durable = open_storage(self.uri, s3)
        if local_dir:
            make_private(local_dir)
        self._local = LocalStorage(local_dir) if local_dir else None
        self._staging = StagingBuffer()
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="elastra-ckpt")
        self._inflight: SaveHandle | None = None
        self._plan_cache: tuple[tuple[int, ...], SavePlan, RankWrites] | None = None
        """Every rank's layout signature at the last plan, and that plan."""
        self._pg = process_group
        if self._pg is None and dist.is_available() and dist.is_initialized():
            self._pg = dist.group.WORLD
        self.rank = dist.get_rank(self._pg) if self._pg is not None else 0
        self.world_size = dist.get_world_size(self._pg) if self._pg is not None else 1
        self._retention(drop_newer_uncommitted=True)
        self._control: Any = None
        self._commit: Any = None
        self._closed = False
        if self._pg is not None and self.world_size > 1:
            ranks = dist.get_process_group_ranks(self._pg)
            timeout = timedelta(seconds=timeout_s)
            self._control = dist.new_group(ranks=ranks, backend="gloo", timeout=timeout)
            self._commit = dist.new_group(ranks=ranks, backend="gloo", timeout=timeout)

    # ------------------------------------------------------------------ collectives
    def _all_gather(self, obj: Any, group: Any) -> list[Any]:
        """Every rank's JSON-able `obj`, exchanged as JSON text (never unpickled from storage)."""
        text = json.dumps(obj)
        if group is None:
            return [json.loads(text)]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, text, group=group)
        return [json.loads(t) for t in out]

    def _agree(self, busy: bool, signature: int) -> list[dict[str, Any]]:
        """Every rank's busy flag and layout signature, in one small tensor collective (the only one
        of a save whose layout is unchanged since the last)."""
        if self._control is None:
            return [{"busy": busy, "sig": signature}]
        mine = torch.tensor([int(busy), signature], dtype=torch.int64)
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        dist.all_gather(out, mine, group=self._control)
        return [{"busy": bool(t[0]), "sig": int(t[1])} for t in out]

    # ------------------------------------------------------------------ save
    def save(self, step: int, state: object, *, staging: str = "eager") -> SaveHandle:
        """Stage `state`; persisting, uploading and committing continue in the background.

        `staging="eager"` (the default) returns once the state has been copied: the caller may
        mutate it at once. `staging="lazy"` returns right after the plan is agreed and copies on the
        background thread, overlapping the caller's next forward and backward pass: the caller must
        call `fence()` (or `handle.staged()`) before it next mutates the state, which `guard(optimizer)`
        does before every optimizer step."""
        if staging not in STAGING_MODES:
            raise ValueError(f"staging must be one of {STAGING_MODES}, got {staging!r}")
        if self._closed:
            raise CheckpointError("save() on a closed Checkpointer: its process groups are gone")
        started = time.perf_counter()
        previous = self._inflight
        busy = previous is not None and not previous.done()
        if busy and self.busy_policy == "wait":
            assert previous is not None and previous._future is not None
            concurrent.futures.wait([previous._future])
            self.stats.waited += 1
            busy = False
        leaves, values = split_state(state)
        pieces = [Piece(x.path, x.dtype, x.shape, x.layout, x.sharding, x.box) for x in leaves]
        signature = _signature(pieces)
        gathered = self._agree(busy, signature)
        if any(g["busy"] for g in gathered):
            self.stats.skipped += 1
            log.info("checkpoint of step %d skipped: the previous save is still in flight", step)
            return SaveHandle(step, time.perf_counter() - started, None)
        signatures = tuple(g["sig"] for g in gathered)
        if self._plan_cache is not None and self._plan_cache[0] == signatures:
            _, plan, mine = self._plan_cache  # every rank's layout is unchanged: no second collective
        else:
            everyone = self._all_gather([p.to_json() for p in pieces], self._control)
            plan = plan_save(
                [[Piece.from_json(raw) for raw in rank_pieces] for rank_pieces in everyone],
            )
            mine = plan.writes_of(self.rank)
            self._plan_cache = (signatures, plan, mine)
        self.stats.saves += 1
        faults.crash_point("stage", self.rank)
        by_key = {(x.path, x.box.offsets, x.box.shape): x for x in leaves}
        header = shard_header(
            [(p.name, p.piece.dtype, p.piece.box.shape, p.piece.nbytes) for p in mine.pieces],
            {"format": "elastra-checkpoint", "version": str(FORMAT_VERSION), "step": str(step)},
            align=DIRECT_IO_ALIGN,
        )
        # Lazy staging runs on the background thread, so it checksums while it copies (one pass);
        # eager staging keeps the training thread's wait to the copy and checksums afterwards.
        chunk = self.chunk_bytes if staging == "lazy" else None
        job = self._staging.prepare(mine, by_key, header, checksum_chunk=chunk)
        staged_future: concurrent.futures.Future[None] = concurrent.futures.Future()
        # Fresh file names for every save: re-saving a committed step (an old generation committing
        # late, a new one saving the same step number) never touches the files its manifest names;
        # the new manifest replaces the old one atomically, and a crash before that leaves the old one.
        save_id = uuid.uuid4().hex[:12]
        common: dict[str, Any] = {"step": step, "plan": plan, "mine": mine, "values": values,
                                  "started": started, "save_id": save_id}  # fmt: skip
        if staging == "eager":
            staged = self._staging.copy(job)
            staged_future.set_result(None)
            stall = time.perf_counter() - started
            future = self._executor.submit(self._persist_and_commit, staged=staged, stall=stall, **common)
        else:
            stall = time.perf_counter() - started
            future = self._executor.submit(self._stage_persist_and_commit, job, staged_future, stall, common)
        handle = SaveHandle(step, stall, future, staged_future)
        self._inflight = handle
        return handle

    def _stage_persist_and_commit(
        self, job: StagingJob, staged_future: concurrent.futures.Future[None], stall: float,
        common: dict[str, Any],
    ) -> CommitInfo:  # fmt: skip
        """Lazy staging, on the background thread: copy, release `fence()`, then persist as usual.

        A failed copy still takes part in the commit round (as this rank's error), so the other ranks
        learn the step failed instead of waiting for this one."""
        staged: Staged | str
        try:
            staged = self._staging.copy(job)
        except Exception as exc:
            log.exception("checkpoint step %d: staging failed", common["step"])
            staged = f"rank {self.rank}: staging failed: {exc}"
        finally:
            staged_future.set_result(None)  # on failure too: nothing will read the state any more
        return self._persist_and_commit(staged=staged, stall=stall, **common)

    def fence(self) -> None:
        """Block until the in-flight save (if any) has copied the state; then it is safe to mutate it.

        Needed only after `save(..., staging="lazy")`; cheap otherwise."""
        if self._inflight is not None:
            self._inflight.staged()

    def guard(self, optimizer: torch.optim.Optimizer) -> RemovableHandle:
        """Call `fence()` before every `optimizer.step()`, so lazy staging never sees a half-updated
        state. Returns the hook's handle (`.remove()` undoes it)."""

        def before_step(_optimizer: object, _args: object, _kwargs: object) -> None:
            self.fence()

        return optimizer.register_step_pre_hook(before_step)

    def wait(self) -> None:
        """Block until the in-flight save is committed; raises CheckpointError if it failed."""
        if self._inflight is not None:
            self._inflight.wait()

    def _persist_and_commit(
        self,
        *, step: int, plan: SavePlan, mine: RankWrites, staged: Staged | str, values: dict[str, Any],
        stall: float, started: float, save_id: str,
    ) -> CommitInfo:  # fmt: skip
        """`staged` is the staged bytes, or why staging failed (then this rank reports that error)."""
        report = (
            self._write_shard(step, mine, staged, shard_file(mine.rank, save_id))
            if isinstance(staged, Staged)
            else {"ok": False, "error": staged}
        )
        faults.crash_point("commit", self.rank)
        reports = self._all_gather(report, self._commit)
        failures = [r["error"] for r in reports if not r["ok"]]
        if failures:
            raise CheckpointError(f"step {step} not committed: {'; '.join(failures)}")
        extra_meta = self._before_manifest(step, reports)
        outcome: dict[str, Any] = {"ok": False, "error": "rank 0 did not commit"}
        if self.rank == 0:
            try:
                manifest = self._manifest(step, plan, reports, values, stall)
                if extra_meta:
                    manifest = dataclasses.replace(manifest, meta={**manifest.meta, **extra_meta})
                body = manifest_to_json(manifest)
                self._durable.put_bytes(join_key(step_dir(step), MANIFEST), body)
                outcome = {"ok": True, "manifest": body.decode(), "bytes": manifest.nbytes}
            except Exception as exc:
                log.exception("checkpoint step %d: writing the manifest failed", step)
                outcome = {"ok": False, "error": str(exc)}
        outcome = self._all_gather(outcome, self._commit)[0]
        if not outcome["ok"]:
            raise CheckpointError(f"step {step} not committed: {outcome['error']}")
        self._after_commit(step, outcome["manifest"])
        tiers = ["durable"]
        if self._local is not None:
            try:
                self._local.put_bytes(join_key(step_dir(step), MANIFEST), outcome["manifest"].encode())
                tiers.insert(0, "local")
            except StorageError as exc:
                log.warning("checkpoint step %d: local tier manifest not written: %s", step, exc)
        self._retention(drop_newer_uncommitted=False)
        return CommitInfo(
            step=step,
            uri=f"{self.uri}/{step_dir(step)}",
            tiers=tuple(tiers),
            bytes=int(outcome["bytes"]),
            manifest_digest="sha256:" + hashlib.sha256(outcome["manifest"].encode()).hexdigest(),
            world_size=self.world_size,
            format_version=FORMAT_VERSION,
            stall_seconds=stall,
            commit_seconds=time.perf_counter() - started,
        )

    def _before_manifest(self, step: int, reports: list[dict[str, Any]]) -> dict[str, Any]:
        """Hook on every rank, once every shard is written and before rank 0 writes the manifest:
        more manifest `meta` (used on rank 0). Raises CheckpointError on every rank, or none, to fail
        the step. Nothing here; the memory tier encodes its parity here."""
        return {}

    def _after_commit(self, step: int, manifest: str) -> None:
        """Hook on every rank once the step is committed (`manifest` is its text). Nothing here."""

    def _write_shard(self, step: int, mine: RankWrites, staged: Staged, file: str) -> dict[str, Any]:
        """Checksum (unless staging did), persist and upload this rank's shard as `file`; its index for
        the manifest, or the error."""
        report: dict[str, Any] = {"ok": True, "error": None}
        key = join_key(step_dir(step), file)
        try:
            crcs = staged.crcs
            if crcs is None:
                crcs = tuple(checksum_pieces(staged.file, staged.data_start, mine, self.chunk_bytes))
            fragments = []
            for placed, sums in zip(mine.pieces, crcs, strict=True):
                box = placed.piece.box
                start = staged.data_start + placed.data_offset
                piece = placed.piece
                where = [piece.path, start, piece.nbytes]
                fragments.append([*where, list(box.offsets), list(box.shape), list(sums)])
            parts = [staged.file]  # header and data, one aligned buffer: written with direct I/O
            size = staged.file.nbytes
            faults.crash_point("persist", self.rank)
            if self._local is not None:
                self._local.put_parts(key, parts)
                self.stats.bytes_by_tier["local"] += size
            faults.crash_point("upload", self.rank)
            if self._local is not None:  # upload from the durable local copy, not the staging buffer
                self._durable.put_file(key, self._local.path_of(key))
            else:
                self._durable.put_parts(key, parts)
            self.stats.bytes_by_tier["durable"] += size
            report.update(file=file, size=size, fragments=fragments)
        except Exception as exc:
            log.exception("checkpoint step %d: writing %s failed", step, key)
            report.update(ok=False, error=f"rank {self.rank}: {exc}")
        return report

    def _manifest(
        self, step: int, plan: SavePlan, reports: list[dict[str, Any]], values: dict[str, Any], stall: float
    ) -> Manifest:
        fragments: dict[str, list[Fragment]] = {path: [] for path in plan.tensors}
        files = {}
        for report in reports:
            files[report["file"]] = report["size"]
            for path, offset, length, offsets, shape, crcs in report["fragments"]:
                box = Box(tuple(offsets), tuple(shape))
                fragments[path].append(Fragment(report["file"], offset, length, box, tuple(crcs)))
        tensors = {
            path: TensorEntry(dtype, shape, layout, sharding, tuple(fragments[path]))
            for path, (dtype, shape, layout, sharding) in plan.tensors.items()
        }
        meta = {"writer": "elastra", "created": datetime.now(UTC).isoformat(), "stall_seconds_rank0": stall}
        return Manifest(step=step, world_size=self.world_size, tensors=tensors, values=values, files=files,
                        chunk_bytes=self.chunk_bytes, meta=meta)  # fmt: skip

    def _retention(self, drop_newer_uncommitted: bool) -> None:
        if self._local is not None:
            apply_retention(self._local, self.local_keep, drop_newer_uncommitted)
        if self.rank == 0:  # without `prune_durable`, only the leftovers of steps that never committed
            try:
                apply_retention(
                    self._durable, self.keep if self.prune_durable else None, drop_newer_uncommitted
                )
            except StorageError as exc:
                log.warning("retention of %s failed: %s", self.uri, exc)

    # ------------------------------------------------------------------ load
    def _agree_max(self, value: int) -> int:
        """The largest of every rank's `value`: one all-reduce of one int64, the same shape on every
        rank whatever happened locally (the restore's candidate and verdict)."""
        if self._control is None:
            return value
        mine = torch.tensor([value], dtype=torch.int64)
        dist.all_reduce(mine, op=dist.ReduceOp.MAX, group=self._control)
        return int(mine[0])

    def load(
        self,
        state: object,
        step: int | None = None,
        *,
        source: str | None = None,
        fallback: bool = False,
        allow_missing: bool | Collection[str] = False,
    ) -> int | None:
        """Restore `state` in place from the newest valid committed checkpoint (or `step`).

        `source` reads another checkpoint root, or one step directory of one (`<root>/step-N`, which
        also sets `step`): a job forked from another job's checkpoint (`restoreFrom`). Returns the
        step restored, or None when there is no committed checkpoint at all. A candidate that is
        incomplete, corrupt or malformed on any rank is skipped by all ranks together for the next
        older committed one. An explicit `step` that cannot be loaded raises CheckpointError, unless
        `fallback` (under the operator: its restore point may have been corrupted since it was
        committed), in which case older steps of the same root are tried too. `last_restore` tells
        which step was restored and why any newer one was skipped. Contiguous CPU tensors of the
        saved dtype are read into in place, so a failed candidate may leave them partly overwritten
        (the next candidate overwrites them again).

        No silent partial restore: a state tensor the checkpoint lacks is an error unless
        `allow_missing` (True, or those paths) allows it, and it then keeps its value; an optimizer
        whose state is still empty while the checkpoint holds state for it is an error that says how
        to create it. Both are the caller's mismatch, not damage: every rank raises CheckpointError at
        once, without trying older checkpoints. `last_report` says what was restored, missing,
        unexpected (saved but taken by nothing) and tied."""
        started = time.perf_counter()
        self.wait_quietly()
        root, source_step = split_source(source) if source else (self.uri, None)
        requested = step if step is not None else source_step
        same_root = root.rstrip("/") == self.uri.rstrip("/")
        storage = self._durable if same_root else open_storage(root, self._s3)
        local = self._local if same_root else None  # a foreign root's steps are not in our local tier
        leaves, values = split_state(state)
        skipped: list[Skipped] = []
        committed: list[int] | None = None
        candidate: int | None = requested
        while True:
            if candidate is None or skipped:  # the newest one, or the next older after a failure
                if skipped and requested is not None and not fallback:
                    break
                if committed is None:
                    committed = self._committed(storage)
                below = skipped[-1].step if skipped else None
                candidate = self._agree_max(next_candidate(committed, below))
                if candidate == NONE:
                    break
            error, mismatch, read = try_candidate(
                storage, local, candidate, leaves, values=values, allow_missing=allow_missing
            )
            verdict = self._agree_max(MISMATCH if mismatch else int(error is not None))
            if verdict == MISMATCH:  # the caller's state does not fit: older checkpoints would not either
                why = f"rank {self.rank}: {error}" if mismatch else "another rank's state does not fit it"
                raise CheckpointError(
                    f"cannot restore {step_dir(candidate)} under {root} into this state: {why}"
                )
            if verdict:
                reason = f"rank {self.rank}: {error}" if error else "another rank could not load it"
                skipped.append(Skipped(candidate, reason))
                more = "" if requested is not None and not fallback else ", trying an older one"
                log.warning("%s is unusable, in %s (%s)%s", step_dir(candidate), root, reason, more)
                continue
            assert read is not None  # no error: the candidate was read
            coverage, (manifest, sources, restored) = read
            apply_restored(state, coverage.loadable, restored, manifest)
            self.stats.restore_bytes_by_tier = dict(sources.bytes_by_tier)
            self.stats.restore_seconds = time.perf_counter() - started
            self.last_restore = RestoreResult(requested, candidate, root, tuple(skipped))
            self.last_report = restore_report(candidate, root, coverage, sources.bytes_by_tier, started)
            if coverage.unexpected or coverage.missing:
                log.warning("%s", self.last_report.summary())
            return candidate
        self.last_restore = RestoreResult(requested, None, root, tuple(skipped))
        if skipped or requested is not None:
            tried = ", ".join(f"{step_dir(s.step)} ({s.reason})" for s in skipped) or step_dir(requested or 0)
            raise CheckpointError(f"no usable committed checkpoint under {root}: tried {tried}")
        return None

    def _committed(self, storage: Storage) -> list[int]:
        """Committed steps of a tier, or none when it cannot be listed (then every rank agrees on
        what the others found)."""
        try:
            return [s for s, ok in committed_steps(storage).items() if ok]
        except Exception as exc:
            log.warning("cannot list %s: %s", storage.uri, exc)
            return []

    def wait_quietly(self) -> None:
        """Wait for an in-flight save, logging rather than raising its failure."""
        try:
            self.wait()
        except CheckpointError as exc:
            log.warning("%s", exc)

    def close(self) -> None:
        """Wait for the in-flight save, stop the background thread and free the two private groups.
        Idempotent. Destroying a gloo subgroup is local to this rank (no collective: a dead peer cannot
        block it); when the default group is already gone (torch destroyed every group with it) there
        is nothing left to destroy and the references are simply dropped."""
        if self._closed:
            return
        self._closed = True
        try:
            self.wait_quietly()
        finally:
            self._executor.shutdown(wait=True)
            groups, self._control, self._commit = (self._control, self._commit), None, None
            self._plan_cache = None
            for group in groups:
                _destroy_group(group)


def _destroy_group(group: Any) -> None:
    """Destroy a private subgroup if torch still knows it (it forgets every group with the default one)."""
    if group is None or not (dist.is_available() and dist.is_initialized()):
        return
    try:
        dist.destroy_process_group(group)
    except ValueError as exc:  # "Invalid process group specified": the world was re-initialized since
        log.debug("checkpoint group already gone: %s", exc)


def latest(uri: str, s3: S3Options | None = None) -> int | None:
    """The newest committed step under `uri`, or None."""
    steps = [s for s, ok in committed_steps(open_storage(uri, s3)).items() if ok]
    return max(steps) if steps else None
