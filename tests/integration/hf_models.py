"""Tiny transformers models built from configs (never downloaded): GPT-2 with tied embeddings and
Llama with untied embeddings and grouped-query attention (4 query heads, 2 key/value heads)."""

from __future__ import annotations

from typing import Any

import torch


def gpt2(seed: int = 0) -> Any:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=64, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                        bos_token_id=0, eos_token_id=0, architectures=["GPT2LMHeadModel"])  # fmt: skip
    torch.manual_seed(seed)
    return GPT2LMHeadModel(config)


def llama(seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=40, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                         bos_token_id=0, eos_token_id=0, tie_word_embeddings=False,
                         architectures=["LlamaForCausalLM"])  # fmt: skip
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


BUILD = {"gpt2": gpt2, "llama": llama}


def blocks(model: Any) -> list[torch.nn.Module]:
    """The transformer blocks (FSDP2 shards each, then the root)."""
    inner = model.transformer.h if hasattr(model, "transformer") else model.model.layers
    return list(inner)
