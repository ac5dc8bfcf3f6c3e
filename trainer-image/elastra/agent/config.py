"""The agent's identity and settings, from the environment the operator sets (docs/protocol.md). Pure."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from elastra.api.pod import PodContract


@dataclass(frozen=True, kw_only=True, slots=True)
class AgentConfig:
    """Who this agent is and how it behaves."""

    job: str
    """TrainingJob name (`ELASTRA_JOB`)."""
    pod: str
    """This pod (`POD_NAME`)."""
    namespace: str
    """Its namespace (`POD_NAMESPACE`)."""
    pod_ip: str
    """Its IP (`POD_IP`); the metrics server binds it."""
    nproc: int
    """Workers per pod (`ELASTRA_NPROC_PER_POD`); the membership record's value wins when present."""
    control_dir: str
    """Where the control and status files live (`ELASTRA_CONTROL_DIR`, default /tmp/elastra-<pod>)."""
    metrics_port: int
    """Port of `/metrics` (`ELASTRA_METRICS_PORT`, 9400; 0 disables)."""
    grace_seconds: float
    """The pod's termination grace period (`ELASTRA_TERMINATION_GRACE_SECONDS`, 30)."""
    report_interval_s: float
    """Heartbeat: a report at least this often, changed or not (`ELASTRA_REPORT_INTERVAL_SECONDS`, 3 when
    run by hand; the operator sets a quarter of the silence timeout, 7.5 s at the default)."""
    poll_interval_s: float
    """Re-read of the membership record besides the watch (`ELASTRA_MEMBERSHIP_POLL_SECONDS`, 5)."""
    zygote: bool = True
    """Fork workers from a warm, pre-imported launcher (`ELASTRA_ZYGOTE`, 1; 0 spawns each one fresh)."""

    def __post_init__(self) -> None:
        for name in ("job", "pod", "namespace"):
            if not getattr(self, name):
                raise ValueError(f"the agent needs {name!r}: set {_ENV_OF[name]}")
        if self.nproc < 1:
            raise ValueError(f"ELASTRA_NPROC_PER_POD must be >= 1, got {self.nproc}")
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"ELASTRA_METRICS_PORT out of range: {self.metrics_port}")
        if self.grace_seconds < 0 or self.report_interval_s <= 0 or self.poll_interval_s <= 0:
            raise ValueError("grace, report and poll intervals must be positive")


_ENV_OF = {"job": "ELASTRA_JOB", "pod": "POD_NAME", "namespace": "POD_NAMESPACE"}


def agent_config_from_env(env: Mapping[str, str]) -> AgentConfig:
    """The agent's configuration from `env`. Pure; raises ValueError with the variable to fix."""

    def number(name: str, default: float) -> float:
        raw = env.get(name, "").strip()
        try:
            return float(raw) if raw else default
        except ValueError:
            raise ValueError(f"{name} must be a number, got {raw!r}") from None

    contract = PodContract.from_env(env)  # what the operator set: one model, both sides
    pod = contract.pod
    return AgentConfig(
        job=contract.job,
        pod=pod,
        namespace=contract.namespace,
        pod_ip=contract.pod_ip or "127.0.0.1",
        nproc=contract.nproc_per_pod,
        control_dir=env.get("ELASTRA_CONTROL_DIR", "").strip() or f"/tmp/elastra-{pod or 'agent'}",  # noqa: S108
        metrics_port=int(number("ELASTRA_METRICS_PORT", 9400)),
        grace_seconds=contract.grace_seconds,
        report_interval_s=contract.report_interval_seconds,
        poll_interval_s=number("ELASTRA_MEMBERSHIP_POLL_SECONDS", 5),
        zygote=env.get("ELASTRA_ZYGOTE", "1").strip().lower() not in ("0", "false", "no", "off"),
    )
