"""Crash tests: a rank is SIGKILLed (through the engine's documented fault hook, ELASTRA_CKPT_FAULT)
at each phase boundary of a save at world size 2. There must be no committed-but-broken checkpoint,
`load` returns the previous one, and retention removes the leftovers from both tiers. Re-saving a
step that is already committed and dying mid-way leaves that step committed and bit-exact."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from elastra.checkpoint import Checkpointer, latest

pytestmark = pytest.mark.timeout(120)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def state_for(step: int) -> dict[str, object]:
    return {"w": torch.full((6, 4), float(step)), "r": torch.arange(5) * step, "step": step}


def worker(rank: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    fault = os.environ.pop("ELASTRA_CKPT_FAULT_LATER")
    ckpt = Checkpointer(
        os.path.join(root, "durable"), local_dir=os.path.join(root, f"local-{rank}"), timeout_s=20
    )
    ckpt.save(1, state_for(1)).wait()
    os.environ["ELASTRA_CKPT_FAULT"] = fault
    ckpt.save(2, state_for(2)).wait()  # the faulty rank dies in here; the other one fails
    raise AssertionError("step 2 must not commit with a rank killed mid-save")


@pytest.mark.parametrize(
    ("fault", "leftover"),
    [
        pytest.param("stage@1", None, id="rank1-killed-while-staging"),
        pytest.param("persist@1", None, id="rank1-killed-before-local-write"),
        pytest.param("upload@1", "local-1", id="rank1-killed-before-upload"),
        pytest.param("commit@0", "durable", id="rank0-killed-before-manifest"),
    ],
)
def test_kill_a_rank_mid_save_leaves_previous_checkpoint_loadable(
    tmp_path: Path, fault: str, leftover: str | None, monkeypatch
) -> None:
    monkeypatch.setenv("ELASTRA_CKPT_FAULT_LATER", fault)
    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)):
        mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    durable = str(tmp_path / "durable")
    assert latest(durable) == 1
    assert not (tmp_path / "durable" / "step-2" / "manifest.json").exists()
    for rank in (0, 1):
        assert not (tmp_path / f"local-{rank}" / "step-2" / "manifest.json").exists()

    if leftover is not None:  # the dead rank's phase had written this shard: a leftover to clean
        assert (tmp_path / leftover / "step-2").is_dir()

    # A new generation (world size 1 here) starts: retention cleans the leftovers, load gets step 1.
    for rank in (0, 1):
        ckpt = Checkpointer(durable, local_dir=str(tmp_path / f"local-{rank}"))
        assert not (tmp_path / f"local-{rank}" / "step-2").exists()
    assert not (tmp_path / "durable" / "step-2").exists()
    fresh = {"w": torch.zeros(6, 4), "r": torch.zeros(5, dtype=torch.int64), "step": 0}
    assert ckpt.load(fresh) == 1
    assert torch.equal(fresh["w"], torch.ones(6, 4)) and fresh["step"] == 1


def resave_worker(rank: int, port: int, root: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    fault = os.environ.pop("ELASTRA_CKPT_FAULT_LATER")
    ckpt = Checkpointer(
        os.path.join(root, "durable"), local_dir=os.path.join(root, f"local-{rank}"), timeout_s=20
    )
    ckpt.save(1, state_for(1)).wait()
    ckpt.save(2, state_for(2)).wait()
    # Step 2 again (an old generation committing late, a new one saving the same step number).
    os.environ["ELASTRA_CKPT_FAULT"] = fault
    ckpt.save(2, state_for(20)).wait()
    raise AssertionError("the re-save must not commit with a rank killed mid-save")


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param("upload@1", id="rank1-killed-mid-resave-before-upload"),
        pytest.param("commit@0", id="rank0-killed-mid-resave-with-new-shards-durable"),
    ],
)
def test_kill_a_rank_mid_resave_leaves_the_committed_step_intact(
    tmp_path: Path, fault: str, monkeypatch
) -> None:
    monkeypatch.setenv("ELASTRA_CKPT_FAULT_LATER", fault)
    with pytest.raises((mp.ProcessExitedException, mp.ProcessRaisedException)):
        mp.spawn(resave_worker, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    durable = str(tmp_path / "durable")
    assert latest(durable) == 2, "the committed step 2 is still committed"
    ckpt = Checkpointer(durable, local_dir=str(tmp_path / "local-0"))
    fresh = {"w": torch.zeros(6, 4), "r": torch.zeros(5, dtype=torch.int64), "step": 0}
    assert ckpt.load(fresh) == 2 and ckpt.last_restore is not None and not ckpt.last_restore.skipped
    expected = state_for(2)
    assert torch.equal(fresh["w"], expected["w"]) and torch.equal(fresh["r"], expected["r"]), (
        "bit-exact, old copy"
    )
    assert fresh["step"] == 2
