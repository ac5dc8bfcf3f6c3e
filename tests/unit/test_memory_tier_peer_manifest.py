"""A pod that holds no copy of a snapshot's manifest (a pod new to the job, one whose store was
emptied) finds it on a live peer: `read_manifest` sizes a manifest before reading it, so
`PodMemoryStorage.size` must answer for a manifest only a peer holds."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from elastra.checkpoint.format import MANIFEST, step_dir
from elastra.checkpoint.reader import read_manifest
from elastra.storage import join_key
from elastra.storage.base import NotFoundError
from elastra.storage.memory import MemoryStore, SnapshotServer
from elastra.storage.peers import PodMemoryStorage

MANIFEST_TEXT = (
    '{"format":"elastra-checkpoint","version":1,"step":5,"world_size":1,"chunk_bytes":4194304,'
    '"tensors":{},"values":{},"files":{},"meta":{}}'
)


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[tuple[MemoryStore, str]]:
    store = MemoryStore(str(tmp_path / "peer"))
    server = SnapshotServer(store, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield store, server.address
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize(
    ("peer_has_it", "found"),
    [
        pytest.param(True, True, id="only-a-peer-holds-the-manifest"),
        pytest.param(False, False, id="no-pod-holds-it"),
    ],
)
def test_manifest_held_only_by_a_peer(
    tmp_path: Path, peer: tuple[MemoryStore, str], peer_has_it: bool, found: bool
) -> None:
    peer_store, address = peer
    key = join_key(step_dir(5), MANIFEST)
    if peer_has_it:
        peer_store.put_bytes(key, MANIFEST_TEXT.encode())
    mine = PodMemoryStorage(MemoryStore(str(tmp_path / "mine")), "new", {"old": address})
    if found:
        assert mine.size(key) == len(MANIFEST_TEXT)
        assert read_manifest(mine, 5).step == 5
    else:
        assert mine.size(key) is None
        with pytest.raises(NotFoundError):
            read_manifest(mine, 5)


def test_an_empty_rebuild_reads_nothing(tmp_path: Path) -> None:
    """A rebuild of zero bytes (a lost pod's empty range) returns at once: it needs no layout, no share
    (the piece size would be 0, and stepping through the range by 0 raised ValueError)."""
    mine = PodMemoryStorage(MemoryStore(str(tmp_path / "mine")), "p0", {})
    assert mine.rebuild(5, "p1", 0, 0) == bytearray()
