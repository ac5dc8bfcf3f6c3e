"""In-memory snapshots with erasure coding across pods (REFT): the worker side.

`MemorySnapshotter` is a `Checkpointer` whose tier is `PodMemoryStorage`: each rank's shard file goes
into its own pod's memory store (staged as any save: the trainer stalls for one memcpy); then, on the
background thread, the holders of each group's parity read the group's data blocks from the members'
snapshot servers, encode their parity block (zfec) and store it; only when every rank's shard and
every parity block is written does rank 0 write the manifest, with the layout in `meta.memory`, and
every rank copies it into its pod's store: the in-memory commit. A step without a manifest on any
live pod (a kill during encoding, a failed peer read) is never restored.

Restore (`restore`): the ranks agree on the steps whose manifest any live pod holds and load the
newest that loads, through the ordinary reader (`plan_reads`, checksums): own pod's memory first,
then live peers over the network, then bytes rebuilt from parity for a lost pod's files.

Configuration comes from the pod's environment (`MemoryConfig.from_env`), set by the agent.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from elastra.api.memory import Group, plan_groups
from elastra.api.pod import PodContract
from elastra.checkpoint import faults
from elastra.checkpoint.checkpointer import Checkpointer
from elastra.checkpoint.format import MANIFEST, step_dir
from elastra.checkpoint.handles import CheckpointError
from elastra.checkpoint.memory_staging import FileStaging
from elastra.storage import join_key
from elastra.storage.erasure import default_codec, encode
from elastra.storage.memory import MemoryStore, PeerClient
from elastra.storage.peers import Layout, PodMemoryStorage, fill_block_range, parity_file

log = logging.getLogger(__name__)

ENCODE_PIECE = 32 << 20
"""Parity is encoded this many bytes of each block at a time (k such buffers in memory at once)."""


def cap_problem(layout: Layout, pod: str, max_bytes: int) -> str | None:
    """Why `pod` cannot take this snapshot under its cap (`maxBytesPerPod`, its memory volume's
    `sizeLimit`), or None. The pod holds its data block and the parity blocks it is a holder of; and
    it still holds the previous snapshot until this one commits, so the cap must fit twice that."""
    mine = sum(size for _, size in layout.blocks.get(pod, ()))
    mine += sum(n for g, n in zip(layout.groups, layout.lengths, strict=True) if pod in g.holders)
    if 2 * mine <= max_bytes:
        return None
    return (
        f"pod {pod} would hold {mine} bytes of it next to the previous snapshot's (2 x {mine} at the "
        f"peak), over its cap of {max_bytes} (spec.checkpoint.memory.maxBytesPerPod)"
    )


@dataclass(kw_only=True, slots=True)
class MemoryConfig:
    """The memory tier of one worker (env `ELASTRA_MEMORY_*`, set by the agent)."""

    dir: str
    """This pod's memory store (its `emptyDir: {medium: Memory}` volume)."""
    pod: str
    """This pod's name (`POD_NAME`)."""
    addr: str
    """This pod's snapshot server, `podIP:port`."""
    peers: dict[str, str] = field(default_factory=dict)
    """pod → snapshot server of every member of this generation (this pod included)."""
    every_steps: int = 1
    """Snapshot every this many steps."""
    parity: int = 1
    """Parity blocks per group."""
    group_size: int = 4
    """Pods per group (`k`)."""
    max_bytes: int | None = None
    """Cap on this pod's snapshot memory (its volume's `sizeLimit`): a snapshot whose data + parity on
    this pod is over half of it is refused (`cap_problem`)."""
    local_rank: int = 0
    """This worker's rank within its pod: local rank 0 prunes the pod's store."""

    @staticmethod
    def from_env(env: Mapping[str, str]) -> MemoryConfig | None:
        """The config, or None when the pod has no memory tier. ValueError on a malformed value."""
        contract = PodContract.from_env(env)  # what the operator set: one model, both sides
        directory = contract.memory_dir
        if not directory:
            return None
        pod = contract.pod or "pod-0"
        peers: dict[str, str] = {}
        for item in filter(None, env.get("ELASTRA_MEMORY_PEERS", "").split(",")):
            name, sep, address = item.partition("=")
            if not sep or not name or ":" not in address:
                raise ValueError(f"ELASTRA_MEMORY_PEERS entries must be pod=host:port, got {item!r}")
            peers[name] = address
        config = MemoryConfig(
            dir=directory,
            pod=pod,
            addr=env.get("ELASTRA_MEMORY_ADDR", peers.get(pod, "")),
            peers=peers,
            every_steps=contract.memory_every_steps,
            parity=contract.memory_parity,
            group_size=contract.memory_group_size,
            max_bytes=contract.memory_max_bytes,
            local_rank=int(env.get("LOCAL_RANK", "0")),
        )
        if config.every_steps < 1 or config.parity < 0 or config.group_size < 1:
            raise ValueError(f"bad memory tier settings: {config}")
        return config


