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
