"""Pure checks of what a worker pod reports before the operator acts on it: a pod speaks only for its
own job, its own generation and its own storage root.

A commit report becomes a Checkpoint (which carries the operator's finalizer: deleting it deletes
storage) only when it came from the pod that holds global rank 0 of the job's current generation, its
generation is that generation, its step is at least the generation's restore step, and its uri is
exactly the job's own checkpoint root + `/step-<step>`. Anything else is ignored, with an Event.
"""

from __future__ import annotations

import enum

from elastra.api.membership import CommitReport

from .views import JobView, PodView


class Reason(enum.StrEnum):
    """Event reasons of this module."""

    COMMIT_REJECTED = "CommitRejected"
    """A commit report failed a check: nothing was adopted."""


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
    if m.restore is not None and commit.step < m.restore.step:
        return f"step {commit.step} is before the generation's restore step {m.restore.step}"
    return None
