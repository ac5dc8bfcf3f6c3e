"""Pure judgements outside the main plan: semantic spec checks, and whether a Checkpoint may be deleted."""

from __future__ import annotations

from collections.abc import Sequence

from elastra.api.trainingjob import Phase

from .manifests import gpu_request
from .views import CheckpointView, JobView, NodeView, PodView


def spec_problems(job: JobView) -> list[str]:
    """Pure: what is wrong with the job's spec that the CRD schema cannot say. Empty when it can start."""
    if job.spec is None:
        return [f"spec does not validate: {job.spec_error or 'unknown error'}"]
    spec = job.spec
    problems: list[str] = []
    containers = (spec.template.get("spec") or {}).get("containers") or []
    if not isinstance(containers, list) or not containers:
        problems.append("template.spec.containers must list at least one container")
    else:
        for i, container in enumerate(containers):
            if not isinstance(container, dict) or not container.get("image"):
                problems.append(f"template.spec.containers[{i}] needs an image")
    gpus = gpu_request(spec.template) if not problems else 0
    if gpus and spec.nproc_per_pod > gpus:
        problems.append(
            f"nprocPerPod ({spec.nproc_per_pod}) is more than the {gpus} GPU(s) each pod requests"
        )
    restore = spec.checkpoint.restore_from
    if restore is not None and job.restore_from is None and job.membership is None:
        problems.append(f"checkpoint.restoreFrom names Checkpoint {restore!r}, which does not exist")
    if job.endpoint_refused is not None:
        problems.append(job.endpoint_refused)
    if job.missing_secret is not None:
        problems.append(f"checkpoint.s3.credentialsSecret {job.missing_secret!r} does not exist")
    return problems


def deletion_refusal(
    checkpoint: CheckpointView, job: JobView | None, siblings: Sequence[CheckpointView]
) -> str | None:
    """Pure: why the storage of `checkpoint` must not be deleted now, or None when it may.

    The newest committed checkpoint of a job that is still running is protected (it is the restore point of
    the next generation), and so is the restore point of a generation that is restoring right now.
    """
    if job is None or job.deleting or job.status.phase.finished:
        return None
    mine = [c for c in siblings if c.job == checkpoint.job]
    newest = max(mine, key=lambda c: c.step, default=None)
    if newest is not None and newest.name == checkpoint.name:
        return f"{checkpoint.name} is the newest committed checkpoint of running job {job.name}"
    membership = job.membership
    restoring = job.status.phase in (Phase.RESTORING, Phase.STARTING, Phase.RESCALING)
    restore = membership.restore if membership is not None else None
    if restoring and membership is not None and restore is not None and restore.checkpoint == checkpoint.name:
        return f"{checkpoint.name} is being restored by generation {membership.generation}"
    return None


def teardown(pods: Sequence[PodView], nodes: Sequence[NodeView]) -> list[tuple[str, bool]]:
    """Pure: the worker pods to delete while a job is being deleted, as (name, force). A pod already
    deleting is deleted again with force only when its node is NotReady or gone (it would never finish)."""
    ready = {n.name for n in nodes if n.ready}
    out: list[tuple[str, bool]] = []
    for pod in pods:
        stranded = pod.node is not None and pod.node not in ready
        if not pod.deleting or stranded:
            out.append((pod.name, stranded))
    return out
