"""Train gpt_tiny elastically: FSDP2 (`fully_shard`) + AdamW, a fixed global batch, Elastra checkpoints.

Runs unchanged under the pod agent (which sets RANK, WORLD_SIZE, … and the checkpoint env), under
`torchrun`, or alone (`python examples/gpt_tiny/train.py --checkpoint-uri /tmp/ck`). On GPUs it
uses NCCL, on CPU gloo.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from model import GPT, CharDataset, GPTConfig, load_corpus
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

import elastra
from elastra.data import ReshardableSampler, accumulation_steps
from elastra.session import RngState


class ModelAndOptimizer:
    """The sharded model and optimizer state as one `Stateful` (DTensors: saved and resharded by Elastra)."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        # Creates the optimizer state now (torch does a zero-lr step for that), so that every run,
        # restored or not, checkpointed or not, follows the same trajectory.
        get_state_dict(model, optimizer)

    def state_dict(self) -> dict[str, Any]:
        model_sd, optim_sd = get_state_dict(self.model, self.optimizer)
        return {"model": model_sd, "optim": optim_sd}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        set_state_dict(
            self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"]
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--steps", type=int, default=300, help="total training steps")
    p.add_argument("--global-batch", type=int, default=16, help="samples per step, fixed across world sizes")
    p.add_argument("--micro-batch", type=int, default=8, help="most samples per forward pass (accumulation)")
    p.add_argument("--block", type=int, default=64, help="context length in characters")
    p.add_argument("--stride", type=int, default=32, help="characters between two samples")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--checkpoint-uri", default=None, help="overrides ELASTRA_CHECKPOINT_URI")
    p.add_argument("--every-steps", type=int, default=None, help="overrides ELASTRA_CHECKPOINT_EVERY_STEPS")
    p.add_argument("--loss-log", default=None, help="rank 0 appends one JSON line per step here")
    p.add_argument("--sample-log", default=None, help="every rank appends the sample indices it trained on")
    p.add_argument("--step-sleep", type=float, default=0.0, help="seconds to sleep per step (demos, tests)")
    p.add_argument("--crash-at", type=int, default=None, help="rank 0 exits with 1 after this step (tests)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    session = elastra.init(checkpoint_uri=args.checkpoint_uri, every_steps=args.every_steps)
    rank, world = session.rank, session.world_size
    dataset = CharDataset(load_corpus(), block_size=args.block, stride=args.stride)
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    model = GPT(GPTConfig(vocab_size=len(dataset.vocab), block_size=args.block)).to(session.device)
    for block in model.blocks:
        fully_shard(block)
    fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sampler = ReshardableSampler(
        num_samples=len(dataset),
        global_batch_size=args.global_batch,
        seed=args.seed,
        rank=rank,
        world_size=world,
    )
    state = {"model": ModelAndOptimizer(model, optimizer), "sampler": sampler, "rng": RngState()}
    # Lazy staging: a save copies the state while the next step's forward and backward run; the
    # optimizer step waits for the copy. Nothing else here mutates checkpointed tensors in place (the
    # sampler's and RNG's state dicts are copies), so this one guard is all the script needs.
    session.guard(optimizer)
    start = session.restore(state)
    # A restored optimizer state carries the saving run's hyperparameters: this run's flags win (a fork
    # from another job's checkpoint, e.g. a hyperparameter-search trial, trains with its own).
    for group in optimizer.param_groups:
        group["lr"], group["weight_decay"] = args.lr, args.weight_decay
    parts = accumulation_steps(args.global_batch, world, args.micro_batch)
    if rank == 0:
        print(
            f"gpt_tiny: world {world}, start step {start}/{args.steps}, {parts} micro-batch(es)", flush=True
        )
    step = start - 1
    for step in range(start, args.steps):
        started = time.perf_counter()
        batch = sampler.next_batch()
        optimizer.zero_grad(set_to_none=True)
        local_sum = torch.zeros((), device=session.device)
        for indices in batch.split(parts):
            # Every rank runs the same number of passes (FSDP collectives); an empty part weighs 0.
            x, y = dataset.batch(indices or batch.indices[:1])
            x, y = x.to(session.device), y.to(session.device)
            logits = model(x)
            loss_sum = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum") / args.block
            weight = batch.loss_scale if indices else 0.0
            (loss_sum * weight).backward()
            if indices:
                local_sum += loss_sum.detach()
        optimizer.step()
        dist.all_reduce(local_sum, op=dist.ReduceOp.SUM)
        loss = float(local_sum) / args.global_batch
        if args.sample_log:
            with open(args.sample_log, "a") as fh:
                fh.write(
                    json.dumps(
                        {
                            "step": step,
                            "rank": rank,
                            "world": world,
                            "epoch": batch.epoch,
                            "idx": batch.indices,
                        }
                    )
                    + "\n"
                )
        if rank == 0 and args.loss_log:
            with open(args.loss_log, "a") as fh:
                fh.write(json.dumps({"step": step, "loss": loss, "world": world, "t": time.time()}) + "\n")
        if args.step_sleep:
            time.sleep(max(0.0, args.step_sleep - (time.perf_counter() - started)))
        if args.crash_at is not None and step + 1 >= args.crash_at and rank == 0:
            print(f"gpt_tiny: crashing on purpose after step {step}", flush=True)
            os._exit(1)
        session.step(step, state, loss=loss, tokens=args.global_batch * args.block // world)
        if rank == 0 and (step + 1) % 50 == 0:
            print(f"step {step + 1} loss {loss:.4f}", flush=True)
    session.finish(state, step=step)
    if rank == 0:
        print(f"gpt_tiny: done at step {args.steps}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
