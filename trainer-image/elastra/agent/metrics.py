"""Trainer metrics on `/metrics` (docs/metrics.md), aggregated over the pod's workers.

Workers publish cumulative facts in their status files; this turns them into Prometheus series:
gauges take the newest value, counters and histograms take what is new since the previous look
(tracked per generation and rank, since a new generation starts new worker processes).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from elastra.control import WorkerStatus

log = logging.getLogger("elastra.agent")

MAX_STEP_OBSERVATIONS = 1000
"""Most step-time observations taken from one status change (the mean, repeated)."""


@dataclass(slots=True)
class _Seen:
    """What was already turned into counters for one worker process."""

    steps_total: int = 0
    save_steps: set[int] = field(default_factory=set)
    bytes_by_tier: dict[str, int] = field(default_factory=dict)
    skipped_by_policy: dict[str, int] = field(default_factory=dict)
    restore_seen: bool = False


class TrainerMetrics:
    """The trainer series of one pod."""

    def __init__(self, *, job: str, pod: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"job": job, "pod": pod}
        names = list(labels)
        r = self.registry
        self._labels = labels
        self.step = Gauge("elastra_trainer_step", "last completed step", names, registry=r).labels(**labels)
        self.step_seconds = Histogram(
            "elastra_trainer_step_seconds",
            "time per step",
            names,
            registry=r,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ).labels(**labels)
        self.tokens = Gauge(
            "elastra_trainer_tokens_per_second", "training throughput", names, registry=r
        ).labels(**labels)
        self.loss = Gauge("elastra_trainer_loss", "last loss", names, registry=r).labels(**labels)
        self.stall = Histogram(
            "elastra_trainer_checkpoint_stall_seconds",
            "time save() blocked the training loop",
            names,
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        ).labels(**labels)
        self.bytes = Counter(
            "elastra_trainer_checkpoint_bytes", "bytes written per tier", [*names, "tier"], registry=r
        )
        self.skipped = Counter(
            "elastra_trainer_checkpoint_skipped",
            "saves skipped or waited for, by policy",
            [*names, "policy"],
            registry=r,
        )
        self.restore = Histogram(
            "elastra_trainer_restore_seconds",
            "restore time by source tier",
            [*names, "tier"],
            registry=r,
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
        )
        self.memory_bytes = Gauge(
            "elastra_memory_snapshot_bytes",
            "bytes the pod's memory tier holds after its newest snapshot (data + parity)",
            names,
            registry=r,
        ).labels(**labels)
        self.memory_seconds = Gauge(
            "elastra_memory_snapshot_seconds",
            "time of the newest memory snapshot, from step() to its in-memory commit",
            names,
            registry=r,
        ).labels(**labels)
        self._seen: dict[tuple[int, int], _Seen] = {}

    def serve(self, addr: str, port: int) -> bool:
        """Serve `/metrics` on `addr:port`; False (logged) when the port is taken."""
        try:
            start_http_server(port, addr=addr, registry=self.registry)
        except OSError as exc:
            log.warning("metrics: cannot listen on %s:%d: %s", addr, port, exc)
            return False
        return True

    def update(self, statuses: list[WorkerStatus]) -> None:
        """Fold the newest status of every local worker in."""
        steps = [s.step for s in statuses if s.step is not None]
        if steps:
            self.step.set(max(steps))
        losses = [s.loss for s in sorted(statuses, key=lambda s: s.rank) if s.loss is not None]
        if losses:
            self.loss.set(losses[0])
        rates = [s.tokens_per_second for s in statuses if s.tokens_per_second is not None]
        if rates:
            self.tokens.set(sum(rates))
        held = [s.memory_snapshot_bytes for s in statuses if s.memory_snapshot_bytes is not None]
        if held:
            self.memory_bytes.set(max(held))  # the pod's one store, as each local rank last saw it
        took = [s.memory_snapshot_seconds for s in statuses if s.memory_snapshot_seconds is not None]
        if took:
            self.memory_seconds.set(max(took))
        for status in statuses:
            self._fold(status)

    def _fold(self, status: WorkerStatus) -> None:
        seen = self._seen.setdefault((status.generation, status.rank), _Seen())
        new_steps = status.steps_total - seen.steps_total
        if new_steps > 0 and status.step_seconds is not None:
            for _ in range(min(new_steps, MAX_STEP_OBSERVATIONS)):
                self.step_seconds.observe(status.step_seconds)
        seen.steps_total = max(seen.steps_total, status.steps_total)
        for save in status.saves:
            if save.step not in seen.save_steps and save.skipped is None:
                self.stall.observe(save.stall_seconds)
            seen.save_steps.add(save.step)
        for tier, total in status.bytes_by_tier.items():
            delta = total - seen.bytes_by_tier.get(tier, 0)
            if delta > 0:
                self.bytes.labels(**self._labels, tier=tier).inc(delta)
                seen.bytes_by_tier[tier] = total
        for policy, total in status.skipped_by_policy.items():
            # The series exists from the first report on, at 0 while nothing was skipped: "none
            # skipped" is data (the dashboard's panel and the alert see 0, not an absent series).
            skipped = self.skipped.labels(**self._labels, policy=policy)
            delta = total - seen.skipped_by_policy.get(policy, 0)
            if delta > 0:
                skipped.inc(delta)
                seen.skipped_by_policy[policy] = total
        if status.restore_seconds is not None and not seen.restore_seen:
            self.restore.labels(**self._labels, tier=status.restore_tier or "durable").observe(
                status.restore_seconds
            )
            seen.restore_seen = True
