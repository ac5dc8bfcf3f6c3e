"""The thin I/O layer: read the API into `reconcile` views, and apply `reconcile` actions to the API.

Every write is idempotent (create of an existing name and delete of a missing one are fine) except the
membership record, which is replaced only at the resourceVersion last read: two operators racing (Kopf
peering hand-over, a restart) cannot both advance a generation.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import kubernetes
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from elastra.api import GROUP, VERSION
from elastra.api import checkpoint as ckpt_api
from elastra.api import trainingjob as tj_api
from elastra.api.membership import (
    AGENT_ANNOTATION,
    COMMIT_ANNOTATION,
    JOB_LABEL,
    MEMBERSHIP_KEY,
    ROLE_LABEL,
    AgentReport,
    CommitReport,
    Membership,
    membership_configmap_name,
)
from elastra.api.trainingjob import TrainingJobSpec, TrainingJobStatus, is_location

from .reconcile import manifests, trust
from .reconcile.actions import (
    Action,
    ApplyObject,
    CreateObject,
    DeleteCheckpoint,
    DeleteJob,
    DeletePod,
    Event,
    MarkUnverified,
    Observe,
    PatchStatus,
    Reverify,
    WriteMembership,
)
from .reconcile.status import CREATE_FAILED
from .reconcile.views import RECORD_KEY, CheckpointView, JobView, NodeView, OperatorRecord, PodView

log = logging.getLogger("elastra.operator.kube")
COMPONENT = "elastra-operator"


_R = TypeVar("_R", AgentReport, CommitReport)


CREATE_BACKOFF_MAX_S = 300.0


@dataclass(frozen=True, slots=True)
class CreateFailure:
    """A create the API refused (anything but 409), and when to try again."""

    message: str
    """Kind, name and the API's message."""
    attempts: int
    """Failed passes in a row."""
    retry_at: float
    """time.monotonic() before which no create is tried for the job."""


def api_message(exc: ApiException) -> str:
    """The Status message of an API error (its reason and code when the body has none)."""
    try:
        body = json.loads(exc.body or "{}")
    except ValueError:
        body = {}
    message = body.get("message") if isinstance(body, dict) else None
    return f"{exc.status} {exc.reason}: {message}" if message else f"{exc.status} {exc.reason}"


class _Creates:
    """The creates of one pass: skipped while the job backs off after a failed create; the first
    failure stops the others (later ones depend on earlier ones: a pod on its ServiceAccount)."""

    def __init__(self, kube: Kube, job: JobView) -> None:
        self.kube, self.job = kube, job
        failure = kube.create_failures.get((job.namespace, job.name))
        self.open = failure is None or time.monotonic() >= failure.retry_at
        self.all_made = True

    def run(self, action: CreateObject | ApplyObject) -> None:
        if not self.open:
            self.all_made = False
            return
        try:
            if isinstance(action, ApplyObject):
                self.kube._apply(self.job.namespace, action.manifest)
            else:
                self.kube._create(self.job.namespace, action.manifest)
        except ApiException as exc:
            self.open = self.all_made = False
            self.kube._create_failed(self.job, action.manifest, exc)

    def done(self) -> None:
        if self.all_made:
            self.kube.create_failures.pop((self.job.namespace, self.job.name), None)


class Conflict(RuntimeError):
    """The membership record changed since it was read: drop this pass, plan again from fresh state."""


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
        verified=not any(
            isinstance(c, dict) and c.get("type") == ckpt_api.VERIFIED and c.get("status") == "False"
            for c in ((raw.get("status") or {}).get("conditions") or [])
        ),
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


@dataclass(frozen=True, slots=True, kw_only=True)
class Observed:
    """Everything `plan()` needs about one job."""

    job: JobView
    pods: tuple[PodView, ...]
    nodes: tuple[NodeView, ...]
    checkpoints: tuple[CheckpointView, ...]


