"""The session's configuration, read from the environment the pod agent sets. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from elastra.api.pod import PodContract

DEFAULT_COLLECTIVE_TIMEOUT_S = 60.0
"""Fallback limit on one collective: a peer that vanished without closing its socket fails by then."""


class ConfigError(ValueError):
    """The environment does not describe a valid session."""


@dataclass(frozen=True, kw_only=True, slots=True)
class SessionConfig:
    """Where a worker stands and how it checkpoints. Built by `from_env`; every field is checked."""

    rank: int
    """Global rank (`RANK`)."""
    world_size: int
    """Ranks in this generation (`WORLD_SIZE`)."""
    local_rank: int
    """Rank inside the pod (`LOCAL_RANK`), picks the GPU."""
    master_addr: str
    """Rendezvous address (`MASTER_ADDR`); empty when running alone without one."""
    master_port: int
    """Rendezvous port (`MASTER_PORT`); 0 when running alone without one."""
    generation: int | None
    """Generation from the agent (`ELASTRA_GENERATION`); None when not started by an agent."""
    restore_step: int | None
    """Step every rank restores (`ELASTRA_RESTORE_STEP`); None for a fresh generation."""
    restore_uri: str | None
    """Step directory of that checkpoint (`ELASTRA_RESTORE_URI`): the restore reads it, in the job's own
    root or, for a job forked with `restoreFrom`, in the other job's."""
    control_dir: str | None
    """Where the agent's control files are (`ELASTRA_CONTROL_DIR`); None without an agent."""
    checkpoint_uri: str | None
    """Durable checkpoint root (`ELASTRA_CHECKPOINT_URI`); None disables checkpointing."""
    local_dir: str | None
    """Node-local tier (`ELASTRA_LOCAL_DIR`)."""
    every_steps: int | None
    """Save every this many steps (`ELASTRA_CHECKPOINT_EVERY_STEPS`)."""
    every_seconds: float | None
    """Save when this long passed since the previous save (`ELASTRA_CHECKPOINT_EVERY_SECONDS`)."""
    keep: int
    """Committed checkpoints to keep (`ELASTRA_CHECKPOINT_KEEP`)."""
    agree_every: int
    """Agree on checkpoint requests every this many steps (`ELASTRA_AGREE_EVERY_STEPS`)."""
    collective_timeout_s: float
    """Limit on one collective (`ELASTRA_COLLECTIVE_TIMEOUT_SECONDS`)."""
    launched_at: float | None = None
    """Unix time the agent launched this worker (`ELASTRA_LAUNCHED_AT`), for the start timeline."""
    local_keep: int | None = None
    """Checkpoints kept in the node-local tier (`ELASTRA_LOCAL_KEEP`, the job's `local.keep`); `keep`
    when unset."""

    def __post_init__(self) -> None:
        if self.world_size < 1:
            raise ConfigError(f"WORLD_SIZE must be >= 1, got {self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ConfigError(f"RANK {self.rank} is outside WORLD_SIZE {self.world_size}")
        if self.local_rank < 0:
            raise ConfigError(f"LOCAL_RANK must be >= 0, got {self.local_rank}")
        if self.world_size > 1 and not (self.master_addr and self.master_port):
            raise ConfigError("WORLD_SIZE > 1 needs MASTER_ADDR and MASTER_PORT")
        if self.restore_step is not None and self.restore_step < 0:
            raise ConfigError(f"ELASTRA_RESTORE_STEP must be >= 0, got {self.restore_step}")
        if self.restore_step is not None and not self.checkpoint_uri:
            raise ConfigError("ELASTRA_RESTORE_STEP is set but ELASTRA_CHECKPOINT_URI is not")
        if self.every_steps is not None and self.every_steps < 1:
            raise ConfigError(f"ELASTRA_CHECKPOINT_EVERY_STEPS must be >= 1, got {self.every_steps}")
        if self.every_seconds is not None and self.every_seconds <= 0:
            raise ConfigError(f"ELASTRA_CHECKPOINT_EVERY_SECONDS must be > 0, got {self.every_seconds}")
        if self.keep < 1:
            raise ConfigError(f"ELASTRA_CHECKPOINT_KEEP must be >= 1, got {self.keep}")
        if self.local_keep is not None and self.local_keep < 1:
            raise ConfigError(f"ELASTRA_LOCAL_KEEP must be >= 1, got {self.local_keep}")
        if self.agree_every < 1:
            raise ConfigError(f"ELASTRA_AGREE_EVERY_STEPS must be >= 1, got {self.agree_every}")
        if self.collective_timeout_s <= 0:
            raise ConfigError("ELASTRA_COLLECTIVE_TIMEOUT_SECONDS must be > 0")

    @property
    def under_agent(self) -> bool:
        """Started by a pod agent (it owns restarts; restore only what it says)."""
        return self.control_dir is not None


def _get(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name, "").strip()
    return value or None


def _int(env: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def _float(env: Mapping[str, str], name: str, default: float | None = None) -> float | None:
    raw = _get(env, name)
    if raw is None:
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def from_env(env: Mapping[str, str], **overrides: object) -> SessionConfig:
    """The session configuration from `env`, with keyword `overrides` (non-None) on top. Pure."""
    try:
        contract = PodContract.from_env(env)  # what the operator set: one model, both sides
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    values: dict[str, object] = {
        "rank": _int(env, "RANK", 0),
        "world_size": _int(env, "WORLD_SIZE", 1),
        "local_rank": _int(env, "LOCAL_RANK", 0),
        "master_addr": _get(env, "MASTER_ADDR") or "",
        "master_port": _int(env, "MASTER_PORT", 0),
        "generation": _int(env, "ELASTRA_GENERATION"),
        "restore_step": _int(env, "ELASTRA_RESTORE_STEP"),
        "restore_uri": _get(env, "ELASTRA_RESTORE_URI"),
        "control_dir": _get(env, "ELASTRA_CONTROL_DIR"),
        "checkpoint_uri": contract.checkpoint_uri,
        "local_dir": contract.local_dir,
        "every_steps": contract.every_steps,
        "every_seconds": contract.every_seconds,
        "keep": contract.checkpoint_keep,
        "agree_every": _int(env, "ELASTRA_AGREE_EVERY_STEPS", 1),
        "collective_timeout_s": _float(
            env, "ELASTRA_COLLECTIVE_TIMEOUT_SECONDS", DEFAULT_COLLECTIVE_TIMEOUT_S
        ),
        "launched_at": _float(env, "ELASTRA_LAUNCHED_AT"),
        "local_keep": _int(env, "ELASTRA_LOCAL_KEEP"),
    }
    unknown = set(overrides) - set(values)
    if unknown:
        raise TypeError(f"unknown session options: {sorted(unknown)}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return SessionConfig(**values)  # type: ignore[arg-type]


def save_due(
    *,
    completed: int,
    every_steps: int | None,
    every_seconds: float | None,
    seconds_since_save: float,
) -> bool:
    """Whether the interval policy wants a checkpoint after `completed` steps. Pure."""
    if every_steps is not None and completed % every_steps == 0:
        return True
    return every_seconds is not None and seconds_since_save >= every_seconds
