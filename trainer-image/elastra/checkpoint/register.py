"""`--register JOB`: a Checkpoint object for a merged checkpoint, so `kubectl get ckpt` lists it and a
TrainingJob's `spec.checkpoint.restoreFrom` can name it.

`checkpoint_object` is pure. The object names `JOB` in `spec.job` and copies the job's S3 access (so
the operator's finalizer can delete the storage when the object is deleted, as for every Checkpoint),
but carries neither the job's label nor an owner reference: the job's retention, which trims the
job's own commits, never deletes a merge, and deleting the job leaves it.
"""

from __future__ import annotations

import os
import re
from datetime import UTC, datetime
from typing import Any

from elastra.api import API_VERSION, GROUP, VERSION
from elastra.api import checkpoint as ckpt_api
from elastra.api import trainingjob as tj_api
from elastra.api.membership import ROLE_LABEL
from elastra.checkpoint.format import FORMAT_VERSION

FINALIZER = "elastra.dev/finalizer"
"""The operator's finalizer (`elastra_operator.reconcile.manifests.FINALIZER`): storage goes first."""
ROLE = "merged-checkpoint"
MERGED_FROM_ANNOTATION = "elastra.dev/merged-from"
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


class RegisterError(RuntimeError):
    """The Checkpoint object could not be created (job missing, API error, bad name)."""


def default_name(job: str, manifest_digest: str) -> str:
    """`<job>-merge-<first 8 hex digits of the manifest digest>`."""
    return f"{job}-merge-{manifest_digest.removeprefix('sha256:')[:8]}"


def check_name(name: str) -> str:
    """`name` if it is a valid object name (lowercase RFC 1123 subdomain label), else RegisterError."""
    if not NAME.match(name) or len(name) > 253:
        raise RegisterError(f"{name!r} is not a valid object name (lowercase RFC 1123)")
    return name


def checkpoint_object(
    *,
    name: str,
    namespace: str,
    job: str,
    job_spec: dict[str, Any],
    uri: str,
    step: int,
    world_size: int,
    nbytes: int,
    manifest_digest: str,
    sources: list[str],
    committed_at: datetime | None = None,
) -> dict[str, Any]:
    """The Checkpoint object for a merged checkpoint at `uri` (a step directory). Pure."""
    check_name(name)
    if not uri.startswith("s3://"):
        uri = os.path.abspath(uri)
    spec = tj_api.TrainingJobSpec.model_validate(job_spec)
    storage = None
    if uri.startswith("s3://") and spec.checkpoint.s3 is not None:
        s3 = spec.checkpoint.s3
        storage = ckpt_api.StorageAccess(
            endpoint=s3.endpoint, region=s3.region, credentials_secret=s3.credentials_secret
        )
    body = ckpt_api.CheckpointSpec(
        job=job,
        step=step,
        world_size=world_size,
        format_version=FORMAT_VERSION,
        uri=uri,
        tiers=(ckpt_api.TierLocation(name="s3" if uri.startswith("s3://") else "directory", uri=uri),),
        bytes=nbytes,
        manifest_digest=manifest_digest,
        committed_at=committed_at or datetime.now(UTC),
        storage=storage,
    )
    return {
        "apiVersion": API_VERSION,
        "kind": ckpt_api.KIND,
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {ROLE_LABEL: ROLE},
            "annotations": {MERGED_FROM_ANNOTATION: ",".join(sources)},
            "finalizers": [FINALIZER],
        },
        "spec": body.model_dump(by_alias=True, exclude_none=True, mode="json"),
    }


class Registrar:
    """A connection to the cluster and the job a merge is registered under; built before the merge
    (`connect`) so that a missing job or an unreachable cluster fails before any work is done."""

    def __init__(self, custom: Any, namespace: str, job: str, job_spec: dict[str, Any]) -> None:
        self._custom, self.namespace, self.job, self._job_spec = custom, namespace, job, job_spec

    def create(
        self,
        *,
        uri: str,
        step: int,
        world_size: int,
        nbytes: int,
        manifest_digest: str,
        sources: list[str],
        name: str | None = None,
    ) -> dict[str, Any]:
        """Create the Checkpoint object; the object as created."""
        from kubernetes.client.exceptions import ApiException

        body = checkpoint_object(
            name=name or default_name(self.job, manifest_digest),
            namespace=self.namespace,
            job=self.job,
            job_spec=self._job_spec,
            uri=uri,
            step=step,
            world_size=world_size,
            nbytes=nbytes,
            manifest_digest=manifest_digest,
            sources=sources,
        )
        try:
            created: dict[str, Any] = self._custom.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, ckpt_api.PLURAL, body
            )
        except ApiException as exc:
            raise RegisterError(
                f"creating Checkpoint {self.namespace}/{body['metadata']['name']}: {exc.status} {exc.reason}"
            ) from exc
        return created


def connect(job: str, namespace: str | None = None, kubeconfig: str | None = None) -> Registrar:
    """The cluster of the kubeconfig (`kubeconfig`, `$KUBECONFIG`, `~/.kube/config`) or the in-cluster
    config, and the TrainingJob `job` in `namespace` (default: the context's, else `default`)."""
    import kubernetes
    from kubernetes.client.exceptions import ApiException

    default = os.path.expanduser("~/.kube/config")
    path = kubeconfig or os.environ.get("KUBECONFIG", "").split(os.pathsep)[0] or None
    path = path or (default if os.path.exists(default) else None)
    try:
        if path is not None:  # read $KUBECONFIG now: the client library reads it once, at import
            client = kubernetes.config.new_client_from_config(config_file=path)
            if namespace is None:
                _, context = kubernetes.config.list_kube_config_contexts(config_file=path)
                namespace = (context or {}).get("context", {}).get("namespace")
        else:
            kubernetes.config.load_incluster_config()
            client = kubernetes.client.ApiClient()
    except (kubernetes.config.ConfigException, OSError) as exc:
        raise RegisterError(f"no cluster to register in: {exc}") from exc
    namespace = namespace or "default"
    custom = kubernetes.client.CustomObjectsApi(client)
    try:
        raw_job = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, tj_api.PLURAL, job)
    except ApiException as exc:
        if exc.status == 404:
            raise RegisterError(f"TrainingJob {namespace}/{job} does not exist") from exc
        raise RegisterError(f"reading TrainingJob {namespace}/{job}: {exc.status} {exc.reason}") from exc
    except OSError as exc:  # urllib3 connection errors
        raise RegisterError(f"cannot reach the cluster: {exc}") from exc
    return Registrar(custom, namespace, job, raw_job.get("spec") or {})
