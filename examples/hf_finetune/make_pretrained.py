"""A stand-in for downloading a model: build a tiny GPT-2 (tied embeddings) or Llama (untied,
grouped-query attention) from a config, pretrain it briefly on the sonnets, and `save_pretrained` it.

    python examples/hf_finetune/make_pretrained.py /tmp/elastra-hf/gpt2 [--arch llama] [--steps 30]

On a real cluster, `hf download <model> --local-dir DIR` (or a copy to `s3://…`) gives the same layout:
`config.json` plus `model.safetensors`, or shards with `model.safetensors.index.json`. Nothing is
downloaded here. `--max-shard-size 20KB` writes the sharded layout even for a tiny model.
"""

from __future__ import annotations

import argparse
import sys

import torch
from train import ByteDataset, build_config, load_corpus


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out", help="directory to write (save_pretrained)")
    p.add_argument("--arch", choices=["gpt2", "llama"], default="gpt2")
    p.add_argument("--steps", type=int, default=30, help="pretraining steps (0: random weights)")
    p.add_argument("--max-shard-size", default="50GB", help="e.g. 20KB to get shards and an index")
    args = p.parse_args(argv)

    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_config(args.arch))
    data = ByteDataset(load_corpus(), block=32)
    optim = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for step in range(args.steps):
        x = data.batch(torch.randint(0, len(data), (8,), generator=gen).tolist())
        loss = model(x, labels=x).loss
        loss.backward()
        optim.step()
        optim.zero_grad()
        if (step + 1) % 10 == 0:
            print(f"pretrain step {step + 1} loss {loss.item():.3f}", flush=True)
    model.save_pretrained(args.out, max_shard_size=args.max_shard_size)
    print(f"wrote {args.arch} ({sum(p.numel() for p in model.parameters())} parameters) to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
