"""A job with a memory tier but nothing to restore yet starts fresh, as one without it does: the
memory tier's restore attempt creates the optimizer state (so a snapshot would have tensors to fill);
when there is no snapshot, that state is dropped again, so AdamW's first real step is step 1 with zero
moments, not step 2 after a dummy step. Real process, world 1, an empty memory store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(120)

SCRIPT = """
import torch
import elastra

session = elastra.init(backend="gloo")
assert session.memory is not None, "the memory tier is configured"
model = torch.nn.Linear(4, 3)
optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
start = session.restore({"model": model, "optim": optim})
assert start == 0, start
assert not optim.state, "a fresh start keeps a fresh optimizer: " + repr(dict(optim.state))
session.finish()
print("OK", flush=True)
"""


def test_fresh_start_with_a_memory_tier_keeps_a_fresh_optimizer(tmp_path: Path) -> None:
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "POD_NAME": "p0",
        "ELASTRA_MEMORY_DIR": str(tmp_path / "mem"), "ELASTRA_MEMORY_PEERS": "", "ELASTRA_MEMORY_ADDR": "",
    }  # fmt: skip
    for name in ("ELASTRA_CHECKPOINT_URI", "ELASTRA_PRETRAINED_URI", "ELASTRA_RESTORE_STEP", "RANK"):
        env.pop(name, None)
    argv = [sys.executable, "-c", SCRIPT]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=100, check=False)
    assert done.returncode == 0 and "OK" in done.stdout, done.stderr[-3000:]


SAVE_THEN_RESTORE = """
import sys
import torch
import elastra
from elastra.checkpoint import CheckpointError

session = elastra.init(backend="gloo")
torch.manual_seed(int(sys.argv[1]))
model = torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.Linear(64, 64))
state = {"model": model}
try:
    start = session.restore(state)
except CheckpointError as exc:
    print("REFUSED", exc, flush=True)
    raise SystemExit(3)
if sys.argv[2] == "save":
    session.step(start + 1, state)
session.finish()
print("START", start, flush=True)
"""


def test_a_snapshot_failing_mid_read_with_no_checkpoint_refuses_a_fresh_start(tmp_path: Path) -> None:
    """The memory restore reads into the tensors in place: one that fails mid-read (a corrupt shard)
    and has no disk checkpoint behind it must not start fresh on the half-overwritten weights. It
    raises, the snapshots are dropped, and the next worker starts clean."""
    mem = tmp_path / "mem"
    env = {
        **os.environ, "OMP_NUM_THREADS": "1", "POD_NAME": "p0",
        "ELASTRA_MEMORY_DIR": str(mem), "ELASTRA_MEMORY_PEERS": "", "ELASTRA_MEMORY_ADDR": "",
    }  # fmt: skip
    for name in ("ELASTRA_CHECKPOINT_URI", "ELASTRA_PRETRAINED_URI", "ELASTRA_RESTORE_STEP", "RANK"):
        env.pop(name, None)

    def run(seed: int, what: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-c", SAVE_THEN_RESTORE, str(seed), what]
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=100, check=False)

    saved = run(1, "save")
    assert saved.returncode == 0 and "START 0" in saved.stdout, saved.stderr[-3000:]
    (shard,) = [p for p in mem.glob("step-*/*") if p.name != "manifest.json"]
    data = bytearray(shard.read_bytes())
    data[-8:] = bytes(255 - b for b in data[-8:])  # the last tensor's last bytes: its checksum fails
    shard.write_bytes(bytes(data))
    refused = run(2, "restore")
    assert refused.returncode == 3 and "refusing to start fresh" in refused.stdout, refused.stderr[-3000:]
    assert not list(mem.glob("step-*/manifest.json")), "the failed snapshot was dropped"
    again = run(2, "restore")
    assert again.returncode == 0 and "START 0" in again.stdout, again.stderr[-3000:]
