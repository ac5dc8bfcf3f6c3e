"""Kopf handlers: they only translate events into `kube.observe → plan → kube.apply`.

A timer per TrainingJob re-plans it every `ELASTRA_RESYNC_SECONDS` (level-triggered: whatever was missed,
by this operator or a previous one, is seen on the next pass). A worker pod's change that can move the
plan (phase, deletion, node, IP, the agent's state or request answer, a new commit) triggers the job's
pass at once (queued from Kopf's event loop onto pass threads, `request_pass`), and a `PeerLost` report
one more after the quiet window: the operator reacts in the time of one API round trip instead of one
timer period. Passes over one job never overlap (`_Passes`); a change that arrives during a pass makes it
run once more. Nothing of the job is kept between passes: the only memory is which pod versions were
already seen, so an unchanged re-delivery triggers nothing (losing it costs one redundant pass).
Checkpoints carry the operator's finalizer; its delete handler deletes the checkpoint's storage unless
the checkpoint is protected.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from elastra import kubeclient
from elastra.api import GROUP, VERSION
from elastra.api import checkpoint as ckpt_api
from elastra.api import trainingjob as tj_api
from elastra.api.membership import (
    AGENT_ANNOTATION,
    COMMIT_ANNOTATION,
    JOB_LABEL,
    ROLE_LABEL,
    membership_configmap_name,
)

from . import storage
from .kube import Conflict, Kube
from .metrics import OperatorMetrics
from .parse import checkpoint_view, job_view, node_view
from .reconcile import trust
from .reconcile.actions import Event, PatchStatus
from .reconcile.checks import deletion_refusal, teardown
from .reconcile.facts import PEER_LOST, PEER_QUIET_SECONDS
from .reconcile.manifests import FINALIZER
from .reconcile.plan import plan
from .reconcile.reasons import Reason
from .reconcile.status import status_body
from .reconcile.views import NodeView

RESYNC_SECONDS = float(os.environ.get("ELASTRA_RESYNC_SECONDS", "2"))
"""How often each TrainingJob is re-planned."""
PROTECTED_RETRY_SECONDS = 10.0
REASON_STORAGE_KEPT = Reason.STORAGE_KEPT
"""Event: a finalizer left the data alone (not the job's own path, a link, no credentials)."""

log = logging.getLogger("elastra.operator")


class _State:
    """The process-wide API client and metrics, set up once at operator start."""

    kube: Kube | None = None
    metrics = OperatorMetrics()
    nodes: kopf.Index[str, NodeView] | None = None
    """Kopf's live index of every Node (`node_views`); None until a handler has seen it."""


def setup(kubeconfig: str | None, metrics: OperatorMetrics) -> None:
    """Connect the `kube` layer (kubeconfig, else $KUBECONFIG, else in-cluster) and pick the metrics."""
    allowed = trust.parse_allowed(os.environ.get(trust.ALLOWED_ENDPOINTS_ENV))
    _State.kube = Kube(kubeclient.api_client(kubeconfig), allowed_endpoints=allowed)
    _State.metrics = metrics


def _kube() -> Kube:
    if _State.kube is None:
        raise RuntimeError("elastra_operator.handlers.setup() was not called")
    return _State.kube


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    """Kopf's credentials: the kubeconfig when one is named, else the pod's ServiceAccount read the
    same way as the `kube` layer's (`elastra.kubeclient`)."""
    if os.environ.get("KUBECONFIG") or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return kopf.login_via_client(**kwargs)
    settings = kubeclient.in_cluster()
    return kopf.ConnectionInfo(
        server=settings.server,
        ca_path=str(settings.ca_path) if settings.ca_path else None,
        scheme="Bearer",
        token=settings.token(),
        default_namespace=settings.namespace,
    )


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="elastra.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix="elastra.dev")
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 120
    settings.networking.request_timeout = 30


def pod_signature(pod: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of a worker pod can move its job's plan: a change here is worth a pass. Pure.

    The agent's periodic step reports are left out (they only refresh status)."""
    meta = pod.get("metadata") or {}
    status = pod.get("status") or {}
    annotations = meta.get("annotations") or {}
    agent = _json_object(annotations.get(AGENT_ANNOTATION))
    commit = _json_object(annotations.get(COMMIT_ANNOTATION))
    return (
        status.get("phase"),
        status.get("reason"),
        status.get("podIP"),
        (pod.get("spec") or {}).get("nodeName"),
        meta.get("deletionTimestamp"),
        tuple(agent.get(k) for k in ("generation", "state", "exitCode", "reason", "ackRequest", "raw")),
        commit.get("step"),
        commit.get("raw"),
    )


def _json_object(raw: object) -> dict[str, Any]:
    """An annotation's JSON object; {} when absent or not an object (the pass reports bad input)."""
    if not isinstance(raw, str):
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        return {"raw": raw}
    return value if isinstance(value, dict) else {"raw": raw}


@kopf.index("", "v1", "nodes")
def node_views(*, name: str, body: kopf.Body, **_: Any) -> dict[str, NodeView]:
    """Every Node as the planner sees it, kept current by one watch: a pass reads no node list (a list of
    1,000 nodes per pass, for 100 jobs every few seconds, was most of the API traffic at scale)."""
    return {name: node_view(dict(body))}


def _remember_nodes(index: kopf.Index[str, NodeView] | None) -> None:
    if index is not None:
        _State.nodes = index


def _nodes() -> tuple[NodeView, ...] | None:
    """The indexed nodes; None (list them) before the index was handed to any handler."""
    index = _State.nodes
    if index is None:
        return None
    return tuple(view for store in index.values() for view in store)


class _Passes:
    """At most one pass per job at a time; a trigger during a pass runs it once more afterwards."""

    lock = threading.Lock()
    running: set[tuple[str, str]] = set()
    again: set[tuple[str, str]] = set()
    seen: dict[str, tuple[Any, ...]] = {}
    """Pod uid -> the signature last acted on."""


def run_pass(namespace: str, name: str) -> None:
    """Plan `namespace/name` now, or right after the pass already running for it."""
    key = (namespace, name)
    with _Passes.lock:
        if key in _Passes.running:
            _Passes.again.add(key)
            return
        _Passes.running.add(key)
    try:
        while True:
            _one_pass(namespace, name)
            with _Passes.lock:
                if key not in _Passes.again:
                    return
                _Passes.again.discard(key)
    finally:
        with _Passes.lock:
            _Passes.running.discard(key)
            _Passes.again.discard(key)


@kopf.timer(
    GROUP, VERSION, tj_api.PLURAL, interval=RESYNC_SECONDS, sharp=False, backoff=max(RESYNC_SECONDS, 1.0)
)
def reconcile_job(
    *, namespace: str | None, name: str, node_views: kopf.Index[str, NodeView] | None = None, **_: Any
) -> None:
    """The periodic planning pass over one TrainingJob (the level-triggered fallback)."""
    assert namespace is not None  # TrainingJobs are namespaced
    _remember_nodes(node_views)
    run_pass(namespace, name)


def _may_move_the_plan(*, type: str | None, body: kopf.Body, **_: Any) -> bool:
    """Kopf's filter for `worker_pod_changed`: a deletion, or a signature not acted on yet. Heartbeats
    (nearly every pod event) stop here, before Kopf invokes and logs a handler for them."""
    if type == "DELETED":
        return True
    uid = (body.get("metadata") or {}).get("uid")
    with _Passes.lock:
        return uid is None or _Passes.seen.get(uid) != pod_signature(body)


@kopf.on.event(
    "", "v1", "pods", labels={JOB_LABEL: kopf.PRESENT, ROLE_LABEL: "worker"}, when=_may_move_the_plan
)
async def worker_pod_changed(
    *, type: str | None, body: kopf.Body, node_views: kopf.Index[str, NodeView] | None = None, **_: Any
) -> None:
    """A worker pod changed in a way that can move its job's plan: plan the job now.

    Runs on Kopf's event loop and never waits for the pass (`request_pass`). Every agent heartbeats its
    report, so this sees hundreds of pod events a second on a large cluster, nearly all of them
    unchanged signatures: a handler that held one of Kopf's executor threads per event, behind the
    passes the timers run there, let Kopf's per-pod event queues grow without bound (1 GB of queued
    pod bodies after two minutes of 100 jobs x 16 pods)."""
    _remember_nodes(node_views)
    raw = dict(body)
    meta = raw.get("metadata") or {}
    namespace, job, uid = meta.get("namespace"), (meta.get("labels") or {}).get(JOB_LABEL), meta.get("uid")
    if not namespace or not job or not uid:
        return
    if type == "DELETED":
        with _Passes.lock:
            _Passes.seen.pop(uid, None)
    else:
        signature = pod_signature(raw)
        with _Passes.lock:
            if _Passes.seen.get(uid) == signature:
                return
            _Passes.seen[uid] = signature
        reason = signature[5][3]
        if isinstance(reason, str) and reason.startswith(PEER_LOST):
            # plan() waits for the silent members until the reports went quiet: look again then.
            follow_up(namespace, job, PEER_QUIET_SECONDS + 0.1)
    request_pass(namespace, job)


class _Requests:
    """Passes asked for by pod events, on their own threads: each job is queued at most once (like
    controller-runtime's workqueue), so a burst of events for one job costs one or two passes."""

    lock = threading.Lock()
    queued: set[tuple[str, str]] = set()
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="elastra-pass")


def request_pass(namespace: str, name: str) -> None:
    """Run the job's pass soon, on a pass thread; a no-op when one is already queued for it (a pass
    running now is `run_pass`'s to repeat)."""
    key = (namespace, name)
    with _Requests.lock:
        if key in _Requests.queued:
            return
        _Requests.queued.add(key)
    _Requests.executor.submit(_requested, namespace, name)


def _requested(namespace: str, name: str) -> None:
    with _Requests.lock:
        _Requests.queued.discard((namespace, name))
    try:
        run_pass(namespace, name)
    except Exception:  # the timer pass retries whatever this one could not do
        log.exception("pass over %s/%s failed", namespace, name)


class _FollowUps:
    """One pending follow-up pass per job: the time it is due, and whether its thread runs."""

    lock = threading.Lock()
    due: dict[tuple[str, str], float] = {}


def follow_up(namespace: str, name: str, delay: float) -> None:
    """Run the job's pass once `delay` seconds after the last call. One thread per job and burst: the
    511 `PeerLost` reports of a 512-pod job move the one deadline instead of starting 511 timers."""
    key = (namespace, name)
    with _FollowUps.lock:
        pending = key in _FollowUps.due
        _FollowUps.due[key] = time.monotonic() + delay
    if not pending:
        threading.Thread(target=_quietly, args=key, name=f"follow-up {namespace}/{name}", daemon=True).start()


def _quietly(namespace: str, name: str) -> None:
    key = (namespace, name)
    while True:
        with _FollowUps.lock:
            wait = _FollowUps.due[key] - time.monotonic()
            if wait <= 0:
                del _FollowUps.due[key]
                break
        time.sleep(wait)
    request_pass(namespace, name)


def _one_pass(namespace: str, name: str) -> None:
    started = time.perf_counter()
    try:
        _plan_and_apply(namespace, name)
    finally:
        _State.metrics.reconcile.observe(time.perf_counter() - started)


def _plan_and_apply(namespace: str, name: str) -> None:
    kube = _kube()
    observed = kube.observe(namespace, name, nodes=_nodes())
    if observed is None:
        _State.metrics.forget(namespace, name)
        return
    now = dt.datetime.now(dt.UTC)
    actions = plan(observed.job, observed.pods, observed.nodes, observed.checkpoints, now)
    try:
        observations = kube.apply(observed.job, actions)
    except Conflict as exc:
        log.info("%s; planning again", exc)
        return
    for observation in observations:
        _State.metrics.observe(namespace, name, observation)
    patched = [a.status for a in actions if isinstance(a, PatchStatus)]
    status = patched[-1] if patched else status_body(observed.job.status)
    _State.metrics.job_status(namespace, name, status)


@kopf.on.delete(GROUP, VERSION, tj_api.PLURAL, backoff=5)
def delete_job(*, namespace: str | None, name: str, uid: str | None, spec: kopf.Spec, **_: Any) -> None:
    """Finalizer: stop the workers, then delete every checkpoint under the job's root — including commits
    made while it was going away, which no Checkpoint object covers."""
    assert namespace is not None
    kube = _kube()
    _State.metrics.forget(namespace, name)
    pods = kube.worker_pods(namespace, name)
    if pods:
        for pod, force in teardown(pods, kube.nodes()):
            kube.delete_pod(namespace, pod, force=force)
        raise kopf.TemporaryError(f"waiting for {len(pods)} worker pod(s) to exit", delay=2)
    try:
        parsed = tj_api.TrainingJobSpec.model_validate(dict(spec))
    except ValidationError:
        return  # it never ran: nothing was stored
    s3 = parsed.checkpoint.s3
    access = ckpt_api.StorageAccess(endpoint=s3.endpoint, region=s3.region) if s3 is not None else None
    credentials = None
    refused = trust.endpoint_refusal(s3.endpoint, kube.allowed_endpoints) if s3 is not None else None
    secret = s3.credentials_secret if s3 is not None and refused is None else None
    if secret and kube.secret_exists(namespace, secret):
        credentials = kube.s3_credentials(namespace, secret)
    directory = parsed.checkpoint.directory
    root = parsed.checkpoint.root_uri(namespace, name)
    try:
        if refused is not None:
            raise storage.StorageKept(f"{refused}: nothing contacted, the data is kept")
        done = storage.delete_job_storage(
            root, access, credentials, base=directory.path if directory is not None else None
        )
    except storage.StorageKept as exc:
        involved = {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": tj_api.KIND,
            "name": name,
            "namespace": namespace,
            "uid": uid or "",
        }
        kube.post_event(
            namespace, involved, Event(reason=REASON_STORAGE_KEPT, message=str(exc), warning=True)
        )
        log.warning("job %s/%s deleted, storage kept: %s", namespace, name, exc)
        return
    except storage.StorageError as exc:
        raise kopf.TemporaryError(str(exc), delay=15) from exc
    log.info("job %s/%s deleted: %s", namespace, name, done)


@kopf.on.delete(GROUP, VERSION, ckpt_api.PLURAL, backoff=5)
def delete_checkpoint_storage(*, namespace: str | None, name: str, body: kopf.Body, **_: Any) -> None:
    """Finalizer: delete the checkpoint's storage, unless it is its running job's restore point."""
    assert namespace is not None
    kube = _kube()
    involved = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": ckpt_api.KIND,
        "name": name,
        "namespace": namespace,
        "uid": body.metadata.uid or "",
    }
    raw = dict(body)
    view = checkpoint_view(raw)
    if view is None:
        kube.post_event(
            namespace,
            involved,
            Event(
                reason=Reason.STORAGE_KEPT, message="spec does not validate: storage left alone", warning=True
            ),
        )
        return
    spec = ckpt_api.CheckpointSpec.model_validate(raw["spec"])
    job_raw = kube.get_job(namespace, spec.job)
    job = None
    if job_raw is not None:
        job = job_view(job_raw, kube.get_configmap(namespace, membership_configmap_name(spec.job)))
    refusal = deletion_refusal(view, job, kube.list_checkpoints(namespace, spec.job))
    if refusal is not None:
        kube.patch_checkpoint_status(namespace, name, "Protected", refusal)
        kube.post_event(
            namespace, involved, Event(reason=Reason.CHECKPOINT_PROTECTED, message=refusal, warning=True)
        )
        raise kopf.TemporaryError(refusal, delay=PROTECTED_RETRY_SECONDS)
    if job is None or job.spec is None:
        # The job is gone (its own finalizer deleted its whole root) or unreadable: nothing to derive
        # the path from, so nothing is deleted.
        why = f"job {spec.job} is gone or invalid: storage left to the job's own deletion"
        kube.post_event(namespace, involved, Event(reason=REASON_STORAGE_KEPT, message=why))
        return
    secret = spec.storage.credentials_secret if spec.storage is not None else None
    s3 = job.spec.checkpoint.s3
    refused = trust.endpoint_refusal(s3.endpoint, kube.allowed_endpoints) if s3 is not None else None
    credentials = None
    if secret and refused is None and kube.secret_exists(namespace, secret):
        credentials = kube.s3_credentials(namespace, secret)
    directory = job.spec.checkpoint.directory
    try:
        if refused is not None:
            raise storage.StorageKept(f"{refused}: nothing contacted, the data is kept")
        done = storage.delete_checkpoint(
            spec,
            credentials,
            expected=trust.expected_commit_uri(job, spec.step),
            base=directory.path if directory is not None else None,
        )
    except storage.StorageKept as exc:
        kube.post_event(
            namespace, involved, Event(reason=REASON_STORAGE_KEPT, message=str(exc), warning=True)
        )
        kube.post_event(
            namespace,
            kube.involved(job),
            Event(reason=REASON_STORAGE_KEPT, message=f"{name}: {exc}", warning=True),
        )
        log.warning("checkpoint %s/%s: storage kept: %s", namespace, name, exc)
        return
    except storage.StorageError as exc:
        kube.patch_checkpoint_status(namespace, name, "Deleting", str(exc))
        kube.post_event(
            namespace, involved, Event(reason=Reason.STORAGE_DELETE_FAILED, message=str(exc), warning=True)
        )
        raise kopf.TemporaryError(str(exc), delay=15) from exc
    log.info("checkpoint %s/%s: %s", namespace, name, done)
    if job is not None:
        kube.post_event(
            namespace, kube.involved(job), Event(reason=Reason.CHECKPOINT_DELETED, message=f"{name}: {done}")
        )
