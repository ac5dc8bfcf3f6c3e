"""Lazy staging's safety net for the session: optimizer guards, fences, and each save's stall.

A lazy save returns before its copy of the state is done (see `elastra.session.session` for the
rules a script follows). `Fences` holds the optimizer step pre-hooks that wait for that copy and the
one lazy save no fence has waited for yet, so that the save's stall can include the wait.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from torch.utils.hooks import RemovableHandle

log = logging.getLogger("elastra.session")


@dataclass(slots=True)
class Stall:
    """The training-loop time one save cost, final once `settled` is set: the `save()` call, plus for a
    lazy save the wait of the first fence after it (set by the training thread, read by the waiter)."""

    seconds: float
    settled: threading.Event = field(default_factory=threading.Event)


class Fences:
    """The step pre-hooks of lazy staging and the lazy save still being copied. Training thread only."""

    def __init__(self, wait_staged: Callable[[], None], rank: int) -> None:
        self._wait_staged = wait_staged
        """The checkpointer's `fence`: blocks until the in-flight save copied the state."""
        self._rank = rank
        self._guarded: weakref.WeakSet[torch.optim.Optimizer] = weakref.WeakSet()
        self._hooks: list[RemovableHandle] = []
        self._unfenced: Stall | None = None
        """The lazy save whose copy no fence has waited for yet."""
        self._warned_unguarded = False

    @property
    def lazy(self) -> bool:
        """Whether saves may stage lazily: some optimizer is guarded and the hooks are in place."""
        return bool(self._hooks)

    def guard(self, optimizers: tuple[torch.optim.Optimizer, ...]) -> None:
        """Fence before each of `optimizers`' steps, and (one global hook) before any other's."""
        if not self._hooks:
            self._hooks.append(register_optimizer_step_pre_hook(self._fence_unguarded))
        for optimizer in optimizers:
            if optimizer in self._guarded:
                continue
            self._guarded.add(optimizer)
            self._hooks.append(optimizer.register_step_pre_hook(lambda *_: self.fence()))

    def _fence_unguarded(self, optimizer: torch.optim.Optimizer, _args: object, _kwargs: object) -> None:
        if optimizer in self._guarded:
            return
        if self._unfenced is not None and not self._warned_unguarded:
            self._warned_unguarded = True
            log.warning(
                "rank %d: %s is not guarded (session.guard): fencing before its step anyway",
                self._rank,
                type(optimizer).__name__,
            )
        self.fence()

    def copying(self, stall: Stall) -> None:
        """A lazy save was just started: the next fence settles its `stall`."""
        self._unfenced = stall

    def fence(self) -> None:
        """Wait until the newest save has copied the state; settle its stall if it was lazy."""
        started = time.perf_counter()
        self._wait_staged()
        stall, self._unfenced = self._unfenced, None
        if stall is not None:
            stall.seconds += time.perf_counter() - started
            stall.settled.set()

    def remove(self) -> None:
        """Take the hooks out (the session is finishing): saves stage eagerly from now on."""
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
