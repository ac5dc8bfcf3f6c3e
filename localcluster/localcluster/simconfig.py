"""Settings of the protocol simulator (`localcluster.simulator`): how its simulated workers behave."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


@dataclass(kw_only=True, slots=True)
class SimulatorConfig:
    """How the simulated workers behave."""

    restore_seconds: float = 0.2
    """From a generation's start (`Restoring`) to its workers running (`Running`)."""
    step_seconds: float = 0.5
    """One training step."""
    peer_detect_seconds: float = 0.05
    """From a member failing (or its node going dark) to its live peers reporting `PeerLost`."""
    report_interval_seconds: float | None = None
    """Least time between step-only reports; None: the pod's `ELASTRA_REPORT_INTERVAL_SECONDS` (3)."""
    failure_probability: float = 0.0
    """Chance that a pod's workers fail (exit 137) at a random time within `failure_window_seconds` of
    a generation starting: injected failures without a script."""
    failure_window_seconds: float = 10.0
    """See `failure_probability`."""
    train_steps: int | None = None
    """Workers succeed at this step; None: they train until stopped."""
    commits: bool = True
    """The pod of rank 0 reports commits (every `ELASTRA_CHECKPOINT_EVERY_STEPS`, and on requests)."""
    api_threads: int = 8
    """Concurrent report requests."""
    seed: int = 0
    """Seed of the failure draws."""

    def __post_init__(self) -> None:
        if (
            min(self.restore_seconds, self.step_seconds, self.peer_detect_seconds) < 0
            or self.step_seconds == 0
        ):
            raise ValueError("delays must be >= 0 and step_seconds > 0")
        if not 0 <= self.failure_probability <= 1:
            raise ValueError("failure_probability must be within [0, 1]")
        if self.api_threads < 1:
            raise ValueError("api_threads must be >= 1")

    @classmethod
    def from_json(cls, raw: str) -> SimulatorConfig:
        """From a JSON object with the field names; unknown keys are an error."""
        values = json.loads(raw or "{}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise ValueError(f"unknown simulator settings: {', '.join(unknown)}")
        return cls(**values)
