"""Fine-tune a Hugging Face causal LM elastically: the job starts from pretrained weights
(`spec.checkpoint.restoreFrom`: a directory or `s3://` prefix written by `save_pretrained`), shards the
model with FSDP2, and checkpoints with Elastra; a rescale restores Elastra's checkpoint instead.

    python -m elastra.agent -- python examples/hf_finetune/train.py --steps 60        (under the operator)
    python examples/hf_finetune/train.py --pretrained /tmp/elastra-hf/gpt2 --checkpoint-uri /tmp/ck
                                                                                       (by hand, world 1)

The architecture comes from `config.json` next to the weights (`--config`, default
`<pretrained>/config.json`); the weights come from Elastra, each rank reading only its own shards.
Tokens are bytes (vocabulary 256), the data the sonnets of examples/gpt_tiny.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

CORPUS = pathlib.Path(__file__).resolve().parents[1] / "gpt_tiny" / "corpus.txt"


def load_corpus() -> bytes:
    return CORPUS.read_bytes()


class ByteDataset:
    """Windows of `block + 1` bytes, `block // 2` apart."""

    def __init__(self, data: bytes, block: int) -> None:
        self.data = torch.tensor(list(data), dtype=torch.long)
        self.block, self.stride = block, block // 2

    def __len__(self) -> int:
        return (len(self.data) - self.block - 1) // self.stride + 1

    def batch(self, indices: list[int]) -> torch.Tensor:
        return torch.stack([self.data[i * self.stride : i * self.stride + self.block] for i in indices])


def build_config(arch: str) -> Any:
    """The tiny configs `make_pretrained.py` uses (byte vocabulary)."""
    from transformers import GPT2Config, LlamaConfig

    if arch == "gpt2":
        return GPT2Config(vocab_size=256, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                          bos_token_id=0, eos_token_id=0, architectures=["GPT2LMHeadModel"])  # fmt: skip
    return LlamaConfig(vocab_size=256, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                       bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
                       architectures=["LlamaForCausalLM"])  # fmt: skip


class ModelAndOptimizer:
    """The sharded model and its optimizer as one `Stateful` (DTensors: Elastra reshards them)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        get_state_dict(model, optimizer)  # creates the optimizer state, so every run follows one path

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                       optim_state_dict=state["optim"])  # fmt: skip


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained", default=None, help="Hugging Face model location (default: restoreFrom)")
    p.add_argument("--config", default=None, help="config.json (default: <pretrained>/config.json)")
    p.add_argument("--checkpoint-uri", default=None, help="overrides ELASTRA_CHECKPOINT_URI")
    p.add_argument("--every-steps", type=int, default=None, help="overrides ELASTRA_CHECKPOINT_EVERY_STEPS")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch", type=int, default=6, help="samples per step, fixed across world sizes")
    p.add_argument("--block", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--loss-log", default=None, help="rank 0 appends one JSON line per step here")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds per step at least (demos, tests)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    import elastra
    from elastra.data import ReshardableSampler
    from elastra.session import RngState

    args = parse_args(argv)
    from transformers import AutoConfig, AutoModelForCausalLM

    session = elastra.init(checkpoint_uri=args.checkpoint_uri, every_steps=args.every_steps)
    pretrained = args.pretrained or session.config.pretrained_uri
    config_path = args.config or (os.path.join(pretrained, "config.json") if pretrained else None)
    if config_path is None:
        print("train.py: no --config and no pretrained directory to read config.json from", file=sys.stderr)
        return 2
    config = AutoConfig.from_pretrained(os.path.dirname(os.path.abspath(config_path)))
    torch.manual_seed(args.seed)
    model = AutoModelForCausalLM.from_config(config).to(session.device)  # random until restored
    layers = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    for layer in layers:
        fully_shard(layer)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr)
    data = ByteDataset(load_corpus(), args.block)
    sampler = ReshardableSampler(num_samples=len(data), global_batch_size=args.batch, seed=args.seed,
                                 rank=session.rank, world_size=session.world_size)  # fmt: skip
    state = {"model": ModelAndOptimizer(model, optimizer), "sampler": sampler, "rng": RngState()}
    start = session.restore(state, pretrained=pretrained)  # a checkpoint if there is one, else pretrained
    if session.rank == 0:
        print(f"hf_finetune: world {session.world_size}, start step {start}/{args.steps}", flush=True)
    step = start - 1
    for step in range(start, args.steps):
        began = time.perf_counter()
        batch = sampler.next_batch()
        optimizer.zero_grad(set_to_none=True)
        x = data.batch(batch.indices or [0]).to(session.device)
        loss = model(x, labels=x).loss * (batch.loss_scale * len(batch.indices))
        loss.backward()
        optimizer.step()
        total = loss.detach().clone()
        dist.all_reduce(total)  # the sum over ranks is world_size x the mean loss of the global batch
        total /= session.world_size
        if session.rank == 0 and args.loss_log:
            with open(args.loss_log, "a") as fh:
                fh.write(json.dumps({"step": step, "loss": float(total), "world": session.world_size}) + "\n")
        if args.step_sleep:
            time.sleep(max(0.0, args.step_sleep - (time.perf_counter() - began)))
        session.step(step, state, loss=float(total))
    session.finish(state, step=step)
    if session.rank == 0:
        print(f"hf_finetune: done at step {args.steps}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
