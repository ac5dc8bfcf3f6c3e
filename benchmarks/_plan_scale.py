"""Checkpoint planning at 1k / 4k / 16k simulated ranks: ours (`elastra.checkpoint.plan.plan_save`, the
pure global save plan: deduplicate replicated pieces, balance them over holders, lay out every shard file)
against DCP's `DefaultSavePlanner.create_global_plan` on the same synthetic per-rank plans.

Each rank holds a dim-0 shard of every one of SHARDED tensors (FSDP-style) and a full copy of each of
REPLICATED small tensors (norms, biases): the replicated ones are what both planners deduplicate, and
what pytorch#163548 reports as quadratic in DCP. Per-rank plans are built before the clock starts; only
the global planning call is timed, as CPU seconds of this process (`time.process_time`: the box is
shared, and wall time would mostly measure the other processes), after a full garbage collection,
best of three."""

from __future__ import annotations

import gc
import time
from typing import Any

from elastra.checkpoint.geometry import Box
from elastra.checkpoint.plan import Piece, plan_save

SHARDED = 6
"""Sharded tensors per rank."""
REPLICATED = 4
"""Replicated tensors (every rank holds all of each)."""
ROWS_PER_RANK = 8
COLS = 1024
RANKS = (1024, 4096, 16384)


def our_inputs(world: int) -> list[list[Piece]]:
    """Every rank's pieces."""
    out = []
    for rank in range(world):
        pieces = [
            Piece(f"layers.{t}.weight", "F32", (world * ROWS_PER_RANK, COLS), "boxes", "Shard(0)",
                  Box((rank * ROWS_PER_RANK, 0), (ROWS_PER_RANK, COLS)))
            for t in range(SHARDED)
        ]  # fmt: skip
        pieces += [
            Piece(f"norms.{t}.weight", "F32", (COLS,), "boxes", "Replicate()", Box((0,), (COLS,)))
            for t in range(REPLICATED)
        ]
        out.append(pieces)
    return out


def dcp_inputs(world: int) -> list[Any]:
    """The same pieces as DCP per-rank SavePlans (WriteItems with chunk metadata)."""
    import torch
    from torch.distributed.checkpoint.metadata import ChunkStorageMetadata, MetadataIndex, TensorProperties
    from torch.distributed.checkpoint.planner import SavePlan, TensorWriteData, WriteItem, WriteItemType

    props = TensorProperties(dtype=torch.float32)
    plans = []
    for rank in range(world):
        items = []
        for t in range(SHARDED):
            offsets = torch.Size((rank * ROWS_PER_RANK, 0))
            chunk = ChunkStorageMetadata(offsets=offsets, sizes=torch.Size((ROWS_PER_RANK, COLS)))
            items.append(WriteItem(
                index=MetadataIndex(f"layers.{t}.weight", offsets),
                type=WriteItemType.SHARD,
                tensor_data=TensorWriteData(chunk=chunk, properties=props,
                                            size=torch.Size((world * ROWS_PER_RANK, COLS))),
            ))  # fmt: skip
        for t in range(REPLICATED):
            offsets = torch.Size((0,))
            chunk = ChunkStorageMetadata(offsets=offsets, sizes=torch.Size((COLS,)))
            items.append(WriteItem(
                index=MetadataIndex(f"norms.{t}.weight", offsets),
                type=WriteItemType.TENSOR,
                tensor_data=TensorWriteData(chunk=chunk, properties=props, size=torch.Size((COLS,))),
            ))  # fmt: skip
        plans.append(SavePlan(items, planner_data={}))  # what create_local_plan leaves: no flattening
    return plans


def time_ours(world: int, repeat: int) -> float:
    inputs = our_inputs(world)
    best = float("inf")
    for _ in range(repeat):
        gc.collect()
        started = time.process_time()
        plan = plan_save(inputs)
        plan.writes_of(0)  # the one file this rank lays out
        best = min(best, time.process_time() - started)
    assert len(plan.writes) == world
    assert sum(len(w.pieces) for w in plan.writes) == world * SHARDED + REPLICATED  # each replica once
    return best


def time_dcp(world: int, repeat: int) -> float:
    from torch.distributed.checkpoint.default_planner import DefaultSavePlanner

    best = float("inf")
    for _ in range(repeat):
        plans = dcp_inputs(world)
        planner = DefaultSavePlanner()
        gc.collect()
        started = time.process_time()
        global_plans, metadata = planner.create_global_plan(plans)
        best = min(best, time.process_time() - started)
    assert len(global_plans) == world
    assert sum(len(p.items) for p in global_plans) == world * SHARDED + REPLICATED
    assert len(metadata.state_dict_metadata) == SHARDED + REPLICATED
    return best


def planning_figures() -> dict[str, float]:
    """`plan_<n>k_s` and `dcp_plan_<n>k_s` for each size."""
    out: dict[str, float] = {}
    for world in RANKS:
        repeat = 3
        label = f"{world // 1024}k"
        ours = time_ours(world, repeat)
        dcp = time_dcp(world, repeat)
        out[f"plan_{label}_s"] = round(ours, 4)
        out[f"dcp_plan_{label}_s"] = round(dcp, 4)
        print(
            f"[operator_scale] planning {world} ranks: ours {ours:.3f} s, DCP {dcp:.3f} s "
            f"({dcp / ours:.1f}x)",
            flush=True,
        )
    return out
