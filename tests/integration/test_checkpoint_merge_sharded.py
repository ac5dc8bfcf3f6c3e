"""Merging real sharded checkpoints: FSDP2 + AdamW saved by gloo ranks at world sizes 2 and 3, merged
(locally with two worker processes, and into the moto S3 server), compared with the weighted sum of their
consolidated tensors, and restored at world 2 into FSDP2 with a fresh optimizer.

Tolerance: every merged F32 element equals the float64 weighted sum rounded to float32, to within
one float32 rounding (`rtol` = 2**-23, `atol` = 0)."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch import nn

from elastra.checkpoint import Checkpointer, merge

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
WEIGHTS = (0.3, 0.7)
RTOL = 2.0**-23


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _model(world: int, seed: int) -> tuple[nn.Module, torch.optim.Optimizer]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 13), nn.ReLU(), nn.Linear(13, 7))  # 13 rows: uneven shards
    mesh = init_device_mesh("cpu", (world,))
    for layer in (model[0], model[2], model):
        fully_shard(layer, mesh=mesh)
    return model, torch.optim.AdamW(model.parameters(), lr=0.01)


def _rank(rank: int, job: dict[str, Any]) -> None:
    world, port, root, seed, ref, mode = (job[k] for k in ("world", "port", "root", "seed", "ref", "mode"))
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
        set_model_state_dict,
    )

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        model, optim = _model(world, seed)
        ckpt = Checkpointer(root)
        if mode == "save":
            model(torch.randn(4, 10)).sum().backward()
            optim.step()
            state = {"model": get_model_state_dict(model), "optim": get_optimizer_state_dict(model, optim)}
            ckpt.save(100 + world, state).wait()
        else:  # restore the merged model, then train a step with a fresh optimizer
            state = {"model": get_model_state_dict(model)}
            assert ckpt.load(state) is not None
            set_model_state_dict(model, state["model"])
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if rank == 0:
            save_file({k: v.contiguous() for k, v in full.items()}, ref)
        if mode == "restore":
            model(torch.randn(4, 10)).sum().backward()
            optim.step()
        ckpt.close()
    finally:
        dist.destroy_process_group()


def _spawn(world: int, root: Path, seed: int, ref: Path, mode: str) -> dict[str, torch.Tensor]:
    job = {
        "world": world,
        "port": free_port(),
        "root": str(root),
        "seed": seed,
        "ref": str(ref),
        "mode": mode,
    }
    mp.spawn(_rank, args=(job,), nprocs=world, join=True)
    return load_file(str(ref))


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[str], list[dict[str, torch.Tensor]]]:
    tmp = tmp_path_factory.mktemp("merge")
    roots, refs = [], []
    for world, seed in ((2, 1), (3, 2)):
        refs.append(_spawn(world, tmp / f"w{world}", seed, tmp / f"ref{world}.safetensors", "save"))
        roots.append(str(tmp / f"w{world}"))
    return roots, refs


def expected(refs: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {
        name: (WEIGHTS[0] * refs[0][name].double() + WEIGHTS[1] * refs[1][name].double()).float()
        for name in refs[0]
    }


def _load_plain(uri: str, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {"model": {k: torch.zeros_like(v) for k, v in like.items()}}
    Checkpointer(uri).load(state)
    return state["model"]


def test_fsdp2_world_2_and_3_merge_to_the_weighted_sum_and_restore_at_world_2(
    sources: tuple[list[str], list[dict[str, torch.Tensor]]], tmp_path: Path
) -> None:
    roots, refs = sources
    result = merge(str(tmp_path / "out"), roots, weights=list(WEIGHTS), workers=2, chunk_bytes=64)
    assert result.files == 2 and result.step == 103
    meta = result.manifest.meta["merge"]
    assert [s["step"] for s in meta["sources"]] == [102, 103] and meta["optimizer_state"] == "omitted"
    assert meta["left_out_prefixes"] == ["optim/"]
    want = expected(refs)
    got = _load_plain(str(tmp_path / "out"), want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=RTOL, atol=0)
    restored = _spawn(2, tmp_path / "out", 7, tmp_path / "restored.safetensors", "restore")
    for name in want:
        assert torch.equal(restored[name], got[name]), name


def test_merge_into_s3(
    sources: tuple[list[str], list[dict[str, torch.Tensor]]], s3_server: Any, tmp_path: Path
) -> None:
    roots, refs = sources
    bucket = s3_server.make_bucket("merged")
    result = merge(f"s3://{bucket}/team/merged", roots, weights=list(WEIGHTS), step=5)
    assert result.uri == f"s3://{bucket}/team/merged/step-5"
    keys = sorted(o["Key"] for o in s3_server.client().list_objects_v2(Bucket=bucket)["Contents"])
    assert keys == [f"team/merged/step-5/{f}" for f in ("manifest.json", "rank-00000.safetensors")]
    want = expected(refs)
    got = _load_plain(f"s3://{bucket}/team/merged", want)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=RTOL, atol=0)
