"""Reshard on restore with real gloo ranks: FSDP2 + AdamW saved at world 4, restored at 3, 2, 1 and 6;
a 2-D (FSDP x TP) mesh; and ZeRO-style `Flat` state. Every tensor must be bit-exact against the
unsharded reference written at save time (with safetensors, not pickle)."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

pytestmark = pytest.mark.timeout(240)

FLAT_SHAPE = (5, 9)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build(
    world: int, mesh_shape: tuple[int, int] | None, tp_model: bool
) -> tuple[nn.Module, torch.optim.Optimizer]:
    """The tiny model, sharded as asked: FSDP2 over `world`, or FSDP x TP on a 2-D mesh, or plain.

    `tp_model`: hidden 12 and no first bias, so TP splits evenly (FSDP's own splits stay uneven)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(0)
    hidden = 12 if tp_model else 13
    model = nn.Sequential(nn.Linear(10, hidden, bias=not tp_model), nn.ReLU(), nn.Linear(hidden, 7))
    if mesh_shape is not None:
        mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
        col_weight = model[0].weight

        def placement(p: nn.Parameter) -> Shard:
            return Shard(1) if p is col_weight else Shard(0)

        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh["dp"], shard_placement_fn=placement)
        fully_shard(model, mesh=mesh["dp"], shard_placement_fn=placement)
    elif world > 1:
        mesh = init_device_mesh("cpu", (world,))
        fully_shard(model[0], mesh=mesh)
        fully_shard(model[2], mesh=mesh)
        fully_shard(model, mesh=mesh)
    optim = torch.optim.AdamW(model.parameters(), lr=0.01, foreach=False)
    return model, optim


def train(model: nn.Module, optim: torch.optim.Optimizer, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 10, generator=gen)
        model(x).pow(2).mean().backward()
        optim.step()
        optim.zero_grad()


def flat_state(world: int, rank: int, fill: bool) -> Any:
    from elastra.checkpoint import Flat
    from elastra.checkpoint.geometry import chunk_bounds

    total = math.prod(FLAT_SHAPE)
    start, end = chunk_bounds(total, world, rank)
    local = (
        torch.arange(start, end, dtype=torch.float64) * 1.5 + 0.25
        if fill
        else torch.zeros(end - start, dtype=torch.float64)
    )
    return Flat(local, start, end - start, FLAT_SHAPE)


def full(value: Any) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


def make_state(  # noqa: PLR0917
    world: int,
    rank: int,
    mesh_shape: tuple[int, int] | None,
    tp_model: bool,
    train_steps: int,
    seed: int,
    fill_flat: bool,
) -> tuple[Any, nn.Module, torch.optim.Optimizer]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim = build(world, mesh_shape, tp_model)
    train(model, optim, train_steps, seed)
    msd, osd = get_state_dict(model, optim)
    state = {
        "model": msd,
        "optim": osd,
        "flat": flat_state(world, rank, fill_flat),
        "extra": {"step": 7 if fill_flat else 0},
    }
    return state, model, optim


def worker(  # noqa: PLR0917
    rank: int,
    world: int,
    port: int,
    action: str,
    root: str,
    mesh_shape: tuple[int, int] | None,
    tp_model: bool,
) -> None:
    from safetensors.torch import load_file, save_file

    from elastra.checkpoint import Checkpointer
    from elastra.checkpoint.state import tensor_leaf, walk

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ckpt = Checkpointer(os.path.join(root, "ckpt"), local_dir=os.path.join(root, f"local-{rank}"), keep=2)
        if action == "save":
            state, _model, _optim = make_state(
                world, rank, mesh_shape, tp_model, train_steps=3, seed=1, fill_flat=True
            )
            reference = {
                p: full(v).detach().clone().contiguous()
                for p, _c, _k, v in walk(state)
                if tensor_leaf(p, v) is not None and not hasattr(v, "offset")
            }
            handle = ckpt.save(7, state)
            info = handle.wait()
            if rank == 0:
                assert info is not None and info.world_size == world
                save_file(reference, os.path.join(root, "reference.safetensors"))
        else:
            from torch.distributed.checkpoint.state_dict import set_state_dict

            # Different data and one step, so optimizer state exists and differs from the saved one.
            state, model, optim = make_state(
                world, rank, mesh_shape, tp_model, train_steps=1, seed=99, fill_flat=False
            )
            assert ckpt.load(state) == 7
            set_state_dict(model, optim, model_state_dict=state["model"], optim_state_dict=state["optim"])
            reference = load_file(os.path.join(root, "reference.safetensors"))
            checked = 0
            for path, _c, _k, value in walk(state):
                if path in reference:
                    got = full(value)
                    assert got.dtype == reference[path].dtype and torch.equal(got, reference[path]), path
                    checked += 1
            assert checked == len(reference), (checked, sorted(reference))
            expected = flat_state(world, rank, fill=True).local
            assert torch.equal(state["flat"].local, expected)
            assert state["extra"]["step"] == 7
            with open(os.path.join(root, f"checked-{world}-{rank}.json"), "w") as f:
                json.dump({"tensors": checked}, f)
    finally:
        if world > 1:
            dist.destroy_process_group()


def launch(
    world: int, action: str, root: Path, mesh_shape: tuple[int, int] | None = None, tp_model: bool = False
) -> None:
    if world == 1:
        worker(0, 1, 0, action, str(root), None, tp_model)
        return
    mp.spawn(
        worker, args=(world, free_port(), action, str(root), mesh_shape, tp_model), nprocs=world, join=True
    )


def test_fsdp2_adamw_and_flat_saved_at_4_restore_bit_exact_at_3_2_1_6(tmp_path: Path) -> None:
    launch(4, "save", tmp_path)
    for world in (3, 2, 6):
        launch(world, "load", tmp_path)
        assert len(list(tmp_path.glob(f"checked-{world}-*.json"))) == world
    launch(1, "load", tmp_path)
    checked = json.loads((tmp_path / "checked-1-0.json").read_text())["tensors"]
    assert checked >= 4 * 3  # 4 parameters, each with a value, exp_avg and exp_avg_sq


def test_2d_fsdp_tp_saved_at_2x2_restores_at_2x3_and_as_plain_fsdp_at_3(tmp_path: Path) -> None:
    launch(4, "save", tmp_path, mesh_shape=(2, 2), tp_model=True)
    manifest = json.loads((tmp_path / "ckpt" / "step-7" / "manifest.json").read_text())
    shardings = {t["sharding"] for t in manifest["tensors"].values()}
    assert "mesh=(2, 2) ['S(1)', 'S(0)']" in shardings, shardings
    launch(6, "load", tmp_path, mesh_shape=(2, 3), tp_model=True)
    assert len(list(tmp_path.glob("checked-6-*.json"))) == 6
    launch(3, "load", tmp_path, tp_model=True)
    assert len(list(tmp_path.glob("checked-3-*.json"))) == 3
