"""Lazy staging through the session, with real gloo ranks: the optimizer step that follows
`session.step` at once must not change what the checkpoint stores.

Each rank keeps a copy of every checkpointed tensor as it was when `session.step` saved it, then
mutates the state immediately (optimizer steps, an in-place update after `session.fence()`), and at
the end loads every committed step and compares it with that copy, bit for bit.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

import pytest

WORLD = 2
STEPS = 4

SCRIPT = r'''
import json, sys
import torch
import elastra

mode, uri, out = sys.argv[1], sys.argv[2], sys.argv[3]
session = elastra.init(checkpoint_uri=uri, every_steps=1, keep=8, backend="gloo")
torch.manual_seed(0)
model = torch.nn.Linear(1024, 2048)  # 8 MiB of weights and 8 MiB of momentum: a copy that takes a while
extra = torch.nn.Parameter(torch.zeros(1 << 21))  # stepped by a second optimizer
optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
second = torch.optim.SGD([extra], lr=0.5)
if mode in ("guarded", "second-unguarded", "fence"):
    session.guard(optimizer)
if mode in ("guarded", "fence"):
    session.guard(second)
state = {"model": model, "optim": optimizer, "extra": {"weights": extra}}
for p in [*model.parameters(), extra]:
    p.grad = torch.ones_like(p)


def tensors(x, prefix=""):
    """Every tensor of a (materialized) state, by path."""
    if isinstance(x, dict):
        items = x.items()
    elif isinstance(x, list):
        items = enumerate(x)
    elif isinstance(x, torch.Tensor):
        return {prefix: x}
    else:
        return {}
    found = {}
    for k, v in items:
        found.update(tensors(v, f"{prefix}/{k}"))
    return found


def materialized():
    return {"model": model.state_dict(), "optim": optimizer.state_dict(), "extra": {"weights": extra}}


def blank(x):
    if isinstance(x, dict):
        return {k: blank(v) for k, v in x.items()}
    if isinstance(x, list):
        return [blank(v) for v in x]
    return torch.full_like(x, float("nan")) if isinstance(x, torch.Tensor) else x


expected = {}
for step in range(STEPS):
    for p in [*model.parameters(), extra]:
        p.grad.add_(1.0)
    second.step()  # first: in mode second-unguarded only the global hook fences it
    optimizer.step()
    if mode == "fence":
        session.fence()
        with torch.no_grad():
            model.bias.mul_(0.5)  # in place, outside any optimizer: the script's own mutation
    expected[step + 1] = {k: v.clone() for k, v in tensors(materialized()).items()}
    session.step(step, state)  # saves `step + 1` (every step); the next optimizer step follows at once
session.fence()
session.checkpointer.wait()
mismatches, checked = [], []
for saved in sorted(expected):
    target = blank(materialized())
    session.checkpointer.load(target, step=saved)
    got = tensors(target)
    assert got.keys() == expected[saved].keys(), (sorted(got), sorted(expected[saved]))
    checked.append(saved)
    mismatches += [f"step {saved} {k}" for k, v in got.items() if not torch.equal(v, expected[saved][k])]
staging = session.staging
session.finish()
with open(out, "w") as fh:
    json.dump({"staging": staging, "checked": checked, "mismatches": mismatches}, fh)
'''.replace("STEPS", str(STEPS))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(mode: str, tmp: pathlib.Path) -> list[dict[str, object]]:
    script = tmp / "lazy_train.py"
    script.write_text(SCRIPT)
    port = _free_port()
    procs = []
    for rank in range(WORLD):
        env = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "ELASTRA_COLLECTIVE_TIMEOUT_SECONDS": "30",
        }
        log = open(tmp / f"rank{rank}.log", "wb")  # noqa: SIM115 - closed with the process
        argv = [sys.executable, str(script), mode, str(tmp / "ck"), str(tmp / f"result{rank}.json")]
        procs.append(subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 90
    try:
        codes = [p.wait(timeout=max(0.1, deadline - time.monotonic())) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp.glob("rank*.log")))
    assert codes == [0] * WORLD, logs
    return [json.loads((tmp / f"result{rank}.json").read_text()) for rank in range(WORLD)]


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("mode", "staging"),
    [
        pytest.param("guarded", "lazy", id="guarded-optimizers-lazy-saves-are-not-torn"),
        pytest.param("second-unguarded", "lazy", id="an-unguarded-second-optimizer-is-fenced-anyway"),
        pytest.param("fence", "lazy", id="in-place-update-after-fence-is-not-stored"),
        pytest.param("unguarded", "eager", id="no-guard-saves-eagerly"),
    ],
)
def test_optimizer_step_right_after_a_save_does_not_change_it(
    mode: str, staging: str, tmp_path: pathlib.Path
) -> None:
    results = _run(mode, tmp_path)
    for rank, result in enumerate(results):
        assert result["staging"] == staging, f"rank {rank}"
        assert result["checked"] == list(range(1, STEPS + 1)), f"rank {rank}"
        assert result["mismatches"] == [], f"rank {rank}: the stored state differs from the saved one"
    if mode == "second-unguarded":
        assert "is not guarded" in (tmp_path / "rank0.log").read_text() + (tmp_path / "rank1.log").read_text()
