"""The two "tasks" of the merge-search example: the first and the second half of gpt_tiny's corpus.

Each half is split 90/10 into training and validation text; the vocabulary is the whole corpus's,
so every model has the same shape. `evaluate` is the user's evaluation that `merge_search` calls:
mean next-character cross-entropy on each half's validation text, on a plain (unsharded) model.
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "gpt_tiny"))
from model import GPT, GPTConfig, load_corpus

BLOCK = 64
"""Context length in characters."""


@dataclass(frozen=True, slots=True)
class Parts:
    """Encoded text: training and validation of each half, and the vocabulary size."""

    vocab_size: int
    train_a: torch.Tensor
    train_b: torch.Tensor
    val_a: torch.Tensor
    val_b: torch.Tensor

    def train(self, part: str) -> torch.Tensor:
        """Training text of `a`, `b` or `all` (both halves' training text)."""
        return {"a": self.train_a, "b": self.train_b, "all": torch.cat([self.train_a, self.train_b])}[part]


def split_corpus() -> Parts:
    text = load_corpus()
    vocab = sorted(set(text))
    index = {ch: i for i, ch in enumerate(vocab)}
    data = torch.tensor([index[ch] for ch in text], dtype=torch.long)
    half = len(data) // 2
    a, b = data[:half], data[half:]
    cut_a, cut_b = len(a) * 9 // 10, len(b) * 9 // 10
    return Parts(len(vocab), a[:cut_a], b[:cut_b], a[cut_a:], b[cut_b:])


def build_model(vocab_size: int) -> GPT:
    return GPT(GPTConfig(vocab_size=vocab_size, block_size=BLOCK))


def val_loss(model: torch.nn.Module, text: torch.Tensor) -> float:
    """Mean cross-entropy over every non-overlapping window of `text`."""
    starts = range(0, len(text) - BLOCK - 1, BLOCK)
    rows = torch.stack([text[s : s + BLOCK + 1] for s in starts])
    with torch.no_grad():
        logits = model(rows[:, :-1])
        return float(F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten()))


def make_evaluate(parts: Parts) -> Callable[[dict[str, torch.Tensor]], dict[str, float]]:
    """`evaluate(state_dict) -> {"loss_a", "loss_b"}` for `merge_search`."""
    model = build_model(parts.vocab_size).eval()

    def evaluate(state_dict: dict[str, torch.Tensor]) -> dict[str, float]:
        model.load_state_dict(state_dict)
        return {"loss_a": val_loss(model, parts.val_a), "loss_b": val_loss(model, parts.val_b)}

    return evaluate
