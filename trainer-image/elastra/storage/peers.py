"""The memory tier as one `Storage`: writes go to this pod's memory, reads come from whoever has them.

`PodMemoryStorage` is what the memory snapshotter hands the checkpoint engine as its tier, so the
save pipeline (shard files, checksums, manifest last) and the restore path (`plan_reads`, verified
reads straight into the tensors) are the disk tiers' own. A read of `step-N/<file>` goes:
1. to this pod's store, when the file is here;
2. else to the live pod that wrote it, over HTTP on its pod IP (`PeerClient`);
3. else (its pod is lost) it is rebuilt: the same byte range is read from `k` of its group's live
   shares (data blocks of the other members, parity blocks of the holders) and decoded.

Where each file lives comes from the step's manifest (`meta.memory`, written by the snapshotter):
pods, the files of each pod's data block in order, the groups. That document crossed a boundary (a
peer wrote it), so it is checked before use. The bytes themselves are checked by the reader against
the manifest's checksums, rebuilt ones included.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from elastra.api.memory import MAX_GROUP_SIZE, MAX_PARITY, Group
from elastra.storage.base import NotFoundError, StorageError, check_key, join_key
from elastra.storage.erasure import CODECS, ErasureError, decode_into
from elastra.storage.memory import MANIFEST, MemoryStore, PeerClient

log = logging.getLogger(__name__)

REBUILD_PIECE = 32 << 20
"""A lost pod's bytes are rebuilt this many at a time (k shares of it in memory at once)."""


