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
from typing import Any

import kubernetes
from kubernetes.client.exceptions import ApiException

from elastra.api import GROUP, VERSION
from elastra.api import checkpoint as ckpt_api
from elastra.api import trainingjob as tj_api
from elastra.api.membership import (
    JOB_LABEL,
    MEMBERSHIP_KEY,
    ROLE_LABEL,
    membership_configmap_name,
)
from elastra.api.trainingjob import TrainingJobStatus, is_location

from .parse import checkpoint_view, departing, job_view, node_view, pod_view
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
from .reconcile.views import RECORD_KEY, CheckpointView, JobView, NodeView, PodView

log = logging.getLogger("elastra.operator.kube")
COMPONENT = "elastra-operator"


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
