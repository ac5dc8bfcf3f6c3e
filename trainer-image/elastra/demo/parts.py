"""The demo's parts: the check that everything it needs exists, the operator subprocess, and the
example TrainingJob as the demo runs it. Side effects only in `operator_process`."""

from __future__ import annotations

import contextlib
import copy
import pathlib
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import yaml

REPO = pathlib.Path(__file__).resolve().parents[3]
JOB_YAML = REPO / "examples" / "gpt_tiny" / "trainingjob.yaml"
TRAIN = REPO / "examples" / "gpt_tiny" / "train.py"
CRDS = REPO / "crds"
LOCAL_TIER = "/var/lib/elastra/local"
"""The node-local tier's hostPath with `--local-tier` (localcluster keeps it under the node's folder)."""


class DemoError(RuntimeError):
    """The demo cannot run (a part is missing) or did not finish."""


def check_parts() -> None:
    """Fail with what is missing, before starting anything."""
    missing = []
    for module, part in (
        ("localcluster", "localcluster (issue 4)"),
        ("elastra_operator.handlers", "the operator (issue 5)"),
    ):
        try:
            __import__(module)
        except Exception as exc:  # a missing or broken part: say which, start nothing
            missing.append(f"{part}: cannot import {module} ({type(exc).__name__}: {exc})")
    if not sorted(CRDS.glob("*.yaml")):
        missing.append(f"the CRDs: no {CRDS}/*.yaml (run `make crds`)")
    for path in (JOB_YAML, TRAIN):
        if not path.exists():
            missing.append(f"the example: {path} is missing")
    if missing:
        raise DemoError("the demo cannot run, missing:\n  - " + "\n  - ".join(missing))


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    from elastra.agent.lifeline import die_with_parent

    die_with_parent()


@contextlib.contextmanager
def operator_process(
    kubeconfig: str, log_path: pathlib.Path, env: dict[str, str], metrics_port: int = 0
) -> Iterator[subprocess.Popen[bytes]]:
    """The operator as a subprocess, stopped (SIGTERM, then SIGKILL) on the way out.

    It serves /metrics on `metrics_port` (0: not at all)."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed below
    cmd = [
        sys.executable,
        "-m",
        "elastra.cli",
        "operator",
        "--kubeconfig",
        kubeconfig,
        "--standalone",
        "--metrics-port",
        str(metrics_port),
    ]
    proc = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=log,
        env=env,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only prctl, no locks
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


NODE_HEARTBEAT_S, NODE_GRACE_S = 1.0, 4.0
"""localcluster node leases: a killed node turns NotReady after 4 s (real clusters: 40 s)."""


def job_manifest(
    steps: int,
    s3_endpoint: str,
    step_sleep: float,
    metrics_port: int,
    *,
    cold_start: bool = False,
    checkpoint_every: int | None = None,
    nproc_per_pod: int = 1,
    local_tier: bool = False,
    memory_tier: bool = False,
) -> dict[str, Any]:
    """The example TrainingJob, pointed at the local S3 endpoint and this machine's Python.

    The agents serve /metrics on `metrics_port` (pod IPs of side-by-side localclusters repeat)."""
    job = copy.deepcopy(yaml.safe_load(JOB_YAML.read_text()))
    job["spec"]["checkpoint"]["s3"]["endpoint"] = s3_endpoint
    if checkpoint_every:
        job["spec"]["checkpoint"]["everySteps"] = checkpoint_every
    if local_tier:
        job["spec"]["checkpoint"]["local"] = {"path": LOCAL_TIER, "keep": 2}
    if memory_tier:
        job["spec"]["checkpoint"]["memory"] = {"everySteps": 1, "parity": 1, "groupSize": 4}
    job["spec"]["nprocPerPod"] = nproc_per_pod  # one GPU per rank: the nodes get as many
    job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = nproc_per_pod
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = [sys.executable if part == "python" else part for part in container["command"]]
    command = [str(TRAIN) if part == "examples/gpt_tiny/train.py" else part for part in command]
    if "--steps" in command:
        command[command.index("--steps") + 1] = str(steps)
    command += ["--step-sleep", str(step_sleep)]
    container["command"] = command
    container["env"] = [
        *container.get("env", []),
        {"name": "ELASTRA_METRICS_PORT", "value": str(metrics_port)},
        *([{"name": "ELASTRA_ZYGOTE", "value": "0"}] if cold_start else []),
    ]
    return dict(job)
