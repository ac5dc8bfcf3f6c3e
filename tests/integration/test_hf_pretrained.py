"""Hugging Face in and out with real gloo ranks.

- `save_pretrained` (GPT-2 sharded with an index, tied embeddings; Llama in one file, GQA) ->
  `load_pretrained` at world 3 under FSDP2 -> the gathered weights equal the files bit for bit, and
  each rank read only its own slices (bytes read per rank well under the model's size).
- Those ranks then train, save an Elastra checkpoint, and `elastra ckpt export --hf` turns it into a
  directory `from_pretrained` loads equal to the trained model in weights and logits, bit for bit.
- Hostile or mismatched input fails on every rank together, with no hang.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(__file__))
from hf_models import BUILD, blocks

pytestmark = pytest.mark.timeout(300)
WORLD = 3


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def sharded(kind: str, seed: int) -> tuple[Any, Any]:
    from torch.distributed.fsdp import fully_shard

    model = BUILD[kind](seed)
    for block in blocks(model):
        fully_shard(block)
    fully_shard(model)
    return model, torch.optim.AdamW(model.parameters(), lr=1e-2)


def worker(rank: int, port: int, root: str) -> None:
    from safetensors.torch import load_file, save_file
    from torch.distributed.checkpoint.state_dict import get_state_dict

    from elastra.checkpoint import Checkpointer, CheckpointError
    from elastra.checkpoint.pretrained import load_pretrained
    from elastra.checkpoint.state import split_state

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)
    try:
        for kind in ("gpt2", "llama"):
            model, optim = sharded(kind, seed=1)  # other weights than the files hold
            msd, osd = get_state_dict(model, optim)
            state = {"model": msd, "optim": osd, "step": 5}
            report = load_pretrained(state, os.path.join(root, kind))
            files = {}
            for name in sorted(os.listdir(os.path.join(root, kind))):
                if name.endswith(".safetensors"):
                    files.update(load_file(os.path.join(root, kind, name)))
            for name, value in model.state_dict().items():
                tied = "transformer.wte.weight" if name == "lm_head.weight" else name
                source = files.get(name, files.get(tied))
                assert source is not None, name
                assert torch.equal(value.full_tensor(), source), (kind, name)
            assert state["step"] == 5 and report.step == 0  # only the weights are touched
            assert not report.missing and not report.unexpected
            if kind == "gpt2":
                assert report.tied == {"model/lm_head.weight": "model/transformer.wte.weight"}
            total = sum(t.numel() * t.element_size() for t in files.values())
            mine = sum(leaf.local.numel() * leaf.local.element_size() for leaf in split_state(msd)[0])
            assert report.bytes_read <= mine * 1.05 and mine < total * 0.6, (report.bytes_read, mine, total)

        # A state tensor the model lacks is refused on every rank unless allowed.
        model, optim = sharded("gpt2", seed=1)
        msd, _ = get_state_dict(model, optim)
        msd["extra.scale"] = torch.ones(3)
        try:
            load_pretrained({"model": msd}, os.path.join(root, "gpt2"))
            raise AssertionError("a missing tensor must be refused")
        except CheckpointError as exc:
            assert "model/extra.scale" in str(exc) and "allow_missing" in str(exc), exc
        report = load_pretrained({"model": msd}, os.path.join(root, "gpt2"), allow_missing={"extra.scale"})
        assert report.missing == ("model/extra.scale",)
        # A hostile file on one rank only (its own copy): all ranks fail together, none hangs.
        mine_dir = os.path.join(root, f"gpt2-rank{rank}")
        if rank == 1:
            with open(os.path.join(mine_dir, "model-00001-of-00002.safetensors"), "r+b") as f:
                f.write((10**12).to_bytes(8, "little"))
        try:
            load_pretrained({"model": msd}, mine_dir, allow_missing=True)
            raise AssertionError("a corrupt header on rank 1 must fail every rank")
        except CheckpointError as exc:
            assert "rank 1" in str(exc) and "header length" in str(exc), exc

        # Fine-tune from the pretrained GPT-2, checkpoint, and keep the trained weights as reference.
        model, optim = sharded("gpt2", seed=1)
        msd, osd = get_state_dict(model, optim)
        load_pretrained({"model": msd}, os.path.join(root, "gpt2"))
        gen = torch.Generator().manual_seed(7)
        for _ in range(2):
            x = torch.randint(0, 64, (4, 16), generator=gen)
            model(x, labels=x).loss.backward()
            optim.step()
            optim.zero_grad()
        msd, osd = get_state_dict(model, optim)
        ckpt = Checkpointer(os.path.join(root, "ckpt"))
        ckpt.save(2, {"model": msd, "optim": osd}).wait()
        ckpt.close()
        trained = {name: value.full_tensor().contiguous() for name, value in model.state_dict().items()}
        if rank == 0:
            trained.pop("lm_head.weight")  # tied: stored once, as transformers does
            save_file(trained, os.path.join(root, "trained.safetensors"))
    finally:
        dist.destroy_process_group()


def test_pretrained_at_world_3_then_export_loads_bit_exact(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    reference = {"gpt2": BUILD["gpt2"](seed=0), "llama": BUILD["llama"](seed=0)}
    reference["gpt2"].save_pretrained(tmp_path / "gpt2", max_shard_size="20KB")  # sharded + index
    reference["llama"].save_pretrained(tmp_path / "llama")
    assert (tmp_path / "gpt2" / "model.safetensors.index.json").exists()
    assert (tmp_path / "llama" / "model.safetensors").exists()
    for rank in range(WORLD):
        shutil.copytree(tmp_path / "gpt2", tmp_path / f"gpt2-rank{rank}")
    mp.spawn(worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True)

    out = tmp_path / "exported"
    done = subprocess.run(
        [sys.executable, "-m", "elastra.cli", "ckpt", "export", str(tmp_path / "ckpt"), "--hf", str(out),
         "--config", str(tmp_path / "gpt2" / "config.json"), "--max-shard-size", "24KB"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "lm_head.weight not written (tied to transformer.wte.weight)" in done.stdout
    assert (out / "model.safetensors.index.json").exists() and (out / "config.json").exists()

    from transformers import GPT2LMHeadModel

    exported = GPT2LMHeadModel.from_pretrained(out).eval()
    trained = load_file(tmp_path / "trained.safetensors")
    expected = BUILD["gpt2"](seed=3).eval()
    assert expected.load_state_dict(trained, strict=False).missing_keys == ["lm_head.weight"]
    for name, value in expected.state_dict().items():
        assert torch.equal(exported.state_dict()[name], value), name
    x = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(exported(x).logits, expected(x).logits)
        assert not torch.equal(exported(x).logits, reference["gpt2"].eval()(x).logits)  # it did train
