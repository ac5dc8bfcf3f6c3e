"""Elastra: checkpoint-aware elastic PyTorch training.

Training code imports this package. Importing it is cheap and never pulls in torch: the checkpoint
engine (`elastra.checkpoint`) and the session load torch only when used.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
