"""Reshard on restore with real gloo ranks: FSDP2 + AdamW saved at world 4, restored at 3, 2, 1 and 6;
a 2-D (FSDP x TP) mesh, with FSDP on another dim (`shard_placement_fn`) or on TP's dim (`_StridedShard`);
and ZeRO-style `Flat` state. Every tensor must be bit-exact against the unsharded reference written at
save time (with safetensors, not pickle)."""

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
    world: int, mesh_shape: tuple[int, int] | None, tp_model: bool, strided: bool = False
) -> tuple[nn.Module, torch.optim.Optimizer, Any]:
    """The tiny model, sharded as asked: FSDP2 over `world`, or FSDP x TP on a 2-D mesh, or plain;
    and the mesh (None for plain).

    `tp_model`: hidden 12 and no first bias, so TP splits evenly (FSDP's own splits stay uneven).
    `strided`: FSDP shards dim 0 like TP's ColwiseParallel (no `shard_placement_fn`), so FSDP2 gives
    those parameters `_StridedShard` placements."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    torch.manual_seed(0)
    mesh = None
    hidden = 12 if tp_model else 13
    model = nn.Sequential(nn.Linear(10, hidden, bias=not tp_model), nn.ReLU(), nn.Linear(hidden, 7))
    if mesh_shape is not None:
        mesh = init_device_mesh("cpu", mesh_shape, mesh_dim_names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], {"0": ColwiseParallel(), "2": RowwiseParallel()})
        col_weight = model[0].weight

        def placement(p: nn.Parameter) -> Shard:
            return Shard(1) if p is col_weight else Shard(0)

        fn = None if strided else placement
        for layer in (model[0], model[2]):
            fully_shard(layer, mesh=mesh["dp"], shard_placement_fn=fn)
        fully_shard(model, mesh=mesh["dp"], shard_placement_fn=fn)
    elif world > 1:
        mesh = init_device_mesh("cpu", (world,))
        fully_shard(model[0], mesh=mesh)
        fully_shard(model[2], mesh=mesh)
        fully_shard(model, mesh=mesh)
    optim = torch.optim.AdamW(model.parameters(), lr=0.01, foreach=False)
    return model, optim, mesh


STRIDED_EXTRAS = {"rows": (11, 3), "cols": (5, 9)}
"""Extra tensors of the strided case: on a 2-D mesh, "rows" is [_StridedShard(0, sf=3), Replicate()] and
"cols" is [Shard(0), _StridedShard(1, sf=2)], so a rank's local shard is several strided boxes."""


def strided_extras(mesh: Any, fill: bool) -> dict[str, Any]:
    """The extra tensors, sharded on `mesh` (2-D: strided; 1-D: Shard(0); None: plain tensors). Local
    shards come from torch's own placement splitting, applied mesh dim by mesh dim, not from ours."""
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from torch.distributed.tensor.placement_types import _StridedShard

    out: dict[str, Any] = {}
    for base, (name, shape) in enumerate(STRIDED_EXTRAS.items()):
        full = torch.arange(math.prod(shape), dtype=torch.float64).reshape(shape) * 0.25 + 1000 * base
        full = full if fill else torch.zeros(shape, dtype=torch.float64)
        if mesh is None:
            out[name] = full
            continue
        placements: list[Any] = [Shard(0)]
        if mesh.ndim == 2:
            placements = (
                [_StridedShard(0, split_factor=3), Replicate()]
                if name == "rows"
                else [Shard(0), _StridedShard(1, split_factor=2)]
            )
        local = full
        for mesh_dim, p in enumerate(placements):
            if not isinstance(p, Replicate):
                shards, _ = p._split_tensor(local, mesh.size(mesh_dim), with_padding=False)
                local = shards[mesh.get_local_rank(mesh_dim)]
        out[name] = DTensor.from_local(
            local.contiguous(), mesh, placements, run_check=False, shape=full.shape, stride=full.stride()
        )
        if fill:
            assert torch.equal(out[name].full_tensor(), full), name  # torch agrees with the construction
    return out


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
    strided: bool = False,
) -> tuple[Any, nn.Module, torch.optim.Optimizer]:
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model, optim, mesh = build(world, mesh_shape, tp_model, strided)
    train(model, optim, train_steps, seed)
    msd, osd = get_state_dict(model, optim)
    state = {
        "model": msd,
        "optim": osd,
        "flat": flat_state(world, rank, fill_flat),
        "extra": {"step": 7 if fill_flat else 0},
    }
    if strided:
        state["strided"] = strided_extras(mesh, fill_flat)
    return state, model, optim


