"""Train gpt_tiny (FSDP2 + AdamW, Elastra session) on the whole corpus or on one half of it.

The parent runs with `--part all`; each child runs with `--part a` or `--part b` and
`--init-from PARENT_ROOT`, which loads the parent's newest committed checkpoint (model and optimizer)
before the first step: what `spec.checkpoint.restoreFrom: <parent Checkpoint>` does for a
TrainingJob on a cluster. Runs alone (`python finetune.py ...`) or under `torchrun`.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.fsdp import fully_shard

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from tasks import BLOCK, build_model, split_corpus

import elastra
from elastra.checkpoint import Checkpointer
from elastra.data import ReshardableSampler
from elastra.session import RngState


class ModelState:
    """The sharded model as a `Stateful` under the state key `model` (so `merge --include model/`)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model

    def state_dict(self) -> dict[str, Any]:
        return get_model_state_dict(self.model)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_model_state_dict(self.model, state)


class OptimState:
    """The sharded AdamW state under the state key `optim` (left out of merges by default)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        get_optimizer_state_dict(model, optimizer)  # creates the state (a zero-lr step)

    def state_dict(self) -> dict[str, Any]:
        return get_optimizer_state_dict(self.model, self.optimizer)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_optimizer_state_dict(self.model, self.optimizer, state)


def init_from(root: str, model: ModelState, optim: OptimState) -> int:
    """restoreFrom, by hand: the newest committed checkpoint under another run's `root` -> model and
    optimizer (resharded to this world size). Returns its step. `keep` is huge so that this reader
    never trims the parent's checkpoints."""
    source = Checkpointer(root, keep=1 << 30)
    state = {"model": model.state_dict(), "optim": optim.state_dict()}
    step = source.load(state)
    source.close()
    if step is None:
        raise SystemExit(f"--init-from {root}: no committed checkpoint there")
    model.load_state_dict(state["model"])
    optim.load_state_dict(state["optim"])
    return step


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--part", choices=["all", "a", "b"], default="all", help="which training text")
    p.add_argument("--steps", type=int, required=True, help="steps to run in this invocation")
    p.add_argument("--checkpoint-uri", required=True)
    p.add_argument("--init-from", default=None, help="the parent's checkpoint root (restoreFrom)")
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    session = elastra.init(checkpoint_uri=args.checkpoint_uri, keep=2)  # finish() saves the last step
    rank, world = session.rank, session.world_size
    parts = split_corpus()
    data = parts.train(args.part)
    torch.manual_seed(args.seed)
    model = build_model(parts.vocab_size)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    model_state, optim_state = ModelState(model), OptimState(model, optimizer)
    windows = (len(data) - BLOCK - 1) // (BLOCK // 2)
    sampler = ReshardableSampler(
        num_samples=windows, global_batch_size=args.global_batch, seed=args.seed, rank=rank, world_size=world
    )
    state = {"model": model_state, "optim": optim_state, "sampler": sampler, "rng": RngState()}
    start = session.restore(state)
    if start == 0 and args.init_from:
        start = init_from(args.init_from, model_state, optim_state)
        print(f"part {args.part}: forked from {args.init_from} at step {start}", flush=True)
    end = start + args.steps
    step = start - 1
    for step in range(start, end):
        batch = sampler.next_batch()
        optimizer.zero_grad(set_to_none=True)
        indices = batch.indices or batch.indices[:1]
        rows = torch.stack([data[i * (BLOCK // 2) : i * (BLOCK // 2) + BLOCK + 1] for i in indices])
        x, y = rows[:, :-1], rows[:, 1:]
        loss_sum = F.cross_entropy(model(x).flatten(0, 1), y.flatten(), reduction="sum") / BLOCK
        (loss_sum * (batch.loss_scale if batch.indices else 0.0)).backward()
        optimizer.step()
        total = loss_sum.detach() if batch.indices else torch.zeros(())
        dist.all_reduce(total)
        session.step(step, state, loss=float(total) / args.global_batch)
    session.finish(state, step=step)
    if rank == 0:
        loss = float(total) / args.global_batch
        print(f"part {args.part}: trained to step {end} on world {world}, loss {loss:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
