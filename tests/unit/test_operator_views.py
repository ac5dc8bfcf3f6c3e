"""The kube layer's parsing of API JSON into plan() views: clear results for bad input, nothing lost."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from test_operator_support import NOW, agent, commit, job, membership, spec

from elastra.api.membership import Membership, MembershipPhase
from elastra_operator.parse import checkpoint_view, job_view, node_view, pod_view
from elastra_operator.reconcile.manifests import checkpoint_object
from elastra_operator.reconcile.views import OperatorRecord


def _pod(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "metadata": {"name": "tj-w-0", "creationTimestamp": "2026-01-01T00:00:00Z", "annotations": {}},
        "spec": {"nodeName": "n0"},
        "status": {"phase": "Running", "podIP": "10.0.0.1"},
    }
    for key, value in over.items():
        raw[key] = {**raw[key], **value}
    return raw


@pytest.mark.parametrize(
    ("raw", "field", "expected"),
    [
        pytest.param(_pod(), "phase", "Running", id="phase"),
        pytest.param(_pod(), "node", "n0", id="node"),
        pytest.param(_pod(spec={"nodeName": None}), "node", None, id="unscheduled"),
        pytest.param(
            _pod(metadata={"deletionTimestamp": "2026-01-01T00:01:00Z"}), "deleting", True, id="deleting"
        ),
        pytest.param(
            _pod(status={"phase": "Failed", "reason": "Evicted"}), "reason", "Evicted", id="evicted"
        ),
        pytest.param(
            _pod(
                status={
                    "phase": "Failed",
                    "containerStatuses": [{"state": {"terminated": {"exitCode": 137}}}],
                }
            ),
            "exit_code",
            137,
            id="exit-code",
        ),
        pytest.param(
            _pod(metadata={"annotations": {"elastra.dev/agent": "{not json"}}),
            "agent",
            None,
            id="bad-agent-json",
        ),
        pytest.param(
            _pod(
                metadata={
                    "annotations": {"elastra.dev/agent": json.dumps({"generation": -1, "state": "Running"})}
                }
            ),
            "agent",
            None,
            id="invalid-agent-report",
        ),
        pytest.param(
            _pod(metadata={"annotations": {"elastra.dev/commit": '{"step": 1}'}}),
            "commit",
            None,
            id="partial-commit",
        ),
    ],
)
def test_pod_view(raw: dict[str, Any], field: str, expected: Any) -> None:
    assert getattr(pod_view(raw), field) == expected


def test_pod_view_reads_reports() -> None:
    report, done = agent(3, "Running", 42), commit(40)
    raw = _pod(
        metadata={
            "annotations": {"elastra.dev/agent": report.to_json(), "elastra.dev/commit": done.to_json()}
        }
    )
    view = pod_view(raw)
    assert view.agent == report and view.commit == done


@pytest.mark.parametrize(
    ("conditions", "spec_", "ready", "since", "cordoned"),
    [
        pytest.param([{"type": "Ready", "status": "True"}], {}, True, None, False, id="ready"),
        pytest.param(
            [{"type": "Ready", "status": "Unknown", "lastTransitionTime": "2026-01-01T00:00:05Z"}],
            {},
            False,
            dt.datetime(2026, 1, 1, 0, 0, 5, tzinfo=dt.UTC),
            False,
            id="notready-since",
        ),
        pytest.param([], {"unschedulable": True}, False, None, True, id="no-condition-cordoned"),
    ],
)
def test_node_view(
    conditions: list[dict[str, str]], spec_: dict[str, Any], ready: bool, since: Any, cordoned: bool
) -> None:
    raw = {
        "metadata": {"name": "n0", "labels": {"a": "b"}},
        "spec": spec_,
        "status": {"conditions": conditions, "allocatable": {"nvidia.com/gpu": "2"}},
    }
    view = node_view(raw)
    assert (view.ready, view.not_ready_since, view.unschedulable, view.gpus) == (ready, since, cordoned, 2)


def _job(spec_: dict[str, Any]) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "tj",
            "namespace": "ns",
            "uid": "u",
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "spec": spec_,
        "status": {"phase": "Running", "kopf": {"progress": {}}},
    }


def test_job_view_reports_field_level_spec_errors() -> None:
    view = job_view(_job(spec(replicas={"min": 0, "max": 2})), None)
    assert view.spec is None and view.spec_error is not None and "replicas.min" in view.spec_error


def test_job_view_reads_membership_and_record() -> None:
    m = Membership(generation=4, phase=MembershipPhase.HOLD, world_size=0)
    record = OperatorRecord(failures=2, started_at=NOW)
    cm = {
        "metadata": {"resourceVersion": "99"},
        "data": {"membership.json": m.to_json(), "operator.json": record.model_dump_json(by_alias=True)},
    }
    view = job_view(_job(spec()), cm)
    assert view.membership == m and view.record == record and view.membership_version == "99"
    assert view.status.phase == "Running"


def test_job_view_with_unreadable_membership_starts_over_but_keeps_version() -> None:
    cm = {"metadata": {"resourceVersion": "5"}, "data": {"membership.json": '{"generation": "x"}'}}
    view = job_view(_job(spec()), cm)
    assert view.membership is None and view.membership_version == "5"


def test_checkpoint_view_refuses_a_bad_spec() -> None:
    raw = {"metadata": {"name": "c"}, "spec": {"job": "tj", "step": 1, "uri": "/etc"}}
    assert checkpoint_view(raw) is None


def test_node_view_keeps_only_scheduling_taints() -> None:
    raw = {
        "metadata": {"name": "n0"},
        "spec": {
            "taints": [
                {"key": "a", "effect": "NoSchedule"},
                {"key": "b", "value": "v", "effect": "PreferNoSchedule"},
            ]
        },
        "status": {},
    }
    assert node_view(raw).taints == (("a", "", "NoSchedule"),)


@pytest.mark.parametrize(
    ("conditions", "verified"),
    [
        pytest.param([], True, id="no-condition-is-verified"),
        pytest.param(
            [{"type": "Verified", "status": "False", "reason": "RestoreFailed"}], False, id="restore-failed"
        ),
        pytest.param(
            [{"type": "Verified", "status": "True", "reason": "Recommitted"}], True, id="recommitted-again"
        ),
    ],
)
def test_checkpoint_view_reads_the_save_it_describes(
    conditions: list[dict[str, Any]], verified: bool
) -> None:
    """The digest and generation are what `commits.recommitted` compares a new commit with."""
    report = commit(60).model_copy(update={"manifest_digest": "sha256:beef", "generation": 3})
    raw = checkpoint_object(job(m=membership(3, ["tj-w-0"])), report)
    raw["status"] = {"conditions": conditions}
    view = checkpoint_view(raw)
    assert view is not None
    assert (view.manifest_digest, view.generation, view.verified) == ("sha256:beef", 3, verified)
