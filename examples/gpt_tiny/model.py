"""A small character-level GPT (pre-norm transformer blocks, learned positions, tied output)."""

from __future__ import annotations

import pathlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

CORPUS = pathlib.Path(__file__).with_name("corpus.txt")


@dataclass(frozen=True, kw_only=True, slots=True)
class GPTConfig:
    """Model shape."""

    vocab_size: int
    """Distinct characters of the corpus."""
    block_size: int = 64
    """Context length in characters."""
    n_layer: int = 2
    """Transformer blocks."""
    n_head: int = 2
    """Attention heads per block."""
    n_embd: int = 64
    """Width of the residual stream."""

    def __post_init__(self) -> None:
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be a multiple of n_head ({self.n_head})")


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.qkv = nn.Linear(cfg.n_embd, 3 * cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.n_embd)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = nn.Sequential(
            nn.Linear(cfg.n_embd, 4 * cfg.n_embd), nn.GELU(), nn.Linear(4 * cfg.n_embd, cfg.n_embd)
        )
        self.n_head = cfg.n_head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.mlp(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        x = self.tok(idx) + self.pos(positions)
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


class CharDataset:
    """Windows of `block_size + 1` characters, `stride` apart; sample i is the i-th window."""

    def __init__(self, text: str, *, block_size: int, stride: int) -> None:
        if len(text) < block_size + 2:
            raise ValueError(f"the corpus ({len(text)} chars) is shorter than one block ({block_size})")
        self.vocab = sorted(set(text))
        index = {ch: i for i, ch in enumerate(self.vocab)}
        self.data = torch.tensor([index[ch] for ch in text], dtype=torch.long)
        self.block_size = block_size
        self.stride = stride

    def __len__(self) -> int:
        return (len(self.data) - self.block_size - 1) // self.stride + 1

    def batch(self, indices: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and next-character targets for the given sample indices."""
        rows = torch.stack(
            [self.data[i * self.stride : i * self.stride + self.block_size + 1] for i in indices]
        )
        return rows[:, :-1], rows[:, 1:]


def load_corpus() -> str:
    return CORPUS.read_text(encoding="utf-8")
