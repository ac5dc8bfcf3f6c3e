"""The session starts a job from pretrained weights and resumes it with a fresh optimizer (real
processes, world 1, run by hand as a user would):

1. `ELASTRA_PRETRAINED_URI` names a `save_pretrained` directory; with no checkpoint yet, `restore()`
   fills the model from it, returns step 0, and prints one line saying so; the job trains and saves.
2. A new process hands `restore()` a fresh AdamW as is (no state yet): the session creates its state,
   the checkpoint fills it (moments equal to the saved ones), and the restore line names the step.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from hf_models import BUILD

pytestmark = pytest.mark.timeout(180)

SCRIPT = """
import sys, torch
sys.path.insert(0, {here!r})
from hf_models import BUILD
from safetensors.torch import load_file, save_file
import elastra

session = elastra.init(checkpoint_uri={ck!r}, every_steps=1, backend="gloo")
model = BUILD["gpt2"](seed={seed})
optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
state = {{"model": model, "optim": optim}}
start = session.restore(state)
print("START", start, flush=True)
if start == 0:
    source = load_file({hf!r} + "/model.safetensors")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in source.items())
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    for step in range(2):
        model(x, labels=x).loss.backward()
        optim.step()
        optim.zero_grad()
        session.step(step, state)
    moments = {{str(i): optim.state[p]["exp_avg"] for i, p in enumerate(model.parameters())}}
    save_file(moments, {ref!r})
else:
    saved = load_file({ref!r})
    params = list(model.parameters())
    assert all(torch.equal(optim.state[p]["exp_avg"], saved[str(i)]) for i, p in enumerate(params))
    assert int(optim.state[next(model.parameters())]["step"]) == 2
session.finish()
print("OK", flush=True)
"""


def _run(tmp_path: Path, seed: int, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = SCRIPT.format(here=os.path.dirname(__file__), ck=str(tmp_path / "ck"), seed=seed,
                           hf=str(tmp_path / "hf"), ref=str(tmp_path / "moments.safetensors"))  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", **env}
    env.pop("WORLD_SIZE", None)
    return subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=False
    )


def test_start_from_pretrained_then_resume_with_a_fresh_optimizer(tmp_path: Path) -> None:
    BUILD["gpt2"](seed=0).save_pretrained(tmp_path / "hf")
    first = _run(tmp_path, seed=1, env={"ELASTRA_PRETRAINED_URI": str(tmp_path / "hf")})
    assert first.returncode == 0 and "START 0" in first.stdout and "OK" in first.stdout, first.stderr
    line = next(x for x in first.stderr.splitlines() if "elastra-session INFO rank 0 restored" in x)
    assert f"restored pretrained step 0 from {tmp_path / 'hf'}" in line and "1 tied" in line, line

    second = _run(tmp_path, seed=2, env={"ELASTRA_PRETRAINED_URI": str(tmp_path / "hf")})
    assert second.returncode == 0 and "START 2" in second.stdout and "OK" in second.stdout, second.stderr
    line = next(x for x in second.stderr.splitlines() if "elastra-session INFO rank 0 restored" in x)
    assert "restored checkpoint step 2 from" in line and "durable tier" in line, line
    assert "nothing skipped" in line, line
