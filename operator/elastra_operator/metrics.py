"""The operator's Prometheus metrics (names fixed by docs/metrics.md), fed from plans and statuses."""

from __future__ import annotations

import contextlib
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from elastra.api.trainingjob import Phase

from .reconcile.actions import Observe
from .reconcile.reasons import Metric

_JOB = ("namespace", "job")
_SECONDS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800)
_STEPS = (0, 1, 5, 10, 50, 100, 500, 1000, 5000, 10000)
RESCALE_REASONS = (
    "Start", "Failure", "Drain", "ScaleUp", "ScaleDown", "Suspend", "Resume", "CapacityRestored",
)  # fmt: skip
"""The reasons `reconcile.plan` writes a generation for, exported at zero from a job's first pass."""
FAILURE_REASONS = (
    "NodeLost", "PodDeleted", "Evicted", "PodFailed", "PodUnknown",
    "WorkerFailed", "PeerLost", "Unresponsive",
)  # fmt: skip
"""The common failure causes (`ExitCode<n>` is open-ended: it appears with its first failure)."""


class OperatorMetrics:
    """All operator metrics on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.jobs = Gauge("elastra_jobs", "TrainingJobs by phase", ["phase"], registry=r)
        self.world_size = Gauge("elastra_job_world_size", "current world size", _JOB, registry=r)
        self.generation = Gauge("elastra_job_generation", "current generation", _JOB, registry=r)
        self.rescales = Counter(
            "elastra_rescales_total", "rescales (new generations) by reason", [*_JOB, "reason"], registry=r
        )
        self.failures = Counter(
            "elastra_failures_total", "failures counted against backoffLimit", [*_JOB, "reason"], registry=r
        )
        self.recovery = Histogram(
            "elastra_recovery_seconds",
            "failure detected to training resumed",
            _JOB,
            buckets=_SECONDS,
            registry=r,
        )
        self.steps_lost = Histogram(
            "elastra_steps_lost", "steps redone after a failure", _JOB, buckets=_STEPS, registry=r
        )
        self.commit_seconds = Histogram(
            "elastra_checkpoint_commit_seconds", "save requested to manifest committed", _JOB,
            buckets=_SECONDS, registry=r,
        )  # fmt: skip
        self.checkpoint_bytes = Gauge(
            "elastra_checkpoint_bytes", "bytes of the newest committed checkpoint", _JOB, registry=r
        )
        self.last_commit = Gauge(
            "elastra_checkpoint_last_commit_timestamp_seconds",
            "unix time of the newest commit",
            _JOB,
            registry=r,
        )
        self.last_step = Gauge("elastra_checkpoint_last_step", "step of the newest commit", _JOB, registry=r)
        self.restore = Histogram(
            "elastra_restore_seconds",
            "restore time by source tier",
            [*_JOB, "tier"],
            buckets=_SECONDS,
            registry=r,
        )
        self._phases: dict[tuple[str, str], str] = {}
        for phase in Phase:
            self.jobs.labels(phase=phase.value).set(0)

    def observe(self, namespace: str, job: str, observation: Observe) -> None:
        """Record one observation a plan made."""
        value, extra = observation.value, observation.labels
        match observation.metric:
            case Metric.RESCALES:
                self.rescales.labels(namespace, job, extra.get("reason", "")).inc()
            case Metric.FAILURES:
                self.failures.labels(namespace, job, extra.get("reason", "")).inc()
            case Metric.RECOVERY_SECONDS:
                self.recovery.labels(namespace, job).observe(value)
            case Metric.STEPS_LOST:
                self.steps_lost.labels(namespace, job).observe(value)
            case Metric.CHECKPOINT_COMMIT_SECONDS:
                self.commit_seconds.labels(namespace, job).observe(value)
            case Metric.RESTORE_SECONDS:
                self.restore.labels(namespace, job, extra.get("tier", "unknown")).observe(value)
            case other:
                raise ValueError(f"unknown metric observation {other!r}")

    def job_status(self, namespace: str, job: str, status: dict[str, Any]) -> None:
        """Refresh the gauges of one job from its (camelCase) status."""
        self._phases[(namespace, job)] = status.get("phase") or Phase.PENDING.value
        # Per-job series exist at zero from the job's first pass on: rate() and increase() see an
        # observation only as a change from an earlier scrape, so a series that first appears with the
        # first failure (or recovery, or rescale of a reason) would never show it on the dashboard or in
        # the alerts.
        for histogram in (self.recovery, self.steps_lost, self.commit_seconds):
            histogram.labels(namespace, job)
        for reason in RESCALE_REASONS:
            self.rescales.labels(namespace, job, reason)
        for reason in FAILURE_REASONS:
            self.failures.labels(namespace, job, reason)
        self.world_size.labels(namespace, job).set(status.get("worldSize") or 0)
        self.generation.labels(namespace, job).set(status.get("generation") or 0)
        last = status.get("lastCheckpoint")
        if last:
            self.checkpoint_bytes.labels(namespace, job).set(last.get("bytes") or 0)
            self.last_step.labels(namespace, job).set(last.get("step") or 0)
            if last.get("time"):
                from datetime import datetime

                self.last_commit.labels(namespace, job).set(datetime.fromisoformat(last["time"]).timestamp())
        self._count_phases()

    def forget(self, namespace: str, job: str) -> None:
        """The job is gone: drop its per-job gauges and its phase count."""
        self._phases.pop((namespace, job), None)
        for gauge in (
            self.world_size,
            self.generation,
            self.checkpoint_bytes,
            self.last_commit,
            self.last_step,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, job)
        self._count_phases()

    def _count_phases(self) -> None:
        counts = dict.fromkeys((p.value for p in Phase), 0)
        for phase in self._phases.values():
            counts[phase] = counts.get(phase, 0) + 1
        for phase, n in counts.items():
            self.jobs.labels(phase=phase).set(n)

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve `/metrics` on `port` from a background thread."""
        start_http_server(port, addr=addr, registry=self.registry)
