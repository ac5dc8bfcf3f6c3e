"""Elastra: checkpoint-aware elastic PyTorch training.

Training code imports this package. Importing it is cheap and never pulls in torch: the checkpoint
engine (`elastra.checkpoint`) and the session load torch only when used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "init"]


def __getattr__(name: str) -> Any:
    """`elastra.init` loads the session (and torch) on first use only."""
    if name == "init":
        from elastra.session import init

        return init
    raise AttributeError(f"module 'elastra' has no attribute {name!r}")
