"""The session API for training scripts: `elastra.init()`, `restore`, `step`, `finish`.

Importing this package imports torch; `import elastra` does not (it exposes `elastra.init` lazily).
"""

from __future__ import annotations

from elastra.control import EXIT_PEER_LOST, EXIT_PEER_STOPPED
from elastra.session.config import ConfigError, SessionConfig, from_env, save_due
from elastra.session.rng import RngState
from elastra.session.session import Session, init
from elastra.session.stateful import Stateful

__all__ = [
    "EXIT_PEER_LOST",
    "EXIT_PEER_STOPPED",
    "ConfigError",
    "RngState",
    "Session",
    "SessionConfig",
    "Stateful",
    "from_env",
    "init",
    "save_due",
]
