"""`Checkpointer.close()` frees what the constructor took: its two private gloo groups (and their
sockets) and its background thread. Real 2-rank gloo runs: constructing and closing 20 Checkpointers
leaves the number of process groups and of open file descriptors where it was; close() is idempotent;
and close() returns when the peer is gone (exited, killed mid-save) or the default group was destroyed
first."""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d

from elastra.checkpoint import Checkpointer, CheckpointError

pytestmark = pytest.mark.timeout(120)
JOIN_S = 60
"""A generous bound on a rank's whole run: a close() that hangs fails the test instead of blocking it."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def process_groups() -> int:
    return len(distributed_c10d._world.pg_map)  # torch's registry of live groups


def run_ranks(target: object, *args: object) -> list[int | None]:
    """Start ranks 0 and 1 of `target(rank, *args)`; their exit codes (None: still running after JOIN_S)."""
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=(rank, *args)) for rank in (0, 1)]  # type: ignore[arg-type]
    for p in procs:
        p.start()
    codes = []
    for p in procs:
        p.join(JOIN_S)
        codes.append(p.exitcode)
        if p.exitcode is None:
            p.kill()
            p.join()
    return codes


def churn(rank: int, port: int, root: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    state = {"w": torch.arange(8.0)}
    warm = Checkpointer(root, timeout_s=20)  # first use may open lasting fds (thread pools, loggers)
    warm.save(0, state).wait()
    warm.close()
    groups, fds = process_groups(), open_fds()
    for i in range(1, 21):
        ckpt = Checkpointer(root, timeout_s=20, keep=1)
        if i % 5 == 0:
            ckpt.save(i, state).wait()  # the groups carried real collectives
        ckpt.close()
        ckpt.close()  # idempotent
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(f"{groups} {process_groups()} {fds} {open_fds()}")
    dist.destroy_process_group()


def test_close_frees_groups_and_fds_across_20_checkpointers(tmp_path: Path) -> None:
    root = tmp_path / "durable"
    assert run_ranks(churn, free_port(), str(root), str(tmp_path)) == [0, 0]
    for rank in (0, 1):
        groups_before, groups_after, fds_before, fds_after = map(
            int, (tmp_path / f"rank{rank}.txt").read_text().split()
        )
        assert groups_after == groups_before, f"rank {rank}: process groups grew"
        # Each leaked gloo group holds at least one socket to the peer: 40 groups would be 40+ fds.
        assert fds_after - fds_before < 8, f"rank {rank}: {fds_before} -> {fds_after} open fds"


def peer_gone(rank: int, port: int, root: str, out: str, how: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    if how == "peer-killed-mid-save" and rank == 1:
        os.environ["ELASTRA_CKPT_FAULT"] = "commit@1"
    ckpt = Checkpointer(root, timeout_s=10)
    if how == "peer-exits-idle" and rank == 1:
        os._exit(0)
    if how == "peer-killed-mid-save":
        with contextlib.suppress(CheckpointError):  # rank 0: the peer died before the manifest
            ckpt.save(1, {"w": torch.arange(8.0)}).wait()
    if how == "default-group-destroyed-first":
        dist.destroy_process_group()
    ckpt.close()
    ckpt.close()
    Path(out, f"closed-{rank}").touch()
    os._exit(0)  # skip torch's exit-time teardown of a world whose peer is gone


@pytest.mark.parametrize(
    ("how", "survivors"),
    [
        pytest.param("peer-exits-idle", [0], id="peer-exited-before-close"),
        pytest.param("peer-killed-mid-save", [0], id="peer-sigkilled-mid-save"),
        pytest.param("default-group-destroyed-first", [0, 1], id="default-group-already-destroyed"),
    ],
)
def test_close_returns_when_the_peer_or_world_is_gone(tmp_path: Path, how: str, survivors: list[int]) -> None:
    codes = run_ranks(peer_gone, free_port(), str(tmp_path / "durable"), str(tmp_path), how)
    assert None not in codes, f"a rank hung: exit codes {codes}"
    for rank in survivors:
        assert codes[rank] == 0 and (tmp_path / f"closed-{rank}").exists(), f"rank {rank} did not close"


def test_save_after_close_is_a_clear_error(tmp_path: Path) -> None:
    ckpt = Checkpointer(str(tmp_path / "durable"))
    ckpt.save(1, {"w": torch.arange(4.0)}).wait()
    ckpt.close()
    ckpt.close()
    with pytest.raises(CheckpointError, match="closed Checkpointer"):
        ckpt.save(2, {"w": torch.arange(4.0)})
