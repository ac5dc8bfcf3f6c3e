"""One rank of `benchmarks/memory_tier.py` (a helper, not a benchmark).

`--phase save` (every pod's rank, 4 of them): the snapshot loop (stall, loop overhead) and the same
loop with DCP `async_save`, then one final state saved to all three tiers: a memory snapshot, an
Elastra checkpoint on local disk, one on S3. `--phase restore --tier T` (the 3 survivors): restore that
state resharded to 3 ranks from tier T, timed from a barrier to the slowest rank, checked value for
value. Each prints one JSON line (rank 0 adds the figures of every rank).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _checkpoint_worker import (
    Compute,
    TensorSpec,
    as_dtensor,
    base_values,
    evict_from_page_cache,
    make_saver,
    state_layout,
)
from elastra.checkpoint import Checkpointer
from elastra.checkpoint.memory import MemoryConfig, MemorySnapshotter


def layout(state_bytes: int) -> list[TensorSpec]:
    """The checkpoint benchmark's state at `state_bytes` per rank on 4 ranks, rows divisible by 12
    (so both 4 and 3 ranks hold equal row blocks)."""
    return [
        dataclasses.replace(s, global_rows=s.global_rows // 12 * 12) for s in state_layout(state_bytes, 4)
    ]


def build(specs: list[TensorSpec], mesh: Any, rank: int, world: int, *, empty: bool) -> dict[str, Any]:
    state = {}
    for spec in specs:
        rows = spec.global_rows // world
        local = torch.zeros(rows, 1024) if empty else base_values(spec, rank * rows, rows)
        state[spec.name] = as_dtensor(local, mesh, spec, 0)
    return state


def memory_config(args: argparse.Namespace, pods: list[str]) -> MemoryConfig:
    addrs = json.loads(args.addrs)
    return MemoryConfig(
        dir=str(pathlib.Path(args.mem) / pods[args.rank]), pod=pods[args.rank], addr=addrs[pods[args.rank]],
        peers={p: addrs[p] for p in pods}, parity=1, group_size=4,
    )  # fmt: skip


def gather(value: Any) -> list[Any]:
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def phase_save(args: argparse.Namespace, mesh: Any) -> dict[str, Any]:
    specs = layout(args.state_bytes)
    state = build(specs, mesh, args.rank, 4, empty=False)
    increments = 0

    def mutate() -> None:
        nonlocal increments
        for tensor in state.values():
            tensor.to_local().add_(1.0)
        increments += 1

    snap = MemorySnapshotter(memory_config(args, ["p0", "p1", "p2", "p3"]))
    compute = Compute()
    compute.run()

    def loop(save: Any, settle: Any, rounds: int, first_step: int) -> tuple[list[float], list[float]]:
        stalls, overheads = [], []
        for r in range(rounds):
            dist.barrier()
            start = time.perf_counter()
            compute.run()
            mutate()
            plain = time.perf_counter() - start
            dist.barrier()
            start = time.perf_counter()
            handle = save(first_step + r)
            returned = time.perf_counter()
            compute.run()
            fenced = time.perf_counter()
            settle_fence = getattr(handle, "fence", None)
            if settle_fence:
                settle_fence()
            mutating = time.perf_counter()
            mutate()
            end = time.perf_counter()
            stalls.append((returned - start) + (mutating - fenced))
            overheads.append((end - start) - plain)
            settle(handle)
            dist.barrier()
        return stalls, overheads

    snap_stall, snap_overhead = loop(lambda step: snap.save(step, state), lambda h: h.wait(), args.rounds, 1)
    snapshot_seconds, encode_seconds = snap.snapshot_seconds, snap.encode_seconds
    saver = make_saver("dcp_async_save", pathlib.Path(args.disk) / "dcp", args.rank)

    class Pending:
        def __init__(self, durable: Any) -> None:
            self.durable = durable

        def fence(self) -> None:
            saver.fence()

    dcp_stall, dcp_overhead = loop(
        lambda step: Pending(saver.save(step, state)), lambda h: h.durable(), args.rounds, 1
    )
    saver.finish()
    # The state every restore reads: one more mutation, saved to all three tiers.
    mutate()
    final = 1000
    snap.save(final, state).wait()
    local = Checkpointer(str(pathlib.Path(args.disk) / "elastra"), keep=1)
    local.save(final, state).wait()
    local.close()
    s3 = Checkpointer(args.s3_uri, keep=1)
    s3.save(final, state).wait()
    s3.close()
    held = snap.store.bytes_held()
    snap.close()
    return {
        "snapshot_stall_s": snap_stall, "snapshot_loop_overhead_s": snap_overhead,
        "dcp_async_stall_s": dcp_stall, "dcp_async_loop_overhead_s": dcp_overhead,
        "snapshot_seconds": snapshot_seconds, "encode_seconds": encode_seconds,
        "memory_held_bytes": held, "increments": increments, "final_step": final,
        "state_bytes": sum(t.to_local().nbytes for t in state.values()),
    }  # fmt: skip


def phase_restore(args: argparse.Namespace, mesh: Any) -> dict[str, Any]:
    specs = layout(args.state_bytes)
    state = build(specs, mesh, args.rank, 3, empty=True)
    survivors = ["p0", "p2", "p3"]  # p1's node is gone
    sources: dict[str, int] = {}
    if args.tier == "memory":
        reader: Any = MemorySnapshotter(memory_config(args, survivors))
    elif args.tier == "local":
        reader = Checkpointer(str(pathlib.Path(args.disk) / "elastra"), keep=1)
        if args.rank == 0:
            evict_from_page_cache(pathlib.Path(args.disk) / "elastra")
    else:
        reader = Checkpointer(args.s3_uri, keep=1)
    dist.barrier()
    start = time.perf_counter()
    step = reader.restore(state) if args.tier == "memory" else reader.load(state)
    dist.barrier()
    seconds = time.perf_counter() - start
    if args.tier == "memory":
        sources = dict(reader.tier.bytes_by_source)
    rows = specs[0].global_rows // 3
    exact = all(
        torch.equal(state[s.name].to_local(), base_values(s, args.rank * rows, rows).add_(args.increments))
        for s in specs
    )
    reader.close()
    return {"restore_s": seconds, "step": step, "exact": exact, "sources": sources}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--phase", choices=("save", "restore"), required=True)
    p.add_argument("--tier", choices=("memory", "local", "s3"), default="memory")
    p.add_argument("--state-bytes", type=int, required=True)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--mem", required=True)
    p.add_argument("--disk", required=True)
    p.add_argument("--s3-uri", required=True)
    p.add_argument("--addrs", required=True)
    p.add_argument("--increments", type=int, default=0)
    args = p.parse_args()
    args.rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", rank=args.rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    result = phase_save(args, mesh) if args.phase == "save" else phase_restore(args, mesh)
    everyone = gather(result)
    if args.rank == 0:
        print("RESULT " + json.dumps(everyone), flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