def worker(  # noqa: PLR0917
    rank: int,
    world: int,
    port: int,
    action: str,
    root: str,
    mesh_shape: tuple[int, int] | None,
    tp_model: bool,
    strided: bool,
    lazy: bool = False,
) -> None:
    from safetensors.torch import load_file, save_file

    from elastra.checkpoint import Checkpointer, Flat
    from elastra.checkpoint.state import is_tensor_value, tensor_leaves, walk

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        ckpt = Checkpointer(os.path.join(root, "ckpt"), local_dir=os.path.join(root, f"local-{rank}"), keep=2)
        if action == "save":
            state, _model, _optim = make_state(
                world, rank, mesh_shape, tp_model, train_steps=3, seed=1, fill_flat=True, strided=strided
            )
            reference = {
                p: full(v).detach().clone().contiguous()
                for p, _c, _k, v in walk(state)
                if is_tensor_value(v) and not isinstance(v, Flat)
            }
            if strided and mesh_shape is not None:  # the case really holds several boxes per rank
                assert len(tensor_leaves("rows", state["strided"]["rows"]) or []) == 3
            if lazy:  # the copy overlaps another training step; the guard holds its optimizer step
                ckpt.guard(_optim)
                handle = ckpt.save(7, state, staging="lazy")
                train(_model, _optim, steps=1, seed=5)
            else:
                handle = ckpt.save(7, state)
            info = handle.wait()
            if rank == 0:
                assert info is not None and info.world_size == world
                save_file(reference, os.path.join(root, "reference.safetensors"))
        else:
            from torch.distributed.checkpoint.state_dict import set_state_dict

            # Different data and one step, so optimizer state exists and differs from the saved one.
            state, model, optim = make_state(
                world, rank, mesh_shape, tp_model, train_steps=1, seed=99, fill_flat=False, strided=strided
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


def launch(  # noqa: PLR0917
    world: int,
    action: str,
    root: Path,
    mesh_shape: tuple[int, int] | None = None,
    tp_model: bool = False,
    strided: bool = False,
    lazy: bool = False,
) -> None:
    if world == 1:
        worker(0, 1, 0, action, str(root), None, tp_model, strided, lazy)
        return
    mp.spawn(
        worker,
        args=(world, free_port(), action, str(root), mesh_shape, tp_model, strided, lazy),
        nprocs=world,
        join=True,
    )


def test_fsdp2_adamw_and_flat_saved_at_4_restore_bit_exact_at_3_2_1_6(tmp_path: Path) -> None:
    """Saved with lazy staging while the next training step runs (guarded optimizer step)."""
    launch(4, "save", tmp_path, lazy=True)
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


def test_fsdp_tp_on_one_dim_strided_saved_at_2x2_restores_at_2x3_fsdp_3_and_1(tmp_path: Path) -> None:
    """FSDP2 without `shard_placement_fn` shards TP's dim again: `_StridedShard` placements."""
    launch(4, "save", tmp_path, mesh_shape=(2, 2), tp_model=True, strided=True)
    manifest = json.loads((tmp_path / "ckpt" / "step-7" / "manifest.json").read_text())
    shardings = {path: t["sharding"] for path, t in manifest["tensors"].items()}
    assert shardings["model/0.weight"] == "mesh=(2, 2) ['_S(0, 2)', 'S(0)']", shardings
    assert shardings["strided/rows"] == "mesh=(2, 2) ['_S(0, 3)', 'R']", shardings
    fragments = manifest["tensors"]["strided/rows"]["fragments"]
    assert sum(math.prod(f["shape"]) for f in fragments) == math.prod(STRIDED_EXTRAS["rows"])  # written once
    launch(6, "load", tmp_path, mesh_shape=(2, 3), tp_model=True, strided=True)
    assert len(list(tmp_path.glob("checked-6-*.json"))) == 6
    launch(3, "load", tmp_path, tp_model=True, strided=True)
    assert len(list(tmp_path.glob("checked-3-*.json"))) == 3
    launch(1, "load", tmp_path, tp_model=True, strided=True)
    assert json.loads((tmp_path / "checked-1-0.json").read_text())["tensors"] >= 4 * 3 + 2
