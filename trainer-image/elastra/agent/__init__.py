"""The pod agent: `python -m elastra.agent -- <training command>`, the trainer image's entrypoint.

One per pod. It watches the job's membership record, runs `nprocPerPod` workers per generation,
restarts them in place on a new generation, passes checkpoint requests and SIGTERM on to them, and
reports their state and commits on its own pod (docs/protocol.md). No torch here.
"""

from __future__ import annotations

from elastra.agent.config import AgentConfig, agent_config_from_env
from elastra.agent.decide import Action, decide, worker_env

__all__ = ["Action", "AgentConfig", "agent_config_from_env", "decide", "worker_env"]
