"""Operator metrics: the names of docs/metrics.md, fed by plan observations and job statuses."""

from __future__ import annotations

import pathlib
import re

import pytest
from prometheus_client import generate_latest

from elastra_operator.metrics import OperatorMetrics
from elastra_operator.reconcile.actions import Observe


def _value(m: OperatorMetrics, name: str, labels: dict[str, str]) -> float | None:
    return m.registry.get_sample_value(name, labels)


@pytest.mark.parametrize(
    ("observation", "sample", "labels", "value"),
    [
        pytest.param(
            Observe(metric="rescales", labels={"reason": "ScaleUp"}),
            "elastra_rescales_total",
            {"reason": "ScaleUp"},
            1.0,
            id="rescales",
        ),
        pytest.param(
            Observe(metric="failures", labels={"reason": "NodeLost"}),
            "elastra_failures_total",
            {"reason": "NodeLost"},
            1.0,
            id="failures",
        ),
        pytest.param(
            Observe(metric="recovery_seconds", value=12.5),
            "elastra_recovery_seconds_sum",
            {},
            12.5,
            id="recovery",
        ),
        pytest.param(
            Observe(metric="steps_lost", value=7), "elastra_steps_lost_sum", {}, 7.0, id="steps-lost"
        ),
        pytest.param(
            Observe(metric="checkpoint_commit_seconds", value=1.5),
            "elastra_checkpoint_commit_seconds_count",
            {},
            1.0,
            id="commit-latency",
        ),
        pytest.param(
            Observe(metric="restore_seconds", value=2, labels={"tier": "s3"}),
            "elastra_restore_seconds_sum",
            {"tier": "s3"},
            2.0,
            id="restore-by-tier",
        ),
    ],
)
def test_observations(observation: Observe, sample: str, labels: dict[str, str], value: float) -> None:
    m = OperatorMetrics()
    m.observe("ns", "tj", observation)
    assert _value(m, sample, {"namespace": "ns", "job": "tj", **labels}) == value


def test_unknown_observation_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown metric"):
        OperatorMetrics().observe("ns", "tj", Observe(metric="nope"))


def test_job_status_gauges_and_phase_counts() -> None:
    m = OperatorMetrics()
    last = {"name": "tj-step-9", "step": 9, "bytes": 100, "time": "2026-01-01T00:00:00+00:00"}
    m.job_status("ns", "a", {"phase": "Running", "worldSize": 3, "generation": 2, "lastCheckpoint": last})
    m.job_status("ns", "b", {"phase": "Running"})
    m.job_status("ns", "c", {"phase": "Failed"})
    job = {"namespace": "ns", "job": "a"}
    assert _value(m, "elastra_job_world_size", job) == 3 and _value(m, "elastra_job_generation", job) == 2
    assert (
        _value(m, "elastra_checkpoint_last_step", job) == 9
        and _value(m, "elastra_checkpoint_bytes", job) == 100
    )
    assert _value(m, "elastra_checkpoint_last_commit_timestamp_seconds", job) == 1767225600.0
    assert _value(m, "elastra_jobs", {"phase": "Running"}) == 2
    # At zero before the first failure, so that rate() and increase() see the first one.
    assert _value(m, "elastra_recovery_seconds_count", job) == 0
    assert _value(m, "elastra_failures_total", {**job, "reason": "NodeLost"}) == 0
    assert _value(m, "elastra_rescales_total", {**job, "reason": "ScaleUp"}) == 0
    m.forget("ns", "a")
    assert (
        _value(m, "elastra_jobs", {"phase": "Running"}) == 1
        and _value(m, "elastra_job_world_size", job) is None
    )


def test_every_documented_operator_metric_is_exported(repo_root: pathlib.Path) -> None:
    doc = (repo_root / "docs" / "metrics.md").read_text()
    operator_section = doc.split("## Operator", 1)[1].split("## Trainer", 1)[0]
    documented = set(re.findall(r"^\| `(elastra_[a-z_]+)`", operator_section, flags=re.M))
    m = OperatorMetrics()
    for metric in ("rescales", "failures", "recovery_seconds", "steps_lost", "checkpoint_commit_seconds"):
        m.observe("ns", "tj", Observe(metric=metric, value=1, labels={"reason": "x"}))
    m.observe("ns", "tj", Observe(metric="restore_seconds", value=1, labels={"tier": "s3"}))
    m.job_status(
        "ns",
        "tj",
        {"phase": "Running", "lastCheckpoint": {"step": 1, "bytes": 1, "time": "2026-01-01T00:00:00+00:00"}},
    )
    exported = generate_latest(m.registry).decode()
    missing = [name for name in documented if f"\n{name}" not in exported and not exported.startswith(name)]
    assert documented and not missing, f"documented but not exported: {missing}"