class Kube:
    """Reads and writes through one kubernetes ApiClient (synchronous; Kopf runs it in a thread)."""

    def __init__(
        self, client: kubernetes.client.ApiClient, *, allowed_endpoints: tuple[str, ...] = ()
    ) -> None:
        self.allowed_endpoints = allowed_endpoints
        """S3 endpoints beyond AWS's that jobs may name (`trust.endpoint_refusal`)."""
        self.api = client
        self.core = kubernetes.client.CoreV1Api(client)
        self.custom = kubernetes.client.CustomObjectsApi(client)
        self.rbac = kubernetes.client.RbacAuthorizationV1Api(client)
        self.create_failures: dict[tuple[str, str], CreateFailure] = {}
        """Per job: the last failed create, retried with backoff (this process's memory only)."""

    # ------------------------------------------------------------------ reads
    def _raw(self, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        response = call(*args, _preload_content=False, **kwargs)
        body: dict[str, Any] = json.loads(response.data)
        return body

    def _maybe(self, call: Any, *args: Any, **kwargs: Any) -> dict[str, Any] | None:
        try:
            return self._raw(call, *args, **kwargs)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_job(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._maybe(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, tj_api.PLURAL, name
        )

    def get_checkpoint(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._maybe(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, ckpt_api.PLURAL, name
        )

    def list_checkpoints(self, namespace: str, job: str) -> tuple[CheckpointView, ...]:
        raw = self._raw(
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            ckpt_api.PLURAL,
            label_selector=f"{JOB_LABEL}={job}",
        )
        views = (checkpoint_view(item) for item in raw.get("items") or [])
        return tuple(v for v in views if v is not None and v.job == job)

    def get_configmap(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._maybe(self.core.read_namespaced_config_map, name, namespace)

    def secret_exists(self, namespace: str, name: str) -> bool:
        return self._maybe(self.core.read_namespaced_secret, name, namespace) is not None

    def worker_pods(self, namespace: str, job: str) -> tuple[PodView, ...]:
        selector = f"{JOB_LABEL}={job},{ROLE_LABEL}=worker"
        pods = self._raw(self.core.list_namespaced_pod, namespace, label_selector=selector)
        return tuple(pod_view(p) for p in pods.get("items") or [])

    def nodes(self) -> tuple[NodeView, ...]:
        return tuple(node_view(n) for n in self._raw(self.core.list_node).get("items") or [])

    def delete_pod(self, namespace: str, name: str, *, force: bool = False) -> None:
        grace = 0 if force else None
        self._ignore_404(self.core.delete_namespaced_pod, name, namespace, grace_period_seconds=grace)

    def observe(
        self, namespace: str, name: str, *, nodes: tuple[NodeView, ...] | None = None
    ) -> Observed | None:
        """Read one job and everything about it; None when the job is gone. `nodes`: the nodes as an
        index already holds them (None: list them; they are listed anyway when a pod is departing)."""
        raw = self.get_job(namespace, name)
        if raw is None:
            return None
        cm = self.get_configmap(namespace, membership_configmap_name(name))
        spec = (raw.get("spec") or {}).get("checkpoint") or {}
        restore_from = None
        if spec.get("restoreFrom") and not is_location(str(spec["restoreFrom"])):  # else pretrained weights
            found = self.get_checkpoint(namespace, spec["restoreFrom"])
            restore_from = checkpoint_view(found) if found is not None else None
        refused = trust.endpoint_refusal((spec.get("s3") or {}).get("endpoint"), self.allowed_endpoints)
        secret = (spec.get("s3") or {}).get("credentialsSecret")
        # A refused endpoint is all the job gets told: not even its Secret is read.
        missing = None
        if secret and refused is None and not self.secret_exists(namespace, secret):
            missing = secret
        failure = self.create_failures.get((namespace, name))
        job = job_view(
            raw,
            cm,
            restore_from=restore_from,
            missing_secret=missing,
            create_failure=failure.message if failure is not None else None,
            endpoint_refused=refused,
        )
        pods = self.worker_pods(namespace, name)
        if nodes is None or departing(job, pods):
            nodes = self.nodes()
        return Observed(job=job, pods=pods, nodes=nodes, checkpoints=self.list_checkpoints(namespace, name))

    # ------------------------------------------------------------------ writes
    def apply(self, job: JobView, actions: Sequence[Action]) -> list[Observe]:
        """Apply the API actions in order; return the metric observations for the caller to record.

        Raises `Conflict` when the membership record moved under us: nothing after it is applied.
        """
        observations: list[Observe] = []
        creates = _Creates(self, job)
        for action in actions:
            match action:
                case CreateObject() | ApplyObject():
                    creates.run(action)
                case WriteMembership():
                    self._write_membership(job, action)
                case DeletePod(name=name, reason=reason, force=force):
                    log.info("deleting pod %s/%s: %s", job.namespace, name, reason)
                    self.delete_pod(job.namespace, name, force=force)
                case DeleteCheckpoint(name=name, reason=reason):
                    log.info("deleting checkpoint %s/%s: %s", job.namespace, name, reason)
                    self._ignore_404(
                        self.custom.delete_namespaced_custom_object,
                        GROUP,
                        VERSION,
                        job.namespace,
                        ckpt_api.PLURAL,
                        name,
                    )
                case MarkUnverified(name=name, reason=reason, message=message):
                    log.warning("checkpoint %s/%s unusable: %s", job.namespace, name, message)
                    self.mark_checkpoint_unverified(job.namespace, name, reason, message)
                case Reverify():
                    log.info("checkpoint %s/%s usable again: %s", job.namespace, action.name, action.message)
                    self.reverify_checkpoint(job.namespace, action)
                case PatchStatus(status=status):
                    self.patch_job_status(job.namespace, job.name, status)
                case DeleteJob(reason=reason):
                    log.info("deleting job %s/%s: %s", job.namespace, job.name, reason)
                    self._ignore_404(
                        self.custom.delete_namespaced_custom_object,
                        GROUP,
                        VERSION,
                        job.namespace,
                        tj_api.PLURAL,
                        job.name,
                    )
                case Event():
                    self.post_event(job.namespace, self.involved(job), action)
                case Observe():
                    observations.append(action)
        creates.done()
        return observations

    def _create_failed(self, job: JobView, manifest: dict[str, Any], exc: ApiException) -> None:
        """Remember a failed create (backoff 2 s doubling to 5 min) and say why in an Event."""
        key = (job.namespace, job.name)
        attempts = (self.create_failures[key].attempts + 1) if key in self.create_failures else 1
        message = f"{manifest['kind']} {manifest['metadata']['name']}: {api_message(exc)}"
        delay = min(CREATE_BACKOFF_MAX_S, 2.0**attempts)
        self.create_failures[key] = CreateFailure(message, attempts, time.monotonic() + delay)
        log.warning("%s/%s: create failed (retry in %.0fs): %s", *key, delay, message)
        self.post_event(
            job.namespace, self.involved(job), Event(reason=CREATE_FAILED, message=message, warning=True)
        )

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        # Merge patch: name every field so that ones which became empty are cleared, not kept.
        body = {key: None for key in TrainingJobStatus.model_json_schema(by_alias=True)["properties"]}
        body.update(status)
        self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, tj_api.PLURAL, name, {"status": body}
        )

    def _create(self, namespace: str, manifest: dict[str, Any]) -> None:
        kind = manifest["kind"]
        try:
            if kind == "Pod":
                self.core.create_namespaced_pod(namespace, manifest)
            elif kind == "Service":
                self.core.create_namespaced_service(namespace, manifest)
            elif kind == "ServiceAccount":
                self.core.create_namespaced_service_account(namespace, manifest)
            elif kind == "Role":
                self.rbac.create_namespaced_role(namespace, manifest)
            elif kind == "RoleBinding":
                self.rbac.create_namespaced_role_binding(namespace, manifest)
            else:
                plural = {ckpt_api.KIND: ckpt_api.PLURAL}[kind]
                self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, plural, manifest)
        except ApiException as exc:
            if exc.status != 409:
                raise
            return
        log.info("created %s %s/%s", kind, namespace, manifest["metadata"]["name"])

    def _apply(self, namespace: str, manifest: dict[str, Any]) -> None:
        """Create the job's Role, or bring an existing one's rules up to date."""
        assert manifest["kind"] == "Role"
        name = manifest["metadata"]["name"]
        try:
            current = self.rbac.read_namespaced_role(name, namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            self._create(namespace, manifest)
            return
        rules = self.api.sanitize_for_serialization(current.rules or [])
        if rules != manifest["rules"]:
            self.rbac.patch_namespaced_role(name, namespace, {"rules": manifest["rules"]})
            log.info("updated Role %s/%s", namespace, name)

    def _ignore_404(self, call: Any, *args: Any, **kwargs: Any) -> None:
        try:
            call(*args, **{k: v for k, v in kwargs.items() if v is not None})
        except ApiException as exc:
            if exc.status != 404:
                raise

    def _write_membership(self, job: JobView, action: WriteMembership) -> None:
        name = membership_configmap_name(job.name)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": name,
                "namespace": job.namespace,
                "labels": manifests.labels(job, "membership"),
                "ownerReferences": [manifests.owner_reference(job)],
            },
            "data": {
                MEMBERSHIP_KEY: action.membership.to_json(),
                RECORD_KEY: action.record.model_dump_json(by_alias=True),
            },
        }
        try:
            if action.expected_version is None:
                self.core.create_namespaced_config_map(job.namespace, body)
            else:
                body["metadata"]["resourceVersion"] = action.expected_version
                self.core.replace_namespaced_config_map(name, job.namespace, body)
        except ApiException as exc:
            if exc.status == 409:
                raise Conflict(f"membership record of {job.namespace}/{job.name} changed meanwhile") from exc
            raise
        m = action.membership
        log.info(
            "%s/%s: generation %d %s world %d", job.namespace, job.name, m.generation, m.phase, m.world_size
        )

    @staticmethod
    def involved(job: JobView) -> dict[str, str]:
        """The involvedObject reference of a job."""
        api = f"{GROUP}/{VERSION}"
        return {
            "apiVersion": api,
            "kind": tj_api.KIND,
            "name": job.name,
            "namespace": job.namespace,
            "uid": job.uid,
        }

    def post_event(self, namespace: str, involved: dict[str, str], event: Event) -> None:
        """A core/v1 Event on the object; a repeat of the same reason and message refreshes that one."""
        key = f"{involved['uid']}/{event.reason}/{event.message}"
        name = f"{involved['name']}.{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        now = dt.datetime.now(dt.UTC).isoformat()
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": involved,
            "reason": event.reason,
            "message": event.message,
            "type": "Warning" if event.warning else "Normal",
            "source": {"component": COMPONENT},
            "reportingComponent": COMPONENT,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        log.info("event %s on %s/%s: %s", event.reason, namespace, involved["name"], event.message)
        try:
            self.core.create_namespaced_event(namespace, body)
        except ApiException as exc:
            if exc.status != 409:
                log.warning("could not post event %s: %s", event.reason, exc.reason)
                return
            try:  # the same decision again: refresh it (RBAC grants events create and patch, no get)
                self.core.patch_namespaced_event(name, namespace, {"lastTimestamp": now})
            except ApiException as again:
                log.warning("could not update event %s: %s", event.reason, again.reason)

    def mark_checkpoint_unverified(self, namespace: str, name: str, reason: str, message: str) -> None:
        """Condition `Verified=False` on a Checkpoint (kept with its storage for a person to inspect)."""
        self._set_verified(namespace, name, False, reason, message)

    def reverify_checkpoint(self, namespace: str, action: Reverify) -> None:
        """The new save's spec (a JSON Patch that fails unless the spec still names the old digest, and
        leaves metadata and the finalizer alone), then `Verified=True`. Spec first: a pass cut short in
        between leaves the new spec with `Verified=False`, which the next pass finishes."""
        if action.spec is not None:
            patch = [
                {"op": "test", "path": "/spec/manifestDigest", "value": action.expected_digest},
                {"op": "replace", "path": "/spec", "value": action.spec},
            ]
            try:
                self._ignore_404(
                    self.custom.patch_namespaced_custom_object,
                    GROUP,
                    VERSION,
                    namespace,
                    ckpt_api.PLURAL,
                    action.name,
                    patch,
                    _content_type="application/json-patch+json",  # the client would send a merge patch
                )
            except ApiException as exc:
                if exc.status not in (409, 422):
                    raise
                log.warning("checkpoint %s/%s changed: %s", namespace, action.name, api_message(exc))
                return
        self._set_verified(namespace, action.name, True, action.reason, action.message)

    def _set_verified(self, namespace: str, name: str, verified: bool, reason: str, message: str) -> None:
        condition = {
            "type": ckpt_api.VERIFIED,
            "status": "True" if verified else "False",
            "reason": reason,
            "message": message,
            "lastTransitionTime": dt.datetime.now(dt.UTC).isoformat(),
        }
        self._ignore_404(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            ckpt_api.PLURAL,
            name,
            {"status": {"conditions": [condition]}},
        )

    def patch_checkpoint_status(self, namespace: str, name: str, phase: str, message: str) -> None:
        """Show deletion progress (Protected / Deleting) on a Checkpoint."""
        body = {"status": {"phase": phase, "message": message}}
        self._ignore_404(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            ckpt_api.PLURAL,
            name,
            body,
        )

    def s3_credentials(self, namespace: str, secret: str) -> dict[str, str]:
        """The AWS keys of a credentials Secret (base64-decoded)."""
        raw = self._raw(self.core.read_namespaced_secret, secret, namespace)
        data = raw.get("data") or {}
        return {k: base64.b64decode(v).decode() for k, v in data.items() if k.startswith("AWS_")}
