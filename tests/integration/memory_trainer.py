"""A trainer for the memory tier on localcluster, run by the real pod agent: the `Flat` state of
`memory_worker` (a known function of the steps completed, so every restore is checked bit-exact at any
world size), a memory snapshot every step and the job's disk checkpoints.

argv: STEPS OUT_DIR STEP_SLEEP. Per generation and global rank it writes, into OUT_DIR:
- `g<generation>-r<rank>.json` after its restore: its pid and pod, the step and tier restored, whether
  the state is bit-exact, and where the memory tier's bytes came from (own pod, a peer, rebuilt);
- `g<generation>-r<rank>.step`: the steps completed, after each step's memory snapshot is committed.

It waits for each step's snapshot before the next step (no snapshot is skipped as busy), so a failure
loses at most the step in flight: the tests then check that a restore takes the newest snapshot.

Fault hook: while `OUT_DIR/encode-fault-g<generation>` exists, global rank 3 arms
`ELASTRA_CKPT_FAULT=encode@3` for its next snapshot (and says which in `armed-g<generation>.json`): the
parity encoding of that snapshot SIGKILLs it, leaving a torn snapshot.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
from memory_worker import build, expected

import elastra.session as elastra_session
from elastra.checkpoint.state import Flat

FAULT_RANK = 3


def write(path: Path, text: str) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(text)
    partial.replace(path)


def main() -> int:
    steps, out, step_sleep = int(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    session = elastra_session.init(backend="gloo")
    rank, world, generation = session.rank, session.world_size, session.config.generation
    assert session.memory is not None, "the pod has a memory tier"
    state = build(rank, world)
    start = session.restore(state)
    w, m = state["w"], state["m"]
    assert isinstance(w, Flat) and isinstance(m, Flat)
    ew, em = expected(start)
    exact = bool(
        torch.equal(w.local, ew.reshape(-1)[w.offset : w.offset + w.numel])
        and torch.equal(m.local, em[m.offset : m.offset + m.numel])
        and state["meta"] == {"completed": start}
    )
    if not start:  # a fresh start: the initial values (build() leaves zeros)
        w.local.copy_(ew.reshape(-1)[w.offset : w.offset + w.numel])
        m.local.copy_(em[m.offset : m.offset + m.numel])
    report = {
        "generation": generation, "rank": rank, "world": world, "pod": os.environ.get("POD_NAME"),
        "pid": os.getpid(), "restored": start, "tier": session.restore_tier, "exact": exact,
        "sources": dict(session.memory.tier.bytes_by_source),
    }  # fmt: skip
    write(out / f"g{generation}-r{rank}.json", json.dumps(report))
    fault = out / f"encode-fault-g{generation}"
    for step in range(start, steps):
        started = time.monotonic()
        w.local.add_(1.0)
        m.local.sub_(1.0)
        state["meta"] = {"completed": step + 1}
        if rank == FAULT_RANK and "ELASTRA_CKPT_FAULT" not in os.environ and fault.exists():
            write(out / f"armed-g{generation}.json", json.dumps({"step": step + 1}))
            os.environ["ELASTRA_CKPT_FAULT"] = f"encode@{FAULT_RANK}"
        time.sleep(max(0.0, step_sleep - (time.monotonic() - started)))
        session.step(step, state)
        session.memory.wait_quietly()
        write(out / f"g{generation}-r{rank}.step", str(step + 1))
    session.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
