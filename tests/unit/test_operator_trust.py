"""A pod speaks only for its own job: commit reports that fail a check are not adopted (no Checkpoint,
hence no finalizer that could delete storage elsewhere) and leave a CommitRejected Event."""

from __future__ import annotations

import pytest
from test_operator_support import agent, commit, job, membership, pod

from elastra.api.membership import CommitReport
from elastra_operator.reconcile import commits
from elastra_operator.reconcile.actions import CreateObject, Event


def _with(step: int, **over: object) -> CommitReport:
    return commit(step).model_copy(update=over)


MEMBERS = ["tj-w-0", "tj-w-1"]


@pytest.mark.parametrize(
    ("m", "on_pod", "report", "problem"),
    [
        pytest.param(membership(1, MEMBERS), 0, commit(60), None, id="own-root-rank0-current-generation"),
        pytest.param(
            membership(1, MEMBERS),
            0,
            _with(7, uri="/other/prod/step-7"),
            "is not the job's own",
            id="outside-root",
        ),
        pytest.param(
            membership(1, MEMBERS),
            0,
            _with(60, uri="/ck/ns/tj/../other/step-60"),
            "is not the job's own",
            id="dotdot",
        ),
        pytest.param(
            membership(1, MEMBERS),
            0,
            _with(60, uri="/ck/ns/tj/step-61"),
            "is not the job's own",
            id="step-mismatch",
        ),
        pytest.param(
            membership(1, MEMBERS),
            0,
            _with(60, uri="/ck/ns/tj2/step-60"),
            "is not the job's own",
            id="sibling-job-root",
        ),
        pytest.param(membership(1, MEMBERS), 1, commit(60), "only the pod of global rank 0", id="not-rank0"),
        pytest.param(
            membership(2, MEMBERS), 0, commit(60), "not the current generation", id="stale-generation"
        ),
        pytest.param(
            membership(1, MEMBERS, restore=50),
            0,
            commit(40),
            "before the generation's restore step",
            id="before-restore",
        ),
        pytest.param(None, 0, commit(60), "no generation is running", id="no-generation"),
    ],
)
def test_commit_checks(m: object, on_pod: int, report: CommitReport, problem: str | None) -> None:
    the_job = job(m=m)
    found = commits.record(the_job, [pod(on_pod, commit=report)], [])
    created = [a.manifest["spec"]["uri"] for a in found.creates if isinstance(a, CreateObject)]
    rejected = [a.message for a in found.events if isinstance(a, Event) and a.reason == "CommitRejected"]
    if problem is None:
        assert created == [report.uri] and not rejected
    else:
        assert created == [] and len(rejected) == 1 and problem in rejected[0]
        assert all(c.uri != report.uri for c in found.checkpoints)


def test_a_rejected_commits_event_is_bounded_whatever_the_pod_wrote() -> None:
    """The Event quotes the pod's uri: a 250 kB one must not make a 250 kB Event every pass."""
    found = commits.record(job(m=membership(1, MEMBERS)), [pod(0, commit=_with(60, uri="/x" * 125_000))], [])
    rejected = [a.message for a in found.events if isinstance(a, Event) and a.reason == "CommitRejected"]
    assert len(rejected) == 1 and len(rejected[0]) <= commits.EVENT_CHARS


FELL_BACK = agent(1, "Running", 45, restoredStep=30, restoreSkipped=[{"step": 50, "reason": "checksum"}])
"""Rank 0's agent: generation 1's ranks fell back together past the corrupt step 50 to step 30."""