class MemorySnapshotter(Checkpointer):
    """Snapshots in pod memory, parity on other pods, restore from memory. Construct on every rank."""

    def __init__(
        self, config: MemoryConfig, process_group: dist.ProcessGroup | None = None, *, timeout_s: float = 60.0
    ) -> None:
        super().__init__(config.dir, keep=1, process_group=process_group, busy_policy="skip",
                         timeout_s=timeout_s)  # fmt: skip
        self.config = config
        self.store = MemoryStore(config.dir)
        self.tier = PodMemoryStorage(self.store, config.pod, config.peers)
        self._durable = self.tier
        self._file_staging = FileStaging(self.store, config.local_rank)
        self._file_staging.remove_leftovers()
        self._staging = self._file_staging
        self.tier.adopt = self._file_staging.adopt
        self.snapshot_bytes = 0
        """Bytes this pod's store held after the newest commit (data + parity + manifest)."""
        self.encode_seconds = 0.0
        """Time this rank spent reading its group's blocks and encoding parity in the newest snapshot."""
        self.snapshot_seconds: float | None = None
        """From `save()` to the in-memory commit, of the newest committed snapshot."""
        self._started: dict[int, float] = {}
        self.restore_dirtied = False
        """The newest `restore()` had a load attempt fail: the tensors it reads into in place may be
        partly overwritten (the session then refuses a fresh start on them)."""

    def save(self, step: int, state: object, *, staging: str = "eager") -> Any:
        """As `Checkpointer.save` (a snapshot still in flight makes this one skip)."""
        self._started = {s: t for s, t in self._started.items() if s > step - 64}
        self._started[step] = time.perf_counter()
        return super().save(step, state, staging=staging)

    def step(self, completed: int, state: Callable[[], object]) -> dict[str, Any]:
        """After `completed` steps: a snapshot of `state()` when due (every `every_steps`; all ranks
        agree by the step count); this rank's figures for its status."""
        if completed % self.config.every_steps == 0:
            self.save(completed, state(), staging="eager")
        return {
            "memory_snapshot_bytes": self.snapshot_bytes,
            "memory_snapshot_seconds": self.snapshot_seconds,
        }

    def _retention(self, drop_newer_uncommitted: bool) -> None:
        """Per pod, after each commit (`_after_commit`), not per tier on rank 0."""

    # ------------------------------------------------------------------ save hooks
    def _before_manifest(self, step: int, reports: list[dict[str, Any]]) -> dict[str, Any]:
        pods_of_ranks = self._all_gather({"pod": self.config.pod, "addr": self.config.addr}, self._commit)
        layout, addrs = self._layout(reports, pods_of_ranks)
        error: str | None = None
        try:
            self._check_cap(step, layout)  # before encoding: no parity work for a refused snapshot
            started = time.perf_counter()
            self._encode_parity(step, layout, addrs, first_rank_of_pod=self._first_rank_of_pod(pods_of_ranks))
            self.encode_seconds = time.perf_counter() - started
        except Exception as exc:
            log.warning("memory snapshot %d: %s", step, exc)
            error = f"rank {self.rank}: {exc}"
        errors = [e for e in self._all_gather(error, self._commit) if e]
        if errors:
            raise CheckpointError(f"memory snapshot {step} not committed: {'; '.join(errors)}")
        return {"memory": layout.to_json()}

    def _first_rank_of_pod(self, pods_of_ranks: list[dict[str, str]]) -> bool:
        return next(r for r, p in enumerate(pods_of_ranks) if p["pod"] == self.config.pod) == self.rank

    def _layout(
        self, reports: list[dict[str, Any]], pods_of_ranks: list[dict[str, str]]
    ) -> tuple[Layout, dict[str, str]]:
        blocks: dict[str, list[tuple[str, int]]] = {}
        addrs: dict[str, str] = {}
        for report, who in zip(reports, pods_of_ranks, strict=True):
            blocks.setdefault(who["pod"], []).append((report["file"], int(report["size"])))
            addrs[who["pod"]] = who["addr"]
        groups = plan_groups(list(blocks), self.config.group_size, self.config.parity)
        parity = len(groups[0].holders) if groups else 0
        lengths = tuple(max(sum(s for _, s in blocks[p]) for p in g.members) for g in groups)
        frozen = {pod: tuple(files) for pod, files in blocks.items()}
        return Layout(parity, groups, frozen, lengths, default_codec()), addrs

    def _encode_parity(
        self, step: int, layout: Layout, addrs: dict[str, str], *, first_rank_of_pod: bool
    ) -> None:
        """On the first rank of each holder pod: stream the group's blocks in, encode and store its
        parity, `ENCODE_PIECE` bytes at a time (one reused buffer per member: bounded memory, and no
        fresh pages to fault in and zero for every snapshot)."""
        if not first_rank_of_pod:
            return
        for group in layout.groups:
            if self.config.pod in group.holders:
                index = group.holders.index(self.config.pod)
                key = join_key(step_dir(step), parity_file(group.index, index))
                self.store.put_stream(key, self._parity_pieces(step, layout, group, index=index, addrs=addrs))

    def _parity_pieces(
        self, step: int, layout: Layout, group: Group, *, index: int, addrs: dict[str, str]
    ) -> Iterator[bytes | bytearray | memoryview]:
        length = layout.lengths[group.index]
        piece = max(1, min(ENCODE_PIECE, length))
        buffers = [bytearray(piece) for _ in group.members]
        out = memoryview(bytearray(piece)) if group.k > 1 else memoryview(b"")
        for lo in range(0, length, piece):
            n = min(piece, length - lo)
            views = [memoryview(b)[:n] for b in buffers]
            for member, view in zip(group.members, views, strict=True):
                fill_block_range(layout.blocks[member], lo, view, self._block_reader(step, member, addrs))
            if lo == 0:
                faults.crash_point("encode", self.rank)
            if group.k == 1:  # the parity of one block is a copy of it: written from the buffer
                yield views[0]
            else:
                (parity,) = encode(views, layout.parity, only=[index], codec=layout.codec, out=[out[:n]])
                yield parity

    def _block_reader(
        self, step: int, member: str, addrs: dict[str, str]
    ) -> Callable[[str, int, memoryview], None]:
        def read(name: str, offset: int, view: memoryview) -> None:
            key = join_key(step_dir(step), name)
            if member == self.config.pod:
                self.store.read_into(key, offset, [view])
            else:
                PeerClient(addrs[member]).read_into(key, offset, view)

        return read

    def _check_cap(self, step: int, layout: Layout) -> None:
        if self.config.max_bytes is not None:
            problem = cap_problem(layout, self.config.pod, self.config.max_bytes)
            if problem:
                raise CheckpointError(f"snapshot {step}: {problem}")

    def _after_commit(self, step: int, manifest: str) -> None:
        key = join_key(step_dir(step), MANIFEST)
        if not self.store.exists(key):
            self.store.put_bytes(key, manifest.encode())
        if self.config.local_rank == 0:
            self.store.prune(keep=1)
        self.snapshot_bytes = self.store.bytes_held()
        self._file_staging.preallocate()
        if step in self._started:
            self.snapshot_seconds = time.perf_counter() - self._started.pop(step)

    # ------------------------------------------------------------------ restore
    def restore(self, state: object, not_before: int = 0) -> int | None:
        """Load the newest memory snapshot at or after step `not_before` that every rank can read;
        None (on every rank) when there is none. Afterwards this pod's store drops newer steps (all of
        them when none loaded). Reads go straight into the tensors, so a snapshot that fails mid-read
        leaves them partly overwritten: `restore_dirtied` says so (an older snapshot, or the disk
        tier's load, overwrites them again)."""
        mine = sorted(s for s in self.tier.committed_steps() if s >= not_before)
        everyone = self._all_gather(mine, self._control)
        candidates = sorted({s for steps in everyone for s in steps}, reverse=True)
        restored = None
        self.restore_dirtied = False
        for step in candidates:
            try:
                restored = self.load(state, step=step)
                break
            except CheckpointError as exc:
                self.restore_dirtied = True  # conservatively: it may have failed mid-read
                log.warning("memory snapshot %d unusable: %s", step, exc)
        self.tier.release_buffers()
        if self.config.local_rank == 0:
            for step in self.store.steps():
                if restored is None or step > restored:
                    self.store.delete(join_key(step_dir(step), MANIFEST))
                    self.store.delete_prefix(step_dir(step))
        return restored

    def close(self) -> None:
        """As `Checkpointer.close`, and the staging file of a save that failed before it was adopted
        is deleted."""
        try:
            super().close()
        finally:
            self._file_staging.discard()


def from_env(process_group: dist.ProcessGroup | None = None) -> MemorySnapshotter | None:
    """The worker's memory snapshotter, or None when its pod has no memory tier."""
    config = MemoryConfig.from_env(os.environ)
    return MemorySnapshotter(config, process_group) if config is not None else None