def parity_file(group: int, index: int) -> str:
    """The name of parity block `index` of group `group` in a step directory."""
    return f"parity-g{group:03d}-{index}.bin"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where one memory snapshot's bytes are (`meta.memory` of its manifest)."""

    parity: int
    groups: tuple[Group, ...]
    blocks: dict[str, tuple[tuple[str, int], ...]]
    """pod → its data block: the shard files (name, size) in order."""
    lengths: tuple[int, ...]
    """Each group's padded block length."""
    codec: str = "zfec"
    """The erasure codec that made the parity (`elastra.storage.erasure.CODECS`)."""

    def to_json(self) -> dict[str, object]:
        return {
            "codec": self.codec,
            "parity": self.parity,
            "groups": [
                {"members": list(g.members), "holders": list(g.holders), "length": n}
                for g, n in zip(self.groups, self.lengths, strict=True)
            ],
            "blocks": {pod: [list(f) for f in files] for pod, files in self.blocks.items()},
        }

    @staticmethod
    def from_json(raw: object) -> Layout:
        """The layout, or StorageError when the document is malformed or inconsistent."""
        try:
            assert isinstance(raw, dict)
            parity = raw["parity"]
            assert type(parity) is int and 0 <= parity <= MAX_PARITY, f"parity {parity!r}"
            blocks: dict[str, tuple[tuple[str, int], ...]] = {}
            for pod, files in raw["blocks"].items():
                blocks[str(pod)] = tuple((check_key(str(name)), int(size)) for name, size in files)
                assert all(size >= 0 and "/" not in name for name, size in blocks[str(pod)])
            groups, lengths = [], []
            for i, g in enumerate(raw["groups"]):
                members = tuple(str(p) for p in g["members"])
                holders = tuple(str(p) for p in g["holders"])
                # the spec's bounds: a group's rebuild reads (and buffers) up to k + parity - 1 shares
                assert 1 <= len(members) <= MAX_GROUP_SIZE, f"group of {len(members)} members"
                length = int(g["length"])
                assert len(holders) == parity and len(set(members + holders)) == len(members + holders)
                assert all(p in blocks for p in members) and length >= 0
                assert all(sum(s for _, s in blocks[p]) <= length for p in members)
                groups.append(Group(i, members, holders))
                lengths.append(length)
            codec = str(raw.get("codec", "zfec"))  # snapshots from before the codec was recorded
            assert codec in CODECS, f"unknown erasure codec {codec!r}"
            return Layout(parity, tuple(groups), blocks, tuple(lengths), codec)
        except (AssertionError, KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StorageError(f"malformed memory layout in manifest: {exc!r}") from exc

    def locate(self, file: str) -> tuple[str, int, int]:
        """(pod, offset in its data block, size) of a shard file; NotFoundError when none has it."""
        for pod, files in self.blocks.items():
            offset = 0
            for name, size in files:
                if name == file:
                    return pod, offset, size
                offset += size
        raise NotFoundError(f"no pod's block holds {file}")

    def group_of(self, pod: str) -> Group:
        for group in self.groups:
            if pod in group.members:
                return group
        raise NotFoundError(f"pod {pod} is in no group")


def fill_block_range(
    files: Sequence[tuple[str, int]],
    start: int,
    out: memoryview,
    read: Callable[[str, int, memoryview], None],
) -> None:
    """Fill `out` with bytes `[start, start + len(out))` of a data block, the concatenation of `files`
    (name, size) zero-padded past its end: `read(name, offset in that file, view)` fills each piece."""
    n, offset = out.nbytes, 0
    for name, size in files:
        lo, hi = max(start, offset), min(start + n, offset + size)
        if lo < hi:
            read(name, lo - offset, out[lo - start : hi - start])
        offset += size
    pad_from = max(start, offset)  # `offset` is now the block's data length
    if pad_from < start + n:  # the zero padding: `out` may be a reused buffer
        out[pad_from - start :] = bytes(start + n - pad_from)


class PodMemoryStorage:
    """The memory tier seen from one pod: its own store plus its live peers. Thread-safe."""

    def __init__(self, store: MemoryStore, pod: str, peers: Mapping[str, str]) -> None:
        """`peers`: pod name → snapshot server address of every *live* pod (others count as lost)."""
        self.uri = f"memory://{pod}"
        self.store = store
        self.pod = pod
        self.peers = {p: PeerClient(a) for p, a in peers.items() if p != pod}
        self._layouts: dict[int, Layout] = {}
        self._lock = threading.Lock()
        self._buffers: dict[int, builtins.list[bytearray]] = {}
        self.bytes_by_source = {"own": 0, "peer": 0, "rebuilt": 0}
        self.adopt: Callable[[str, builtins.list[memoryview]], bool] | None = None
        """When set (by the snapshotter's `FileStaging`): `put_parts` first offers it the parts, and
        writes them only when it declines (it renames the staged file into place instead)."""

    # ------------------------------------------------------------------ writes: this pod only
    def put_bytes(self, key: str, data: bytes | memoryview) -> None:
        self.store.put_bytes(key, data)

    def put_parts(self, key: str, parts: builtins.list[memoryview]) -> None:
        if self.adopt is None or not self.adopt(key, parts):
            self.store.put_parts(key, parts)

    def put_file(self, key: str, path: str) -> None:
        self.store.put_file(key, path)

    def delete(self, key: str) -> None:
        self.store.delete(key)

    def delete_prefix(self, prefix: str) -> None:
        self.store.delete_prefix(prefix)

    # ------------------------------------------------------------------ listing
    def committed_steps(self) -> set[int]:
        """Steps whose manifest is on this pod or on any live peer (unreachable peers are skipped)."""
        steps = {s for s, ok in self.store.steps().items() if ok}
        for peer in self.peers.values():
            try:
                steps |= {s for s, ok in peer.steps().items() if ok}
            except StorageError as exc:
                log.warning("memory tier: %s", exc)
        return steps

    def list_dirs(self) -> list[str]:
        return sorted({f"step-{s}" for s in self.committed_steps()})

    def list(self, prefix: str) -> list[str]:
        return self.store.list(prefix)

    def exists(self, key: str) -> bool:
        return self.size(key) is not None

    def size(self, key: str) -> int | None:
        local = self.store.size(key)
        if local is not None:
            return local
        step, _, file = check_key(key).partition("/")
        if file == MANIFEST:  # held whole by the pods that committed it, in no block of the layout
            try:
                return len(self.get(key))
            except StorageError:
                return None
        try:
            return self.layout(int(step[5:])).locate(file)[2]
        except (StorageError, ValueError):
            return None

    # ------------------------------------------------------------------ reads
    def get(self, key: str) -> bytes:
        """Small objects (manifests): this pod's copy, else the first live peer's."""
        try:
            return self.store.get(key)
        except NotFoundError:
            pass
        for peer in self.peers.values():
            try:
                return peer.get(key)
            except StorageError:
                continue
        raise NotFoundError(f"no live pod holds {key}")

    def get_range(self, key: str, start: int, end: int) -> bytes:
        out = bytearray(end - start)
        self.read_into(key, start, [memoryview(out)])
        return bytes(out)

    def layout(self, step: int) -> Layout:
        with self._lock:
            if step in self._layouts:
                return self._layouts[step]
        try:
            doc = json.loads(self.get(join_key(f"step-{step}", MANIFEST)))
            layout = Layout.from_json(doc["meta"]["memory"])
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # a hostile peer's manifest
            raise StorageError(f"manifest of step {step} has no usable memory layout: {exc!r}") from exc
        with self._lock:
            self._layouts[step] = layout
        return layout

    def read_into(self, key: str, start: int, parts: builtins.list[memoryview]) -> None:
        views = [p.cast("B") if p.format != "B" else p for p in parts if p.nbytes]
        total = sum(v.nbytes for v in views)
        if self.store.exists(key):
            self.store.read_into(key, start, views)
            self._count("own", total)
            return
        step_name, _, file = check_key(key).partition("/")
        if not step_name.startswith("step-") or not step_name[5:].isdigit():
            raise NotFoundError(f"{key} is not a snapshot file")
        step = int(step_name[5:])
        layout = self.layout(step)
        pod, offset, size = layout.locate(file)
        if start < 0 or start + total > size:
            raise StorageError(f"range [{start}, +{total}) outside {key} ({size} bytes)")
        if pod in self.peers:
            try:
                self._peer_read(pod, key, start, views)
                self._count("peer", total)
                return
            except StorageError as exc:  # the peer died since the generation began: rebuild instead
                log.warning("memory tier: %s; rebuilding from parity", exc)
        self.rebuild_into(step, pod, offset + start, views)
        self._count("rebuilt", total)

    def _peer_read(self, pod: str, key: str, start: int, views: builtins.list[memoryview]) -> None:
        for view in views:
            self.peers[pod].read_into(key, start, view)
            start += view.nbytes

    def _share_range(
        self, step: int, layout: Layout, group: Group, share: int, *, start: int, out: memoryview
    ) -> None:
        """Fill `out` with bytes `[start, start + len(out))` of one share of `group` (a data block,
        zero-padded, or a parity block)."""
        holder = group.members[share] if share < group.k else group.holders[share - group.k]
        if share >= group.k:
            key = join_key(f"step-{step}", parity_file(group.index, share - group.k))
            self._read_from(holder, key, start, out)
            return

        def read(name: str, offset: int, view: memoryview) -> None:
            self._read_from(holder, join_key(f"step-{step}", name), offset, view)

        fill_block_range(layout.blocks[holder], start, out, read)

    def _own_share(
        self, step: int, layout: Layout, group: Group, share: int, *, start: int, n: int
    ) -> memoryview | None:
        """Bytes `[start, start + n)` of a share this pod holds, mapped from its store without a copy,
        when they lie within one file (not across files or into the zero padding); else None."""
        holder = group.members[share] if share < group.k else group.holders[share - group.k]
        if holder != self.pod:
            return None
        found = (parity_file(group.index, share - group.k), 0) if share >= group.k else None
        offset = 0
        for file, size in layout.blocks[holder] if share < group.k else ():
            if offset <= start and start + n <= offset + size:
                found = (file, offset)
                break
            offset += size
        if found is None:
            return None
        try:
            return self.store.map_range(join_key(f"step-{step}", found[0]), start - found[1], n)
        except StorageError as exc:  # read it instead, as a peer's share
            log.warning("memory tier: mapping own share: %s", exc)
            return None

    def _read_from(self, pod: str, key: str, start: int, out: memoryview) -> None:
        if pod == self.pod:
            self.store.read_into(key, start, [out])
        else:
            self.peers[pod].read_into(key, start, out)

    def rebuild(self, step: int, lost: str, start: int, n: int) -> bytearray:
        """Bytes `[start, start+n)` of lost pod `lost`'s data block, decoded from its group's live shares."""
        out = bytearray(n)
        self.rebuild_into(step, lost, start, [memoryview(out)])
        return out

    def rebuild_into(self, step: int, lost: str, start: int, views: builtins.list[memoryview]) -> None:
        """Fill `views` (in order) with lost pod `lost`'s data block from byte `start`, decoded from its
        group's live shares: in pieces of `REBUILD_PIECE` bytes (bounded memory: one reused buffer per
        share), each piece's `k` shares read in parallel, its decoded bytes copied straight to `views`.
        Nothing to fill is nothing to do (no layout read, no share fetched)."""
        if not any(v.nbytes for v in views):
            return
        layout = self.layout(step)
        group = layout.group_of(lost)
        want = group.members.index(lost)
        alive = {self.pod, *self.peers}
        candidates = [
            s for s, pod in enumerate((*group.members, *group.holders)) if pod in alive and pod != lost
        ]
        total = sum(v.nbytes for v in views)
        piece = min(REBUILD_PIECE, total)
        buffers = self._share_buffers(piece, len(candidates))
        pending_views = list(views)
        with concurrent.futures.ThreadPoolExecutor(max(1, group.k)) as pool:
            for lo in range(0, total, piece):
                n = min(piece, total - lo)
                shares: dict[int, memoryview] = {}
                pending = list(candidates)
                while len(shares) < group.k and pending:
                    batch, pending = pending[: group.k - len(shares)], pending[group.k - len(shares) :]
                    futures = {}
                    for s in batch:
                        mapped = self._own_share(step, layout, group, s, start=start + lo, n=n)
                        if mapped is not None:  # in this pod's memory: decoded from in place, no copy
                            shares[s] = mapped
                            continue
                        buffer = buffers[candidates.index(s)][:n]
                        task = pool.submit(
                            self._share_range, step, layout, group, s, start=start + lo, out=buffer
                        )
                        futures[s] = (buffer, task)
                    for share, (buffer, future) in futures.items():
                        try:
                            future.result()
                            shares[share] = buffer
                        except StorageError as exc:
                            log.warning(
                                "memory tier: share %d of group %d unusable: %s", share, group.index, exc
                            )
                targets = []  # this piece's bytes, as (offset in the piece, the caller's view to fill)
                offset = 0
                while offset < n:
                    head = pending_views[0]
                    m = min(head.nbytes, n - offset)
                    targets.append((offset, head[:m]))
                    offset += m
                    pending_views[0] = head[m:]
                    if not pending_views[0].nbytes:
                        pending_views.pop(0)
                try:
                    decode_into(shares, group.k, layout.parity, want, codec=layout.codec, out=targets)
                except ErasureError as exc:
                    raise StorageError(
                        f"step {step}: pod {lost}'s data is lost: group {group.index} has {len(shares)} of "
                        f"the {group.k} shares needed ({exc})"
                    ) from exc

    def _share_buffers(self, size: int, count: int) -> builtins.list[memoryview]:
        """`count` buffers of `size` bytes for this thread, reused across its rebuilds (a restore
        rebuilds in many ranged reads: fresh buffers would fault in and zero pages every time) until
        `release_buffers`."""
        me = threading.get_ident()
        with self._lock:
            mine = self._buffers.get(me, [])
        if len(mine) < count or any(len(b) < size for b in mine[:count]):
            mine = [bytearray(max(size, len(mine[i]) if i < len(mine) else 0)) for i in range(count)]
            with self._lock:
                self._buffers[me] = mine
        return [memoryview(b) for b in mine[:count]]

    def release_buffers(self) -> None:
        """Free the rebuild buffers (after a restore)."""
        with self._lock:
            self._buffers.clear()

    def _count(self, source: str, n: int) -> None:
        with self._lock:
            self.bytes_by_source[source] += n
