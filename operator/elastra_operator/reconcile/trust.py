"""Pure checks of what a worker pod reports before the operator acts on it: a pod speaks only for its
own job, its own generation and its own storage root.

A commit report becomes a Checkpoint (which carries the operator's finalizer: deleting it deletes
storage) only when it came from the pod that holds global rank 0 of the job's current generation, its
generation is that generation, its step is at least the generation's restore step (or the older step
its ranks fell back to, `restored_floor`), and its uri is
exactly the job's own checkpoint root + `/step-<step>`. Anything else is ignored, with an Event.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from elastra.api.membership import CommitReport

from .views import JobView, PodView

ALLOWED_ENDPOINTS_ENV = "ELASTRA_S3_ALLOWED_ENDPOINTS"
"""Comma-separated S3 endpoint URLs the operator may contact (chart: `s3.allowedEndpoints`)."""
_AWS_ENDPOINT = re.compile(r"https://s3([.-][a-z0-9-]+)*\.amazonaws\.com(\.cn)?/?")


def endpoint_refusal(endpoint: str | None, allowed: Sequence[str]) -> str | None:
    """Why the operator must not contact this S3 endpoint, or None. Pure.

    Unset (the AWS default) and AWS's own `https://s3…amazonaws.com` endpoints are always allowed;
    anything else only when listed exactly (trailing `/` ignored): a user must not make the operator
    send requests, with whatever credentials, to an address of their choosing."""
    if endpoint is None or _AWS_ENDPOINT.fullmatch(endpoint):
        return None
    if endpoint.rstrip("/") in {a.strip().rstrip("/") for a in allowed if a.strip()}:
        return None
    listed = ", ".join(a for a in allowed if a.strip()) or "none: AWS endpoints only"
    return f"S3 endpoint {endpoint!r} is not in the operator's allowed endpoints ({listed})"


def parse_allowed(raw: str | None) -> tuple[str, ...]:
    """`ELASTRA_S3_ALLOWED_ENDPOINTS` as a tuple. Pure."""
    return tuple(e.strip() for e in (raw or "").split(",") if e.strip())


def expected_commit_uri(job: JobView, step: int) -> str:
    """The only uri a commit of `step` by this job may name. Pure."""
    assert job.spec is not None
    return f"{job.spec.checkpoint.root_uri(job.namespace, job.name)}/step-{step}"


def commit_problem(job: JobView, pod: PodView, commit: CommitReport) -> str | None:
    """Why the commit report on `pod` must not be adopted, or None when it may. Pure."""
    expected = expected_commit_uri(job, commit.step)
    if commit.uri.rstrip("/") != expected:
        return f"uri {commit.uri!r} is not the job's own {expected!r}"
    m = job.membership
    if m is None or not m.members:
        return "no generation is running"
    rank0 = next((member.pod for member in m.members if member.rank_start == 0), None)
    if pod.name != rank0:
        return f"only the pod of global rank 0 ({rank0}) reports commits, not {pod.name}"
    if commit.generation != m.generation:
        return f"generation {commit.generation} is not the current generation {m.generation}"
    if m.restore is not None and commit.step < restored_floor(m.restore.step, pod, m.generation):
        return f"step {commit.step} is before the generation's restore step {m.restore.step}"
    return None


def restored_floor(restore_step: int, pod: PodView, generation: int) -> int:
    """The least step a commit of `generation` by rank 0's `pod` may carry. Pure.

    The generation's restore step, or lower when that pod's own agent reports its ranks fell back
    together past a corrupt restore point to an older checkpoint (`restoredStep`): they train on from
    there, and their commits below the chosen restore step are the job's progress, not a stale
    writer's. The same pod speaks for both reports, so this trusts it with nothing more."""
    agent = pod.agent
    if agent is None or agent.generation != generation or agent.restored_step is None:
        return restore_step
    return min(restore_step, agent.restored_step)