@pytest.mark.parametrize(
    ("m", "on_pod", "report", "problem"),
    [
        pytest.param(membership(1, MEMBERS, restore=50), 0, commit(40), None, id="after-the-fallback"),
        pytest.param(
            membership(1, MEMBERS, restore=50),
            0,
            commit(20),
            "before the generation's restore step",
            id="before-the-step-it-fell-back-to",
        ),
        pytest.param(
            membership(2, MEMBERS, restore=50),
            0,
            _with(40, generation=2),
            "before the generation's restore step",
            id="fallback-reported-for-an-older-generation",
        ),
    ],
)
def test_commits_after_a_restore_fallback(
    m: object, on_pod: int, report: CommitReport, problem: str | None
) -> None:
    """Ranks that fell back below the restore step train on from there: their commits are adopted."""
    found = commits.record(job(m=m), [pod(on_pod, commit=report, report=FELL_BACK)], [])
    created = [a.manifest["spec"]["uri"] for a in found.creates if isinstance(a, CreateObject)]
    rejected = [a.message for a in found.events if isinstance(a, Event) and a.reason == "CommitRejected"]
    if problem is None:
        assert created == [report.uri] and not rejected
    else:
        assert created == [] and len(rejected) == 1 and problem in rejected[0]


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        pytest.param(None, "Starting", id="no-failure"),
        pytest.param(
            'Pod tj-w-0: 403 Forbidden: serviceaccount "x" not found', "CreateFailed", id="create-failed"
        ),
    ],
)
def test_a_failed_create_is_the_ready_condition(failure: str | None, reason: str) -> None:
    from dataclasses import replace

    from test_operator_support import NOW, node, summarize

    from elastra_operator.reconcile.plan import plan

    view = replace(job(m=membership(1, MEMBERS)), create_failure=failure)
    out = summarize(plan(view, [pod(0), pod(1)], [node(0), node(1)], [], NOW))
    assert out.status is not None
    ready = next(c for c in out.status["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == reason and ready["status"] == ("False" if failure else ready["status"])
    if failure:
        assert ready["message"] == failure


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        pytest.param("gpt-tiny", True, id="plain"),
        pytest.param("a" * 52, True, id="longest"),
        pytest.param("a" * 53, False, id="too-long-for-pod-hostnames"),
        pytest.param("team.job", False, id="dots"),
    ],
)
def test_the_crd_refuses_job_names_that_cannot_name_pods(name: str, ok: bool) -> None:
    from elastra_operator.crdgen import trainingjob_crd
    from localcluster import celrules

    schema = trainingjob_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    root = {"type": "object", "x-kubernetes-validations": schema["x-kubernetes-validations"]}
    errors = celrules.check(root, {"metadata": {"name": name}}, None, skip_status=True)
    assert (not errors) is ok, errors


@pytest.mark.parametrize(
    ("endpoint", "allowed", "ok"),
    [
        pytest.param(None, (), True, id="aws-default"),
        pytest.param("https://s3.eu-west-1.amazonaws.com", (), True, id="aws-regional"),
        pytest.param("https://s3.amazonaws.com.evil.example", (), False, id="aws-lookalike"),
        pytest.param("http://169.254.169.254", (), False, id="metadata-service"),
        pytest.param("http://minio.storage:9000", ("http://minio.storage:9000/",), True, id="listed"),
        pytest.param("http://minio.storage:9001", ("http://minio.storage:9000",), False, id="other-port"),
    ],
)
def test_s3_endpoint_allow_list(endpoint: str | None, allowed: tuple[str, ...], ok: bool) -> None:
    from elastra_operator.reconcile.trust import endpoint_refusal

    assert (endpoint_refusal(endpoint, allowed) is None) is ok


def test_a_job_outside_the_allow_list_is_refused_before_anything_starts() -> None:
    from dataclasses import replace

    from test_operator_support import NOW, node, summarize

    from elastra_operator.reconcile.plan import plan

    refusal = "S3 endpoint 'http://10.0.0.1' is not in the operator's allowed endpoints (none)"
    out = summarize(plan(replace(job(), endpoint_refused=refusal), [], [node(0), node(1)], [], NOW))
    assert out.created_kinds == [] and "InvalidSpec" in out.events
    assert out.status is not None
    valid = next(c for c in out.status["conditions"] if c["type"] == "Valid")
    assert valid["status"] == "False" and refusal in valid["message"]
