"""Fault injection for crash tests: a documented, test-only hook.

When the environment variable `ELASTRA_CKPT_FAULT` is `PHASE` or `PHASE@RANK`, the process SIGKILLs
itself when a save reaches that phase boundary (on that rank only, with `@RANK`), exactly as a node
loss would. Phases, in order: `stage` (before staging copies), `persist` (before the first tier's shard
is written), `upload` (before copying to the durable tier), `commit` (shards durable, before the
manifest); the memory tier adds `encode` (a parity holder, its group's blocks read, before its parity
block is written). Unset in production: the check is one dictionary lookup per phase.
"""

from __future__ import annotations

import os
import signal

PHASES = ("stage", "persist", "upload", "commit")
ENV = "ELASTRA_CKPT_FAULT"


def crash_point(phase: str, rank: int) -> None:
    """SIGKILL this process if the fault hook names `phase` (and this rank)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, only_rank = spec.partition("@")
    if name == phase and (not only_rank or int(only_rank) == rank):
        os.kill(os.getpid(), signal.SIGKILL)
