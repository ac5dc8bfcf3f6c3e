"""Pure: API objects (their JSON, as the API server returns it) → the `reconcile` views. Nothing here
trusts what it reads: a spec that does not validate is kept as an error for the pass to report, and an
agent's annotation that does not parse is ignored (the agent rewrites it)."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import ValidationError

from elastra.api import checkpoint as ckpt_api
from elastra.api.membership import (
    AGENT_ANNOTATION,
    COMMIT_ANNOTATION,
    MEMBERSHIP_KEY,
    AgentReport,
    CommitReport,
    Membership,
)
from elastra.api.trainingjob import TrainingJobSpec, TrainingJobStatus

from .reconcile import manifests
from .reconcile.views import RECORD_KEY, CheckpointView, JobView, NodeView, OperatorRecord, PodView

log = logging.getLogger("elastra.operator.kube")

_R = TypeVar("_R", AgentReport, CommitReport)


def _time(value: str | None) -> dt.datetime | None:
    return dt.datetime.fromisoformat(value) if value else None


def _report(model: type[_R], raw: str | None, where: str) -> _R | None:
    """Parse an agent-written annotation; a bad one is logged and ignored (the agent rewrites it)."""
    if not raw:
        return None
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        log.warning("ignoring unreadable %s on %s: %s", model.__name__, where, exc.errors()[:1])
        return None


def pod_view(raw: dict[str, Any]) -> PodView:
    """Pure: a Pod (API JSON) → PodView."""
    meta, spec, status = raw["metadata"], raw.get("spec") or {}, raw.get("status") or {}
    annotations = meta.get("annotations") or {}
    exit_code = None
    for cs in status.get("containerStatuses") or []:
        terminated = (cs.get("state") or {}).get("terminated")
        if terminated is not None:
            exit_code = terminated.get("exitCode")
            break
    name = meta["name"]
    created = _time(meta.get("creationTimestamp")) or dt.datetime.now(dt.UTC)
    return PodView(
        name=name,
        node=spec.get("nodeName") or None,
        phase=status.get("phase") or "Pending",
        ip=status.get("podIP") or None,
        created_at=created,
        deleting=meta.get("deletionTimestamp") is not None,
        deletion_deadline=_time(meta.get("deletionTimestamp")),
        reason=status.get("reason"),
        exit_code=exit_code,
        agent=_report(AgentReport, annotations.get(AGENT_ANNOTATION), name),
        commit=_report(CommitReport, annotations.get(COMMIT_ANNOTATION), name),
    )


def node_view(raw: dict[str, Any]) -> NodeView:
    """Pure: a Node → NodeView."""
    status = raw.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None)
    is_ready = ready is not None and ready.get("status") == "True"
    since = _time(ready.get("lastTransitionTime")) if ready is not None and not is_ready else None
    gpus = (status.get("allocatable") or {}).get(manifests.GPU, 0)
    return NodeView(
        name=raw["metadata"]["name"],
        ready=is_ready,
        not_ready_since=since,
        unschedulable=bool((raw.get("spec") or {}).get("unschedulable")),
        labels=dict(raw["metadata"].get("labels") or {}),
        gpus=int(gpus),
        taints=tuple(
            (t.get("key") or "", t.get("value") or "", t.get("effect") or "")
            for t in (raw.get("spec") or {}).get("taints") or []
            if t.get("effect") in ("NoSchedule", "NoExecute")
        ),
    )


def checkpoint_view(raw: dict[str, Any]) -> CheckpointView | None:
    """Pure: a Checkpoint → CheckpointView (None when its spec does not validate)."""
    try:
        spec = ckpt_api.CheckpointSpec.model_validate(raw.get("spec") or {})
    except ValidationError as exc:
        log.warning("ignoring invalid Checkpoint %s: %s", raw["metadata"]["name"], exc.errors()[:1])
        return None
    unverified = next(
        (
            c
            for c in ((raw.get("status") or {}).get("conditions") or [])
            if isinstance(c, dict) and c.get("type") == ckpt_api.VERIFIED and c.get("status") == "False"
        ),
        None,
    )
    return CheckpointView(
        name=raw["metadata"]["name"],
        job=spec.job,
        step=spec.step,
        uri=spec.uri,
        world_size=spec.world_size,
        tiers=tuple(t.name for t in spec.tiers),
        bytes=spec.bytes,
        committed_at=spec.committed_at,
        manifest_digest=spec.manifest_digest,
        generation=spec.generation,
        deleting=raw["metadata"].get("deletionTimestamp") is not None,
        verified=unverified is None,
        unverified_reason=None if unverified is None else str(unverified.get("reason") or ""),
    )


def job_view(
    raw: dict[str, Any],
    configmap: dict[str, Any] | None,
    *,
    restore_from: CheckpointView | None = None,
    missing_secret: str | None = None,
    create_failure: str | None = None,
    endpoint_refused: str | None = None,
) -> JobView:
    """Pure: a TrainingJob and its membership ConfigMap → JobView."""
    meta = raw["metadata"]
    spec: TrainingJobSpec | None = None
    error = None
    try:
        spec = TrainingJobSpec.model_validate(raw.get("spec") or {})
    except ValidationError as exc:
        error = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'spec'}: {e['msg']}" for e in exc.errors())
    membership = record = None
    version = None
    if configmap is not None:
        data = configmap.get("data") or {}
        version = configmap["metadata"].get("resourceVersion")
        try:
            membership = Membership.model_validate_json(data.get(MEMBERSHIP_KEY) or "{}")
            record = OperatorRecord.model_validate_json(data.get(RECORD_KEY) or "{}")
        except ValidationError as exc:
            log.warning("membership record of %s unreadable, rewriting from scratch: %s", meta["name"], exc)
            membership = None
    try:
        status = TrainingJobStatus.model_validate(raw.get("status") or {})
    except ValidationError:
        status = TrainingJobStatus()
    return JobView(
        namespace=meta["namespace"],
        name=meta["name"],
        uid=meta["uid"],
        created_at=_time(meta.get("creationTimestamp")) or dt.datetime.now(dt.UTC),
        spec=spec,
        spec_error=error,
        status=status,
        deleting=meta.get("deletionTimestamp") is not None,
        membership=membership,
        record=record or OperatorRecord(),
        membership_version=version,
        restore_from=restore_from,
        missing_secret=missing_secret,
        create_failure=create_failure,
        endpoint_refused=endpoint_refused,
    )


def departing(job: JobView, pods: Sequence[PodView]) -> bool:
    """Whether a pod of the job is being deleted or a member's pod is gone. Pure.

    The node index trails the pod watch by a moment; whether such a departure is a failure depends on the
    node (a drain cordons it, then evicts), so a pass that sees one reads the nodes fresh."""
    names = {p.name for p in pods}
    members = job.membership.members if job.membership is not None else ()
    return any(p.deleting for p in pods) or any(m.pod not in names for m in members)
