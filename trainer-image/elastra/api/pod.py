"""The worker pod contract: what the operator puts into each worker pod's environment and the pod's
processes (agent, session) read back. One model for both sides: names, defaults and validation live
here only (`PodContract.from_spec` on the operator side, `to_env` into the manifest, `from_env` in the
pod). docs/protocol.md ("Identity") is the prose.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from elastra.api.trainingjob import TrainingJobSpec

SERVICEACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where every pod finds its ServiceAccount token on a real cluster."""
SERVICEACCOUNT_DIR_ENV = "ELASTRA_SERVICEACCOUNT_DIR"
"""Env var naming the ServiceAccount folder; the operator sets it to `SERVICEACCOUNT_DIR`, which
localcluster (no mount namespaces) rewrites to the pod's own folder."""
CREDENTIAL_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
"""Keys of an S3 credentials Secret; the pod gets them as env vars of the same names."""

MEMORY_PATH = "/elastra-memory"
"""Where the memory-tier volume is mounted in worker pods."""
MEMORY_PORT = 9401
"""Default port of a pod's snapshot server."""

FIELD_REFS = {"NODE_NAME": "spec.nodeName", "POD_IP": "status.podIP"}
"""Env vars the kubelet fills from the pod itself (downward API) instead of a value."""


class PodContract(BaseModel):
    """The worker pod's environment as the operator writes it. Field aliases are the env names."""

    model_config = ConfigDict(frozen=True, populate_by_name=True, extra="ignore")

    job: Annotated[str, Field(alias="ELASTRA_JOB")] = ""
    """TrainingJob name. Empty only outside a TrainingJob (a session run by hand)."""
    pod: Annotated[str, Field(alias="POD_NAME")] = ""
    """This pod's name."""
    namespace: Annotated[str, Field(alias="POD_NAMESPACE")] = ""
    """This pod's namespace."""
    node: Annotated[str, Field(alias="NODE_NAME")] = ""
    """The node (downward API)."""
    pod_ip: Annotated[str, Field(alias="POD_IP")] = ""
    """The pod's IP (downward API)."""
    checkpoint_uri: Annotated[str | None, Field(alias="ELASTRA_CHECKPOINT_URI")] = None
    """The job's durable checkpoint root; None disables checkpointing."""
    local_dir: Annotated[str | None, Field(alias="ELASTRA_LOCAL_DIR")] = None
    """Mount path of the job's node-local tier (its own node folder)."""
    local_keep: Annotated[int | None, Field(alias="ELASTRA_LOCAL_KEEP", ge=1)] = None
    """Checkpoints kept in the node-local tier (the job's `local.keep`)."""
    nproc_per_pod: Annotated[int, Field(alias="ELASTRA_NPROC_PER_POD", ge=1)] = 1
    """Worker processes per pod."""
    checkpoint_keep: Annotated[int, Field(alias="ELASTRA_CHECKPOINT_KEEP", ge=1)] = 3
    """Committed checkpoints kept."""
    report_interval_seconds: Annotated[float, Field(alias="ELASTRA_REPORT_INTERVAL_SECONDS", gt=0)] = 3.0
    """The agent's heartbeat: it reports at least this often, changed or not. The operator derives it
    from `nodeLossTimeoutSeconds` (a silent agent counts as lost)."""
    pretrained_uri: Annotated[str | None, Field(alias="ELASTRA_PRETRAINED_URI")] = None
    """A Hugging Face model location (`spec.checkpoint.restoreFrom` naming a directory or `s3://`
    prefix): the trainers start from its weights when the job has no checkpoint of its own yet."""
    every_steps: Annotated[int | None, Field(alias="ELASTRA_CHECKPOINT_EVERY_STEPS", ge=1)] = None
    """Save every this many steps."""
    every_seconds: Annotated[float | None, Field(alias="ELASTRA_CHECKPOINT_EVERY_SECONDS", gt=0)] = None
    """Save when this long passed since the previous save."""
    memory_dir: Annotated[str | None, Field(alias="ELASTRA_MEMORY_DIR")] = None
    """Mount path of the pod's memory-tier volume (`emptyDir: {medium: Memory}`); None: no memory tier."""
    memory_port: Annotated[int, Field(alias="ELASTRA_MEMORY_PORT", ge=1, le=65535)] = MEMORY_PORT
    """Port of the pod's snapshot server, on the pod IP."""
    memory_every_steps: Annotated[int, Field(alias="ELASTRA_MEMORY_EVERY_STEPS", ge=1)] = 1
    """Memory snapshot every this many steps (`memory.everySteps`)."""
    memory_parity: Annotated[int, Field(alias="ELASTRA_MEMORY_PARITY", ge=0)] = 1
    """Parity blocks per group (`memory.parity`)."""
    memory_group_size: Annotated[int, Field(alias="ELASTRA_MEMORY_GROUP_SIZE", ge=1)] = 4
    """Pods per erasure-coding group (`memory.groupSize`)."""
    memory_max_bytes: Annotated[int | None, Field(alias="ELASTRA_MEMORY_MAX_BYTES", ge=1)] = None
    """Cap on the pod's snapshot memory (`memory.maxBytesPerPod`)."""
    grace_seconds: Annotated[int, Field(alias="ELASTRA_TERMINATION_GRACE_SECONDS", ge=0)] = 30
    """The pod's termination grace period (`terminationGracePeriodSeconds`)."""
    serviceaccount_dir: Annotated[str, Field(alias=SERVICEACCOUNT_DIR_ENV)] = SERVICEACCOUNT_DIR
    """Where the pod's ServiceAccount token is (`elastra.kubeclient`)."""
    s3_region: Annotated[str | None, Field(alias="AWS_REGION")] = None
    """S3 region of the durable tier."""
    s3_endpoint: Annotated[str | None, Field(alias="AWS_ENDPOINT_URL_S3")] = None
    """S3 endpoint of the durable tier (unset: AWS)."""
    credentials_secret: Annotated[str | None, Field(exclude=True)] = None
    """Operator side only: the Secret whose keys become `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`."""

    @classmethod
    def from_spec(
        cls,
        *,
        namespace: str,
        job: str,
        pod: str,
        spec: TrainingJobSpec,
        grace_seconds: int,
        report_interval_seconds: float = 3.0,
    ) -> PodContract:
        """What the operator tells worker pod `pod` of `job`. Pure."""
        ck = spec.checkpoint
        return cls(
            job=job,
            pod=pod,
            namespace=namespace,
            checkpoint_uri=ck.root_uri(namespace, job),
            local_dir=ck.local.path if ck.local is not None else None,
            local_keep=ck.local.keep if ck.local is not None else None,
            nproc_per_pod=spec.nproc_per_pod,
            checkpoint_keep=ck.keep,
            report_interval_seconds=report_interval_seconds,
            pretrained_uri=ck.pretrained_uri,
            every_steps=ck.every_steps,
            every_seconds=ck.every_seconds,
            grace_seconds=grace_seconds,
            **_memory_fields(spec),
            s3_region=ck.s3.region if ck.s3 is not None else None,
            s3_endpoint=ck.s3.endpoint if ck.s3 is not None else None,
            credentials_secret=ck.s3.credentials_secret if ck.s3 is not None else None,
        )

    def to_env(self) -> list[dict[str, Any]]:
        """The container `env` entries (EnvVar dicts), in a stable order. Pure."""
        env: list[dict[str, Any]] = []
        for name, field in type(self).model_fields.items():
            alias = field.alias
            if alias is None:
                continue
            if alias in FIELD_REFS:
                env.append({"name": alias, "valueFrom": {"fieldRef": {"fieldPath": FIELD_REFS[alias]}}})
                continue
            value = getattr(self, name)
            if value is None or (name.startswith("memory_") and self.memory_dir is None):
                continue  # unset; the memory tier's settings only with a memory tier
            env.append({"name": alias, "value": str(value)})
        if self.credentials_secret:
            for key in CREDENTIAL_KEYS:
                ref = {"name": self.credentials_secret, "key": key}
                env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
        return env

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> PodContract:
        """Read it back inside the pod; empty variables count as unset. Pure. ValueError names the
        variable to fix."""
        raw = {
            field.alias: env[field.alias].strip()
            for field in cls.model_fields.values()
            if field.alias and env.get(field.alias, "").strip()
        }
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{e['loc'][0]}: {e['msg']}, got {e.get('input')!r}" for e in exc.errors())
            raise ValueError(problems) from None


def _memory_fields(spec: TrainingJobSpec) -> dict[str, Any]:
    """The memory tier's part of the contract (nothing when the job has none). Pure."""
    memory = spec.checkpoint.memory
    if memory is None:
        return {}
    return {
        "memory_dir": MEMORY_PATH,
        "memory_every_steps": memory.every_steps,
        "memory_parity": memory.parity,
        "memory_group_size": memory.group_size,
        "memory_max_bytes": memory.max_bytes_per_pod,
    }
