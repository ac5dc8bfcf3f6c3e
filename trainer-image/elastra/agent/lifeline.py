"""Children die with the agent: shared by the worker launcher (`workers`) and the warm launcher
(`zygote`), so neither imports the other."""

from __future__ import annotations

import ctypes
import signal
import sys

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the calling process gets SIGKILL when its parent dies, so no worker outlives its pod."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
