"""Where a worker's training starts: the one line each restore prints, pretrained weights for a fresh
job, and the state of optimizers that have none yet.

`Session.restore` uses these; they keep the session's own module about the training loop.
"""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections.abc import Callable, Collection, Mapping
from typing import Any

import torch

log = logging.getLogger("elastra.session")


def announce(rank: int, text: str) -> None:
    """One line on stderr (and the `elastra.session` logger), whether or not logging is configured:
    what this worker restored, from where, how fast, and what it skipped."""
    stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
    print(f"{stamp} elastra-session INFO rank {rank} {text}", file=sys.stderr, flush=True)
    log.debug("rank %d %s", rank, text)


def has_checkpoint(checkpointer: Any, restore_uri: str | None) -> bool:
    """Run by hand: whether the checkpoint root (or `restore_uri`) has something to restore."""
    if checkpointer is None:
        return False
    if restore_uri:
        return True
    from elastra.checkpoint import latest

    try:
        return latest(checkpointer.uri) is not None
    except Exception as exc:  # unreadable: let the load itself report it
        log.warning("cannot list %s: %s", checkpointer.uri, exc)
        return True


def init_fresh_optimizers(state: Mapping[str, Any]) -> list[str]:
    """Create the state of every `torch.optim.Optimizer` handed to the session as is while it has none
    (a fresh AdamW has no `exp_avg` until its first step), so that a checkpoint restore fills it instead
    of finding nowhere to put it. Returns the keys of the optimizers it initialised."""
    from elastra.checkpoint import init_optimizer_state

    return [
        key
        for key, value in state.items()
        if isinstance(value, torch.optim.Optimizer) and init_optimizer_state(value)
    ]


def forget_fresh_optimizers(state: Mapping[str, Any], keys: Collection[str]) -> None:
    """Drop the state `init_fresh_optimizers` created for the optimizers under `keys` when nothing was
    restored into it after all (a fresh start): its dummy step would otherwise count as the first one
    (AdamW's bias correction starts at step 2, not 1)."""
    for key in keys:
        optimizer = state[key]
        if isinstance(optimizer, torch.optim.Optimizer):
            optimizer.state.clear()


def load_pretrained_into(
    flat: dict[str, Any],
    uri: str,
    *,
    prefix: str | None,
    key_map: Callable[[str], str | None] | None,
    allow_missing: bool | Collection[str],
) -> Any:
    """Fill the model weights of the materialised state `flat` from the Hugging Face model at `uri`
    (every rank its own slices); the `RestoreReport`. The optimizer state and the step stay fresh."""
    from elastra.checkpoint import load_pretrained

    return load_pretrained(flat, uri, prefix=prefix, key_map=key_map, allow_missing=allow_missing)
