"""Pure plans for a job that cannot start (invalid spec) or has finished (cleanup, TTL)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from elastra.api.trainingjob import CleanPodPolicy, Phase

from .actions import Action, DeleteJob, DeletePod, Event, PatchStatus
from .reasons import Reason
from .status import changed, set_condition, status_body
from .views import JobView, PodView


def invalid(job: JobView, problems: list[str], now: dt.datetime) -> tuple[Action, ...]:
    """Pure: report the problems (condition Valid=False, one Event per new message); create nothing."""
    message = "; ".join(problems)
    old = job.status.condition("Valid")
    conditions = set_condition(
        job.status.conditions,
        type_="Valid",
        status=False,
        reason=Reason.INVALID_SPEC,
        message=message,
        now=now,
    )
    phase = job.status.phase if job.membership is not None else Phase.PENDING
    status = job.status.model_copy(update={"conditions": conditions, "phase": phase})
    if not changed(job.status, status):
        return ()
    actions: list[Action] = [PatchStatus(status=status_body(status))]
    if old is None or old.status != "False" or old.message != message:
        actions.append(
            Event(reason=Reason.INVALID_SPEC, message=f"the job cannot start: {message}", warning=True)
        )
    return tuple(actions)


def after_finish(job: JobView, pods: Sequence[PodView], now: dt.datetime) -> tuple[Action, ...]:
    """Pure: cleanPodPolicy, then the TTL of a finished job."""
    assert job.spec is not None
    policy = job.spec.run_policy
    actions: list[Action] = []
    for pod in pods:
        if pod.deleting:
            continue
        if policy.clean_pod_policy is CleanPodPolicy.ALL or (
            policy.clean_pod_policy is CleanPodPolicy.RUNNING and pod.phase in ("Pending", "Running")
        ):
            actions.append(DeletePod(name=pod.name, reason=f"cleanPodPolicy {policy.clean_pod_policy}"))
    done = job.status.completion_time
    ttl = policy.ttl_seconds_after_finished
    if done is not None and ttl is not None and (now - done).total_seconds() >= ttl:
        actions.append(DeleteJob(reason=f"ttlSecondsAfterFinished ({ttl}s) passed"))
    return tuple(actions)
