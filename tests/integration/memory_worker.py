"""A gloo worker for the memory tier tests: ZeRO-style `Flat` state whose value is a known function of
the steps completed, so any restore can be checked bit-exact at any world size.

argv: STEPS HOLD OUT_DIR [ENCODE_FAULT_STEP]. Restores (memory tier first), writes
`OUT_DIR/restored-<rank>.json` (the step, tier, bit-exactness, where the bytes came from), trains to
STEPS taking a snapshot per step; after step HOLD it waits for its saves to commit, writes
`OUT_DIR/held-<rank>` and sleeps (the test then kills what it wants). With ENCODE_FAULT_STEP, global
rank 3 SIGKILLs itself while encoding the parity of that step's snapshot.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

import elastra.session as elastra_session
from elastra.checkpoint.state import Flat

SHAPE = (2048, 129)
NUMEL = SHAPE[0] * SHAPE[1]


def expected(completed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global tensors after `completed` steps (float32 weights, float64 moments), added up one
    step at a time as training does (float sums are not associative)."""
    w = torch.arange(NUMEL, dtype=torch.float32).reshape(SHAPE) * 1e-3
    m = (w.double() * 0.5).reshape(-1)[: NUMEL // 3].clone()
    for _ in range(completed):
        w.add_(1.0)
        m.sub_(1.0)
    return w, m


def build(rank: int, world: int) -> dict[str, object]:
    lo, hi = rank * NUMEL // world, (rank + 1) * NUMEL // world
    n2 = NUMEL // 3
    lo2, hi2 = rank * n2 // world, (rank + 1) * n2 // world
    return {
        "w": Flat(torch.zeros(hi - lo, dtype=torch.float32), lo, hi - lo, SHAPE),
        "m": Flat(torch.zeros(hi2 - lo2, dtype=torch.float64), lo2, hi2 - lo2, (n2,)),
        "meta": {"completed": 0},
    }


def main() -> int:
    steps, hold, out = int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])
    fault_step = int(sys.argv[4]) if len(sys.argv) > 4 else None
    session = elastra_session.init(backend="gloo")
    rank, world = session.rank, session.world_size
    state = build(rank, world)
    start = session.restore(state)
    w, m = state["w"], state["m"]
    assert isinstance(w, Flat) and isinstance(m, Flat)
    exact = True
    if start:
        ew, em = expected(start)
        exact = bool(
            torch.equal(w.local, ew.reshape(-1)[w.offset : w.offset + w.numel])
            and torch.equal(m.local, em[m.offset : m.offset + m.numel])
            and state["meta"] == {"completed": start}
        )
    else:
        ew, em = expected(0)
        w.local.copy_(ew.reshape(-1)[w.offset : w.offset + w.numel])
        m.local.copy_(em[m.offset : m.offset + m.numel])
    sources = dict(session.memory.tier.bytes_by_source) if session.memory is not None else {}
    report = {"rank": rank, "world": world, "restored": start, "exact": exact, "sources": sources,
              "tier": session.restore_tier}  # fmt: skip
    (out / f"restored-{rank}.json").write_text(json.dumps(report))
    for step in range(start, steps):
        w.local.add_(1.0)
        m.local.sub_(1.0)
        state["meta"] = {"completed": step + 1}
        if step + 1 in (hold, fault_step) and session.memory is not None:
            session.memory.wait_quietly()  # so that this step's snapshot is not skipped as busy
        if fault_step is not None and step + 1 == fault_step:  # after the wait: this snapshot only
            os.environ["ELASTRA_CKPT_FAULT"] = "encode@3"
        session.step(step, state)
        if step + 1 == hold:
            if session.memory is not None:
                session.memory.wait()
            if session.checkpointer is not None:
                session.checkpointer.wait()
            (out / f"held-{rank}").write_text("")
            while True:
                time.sleep(60)
    session.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
