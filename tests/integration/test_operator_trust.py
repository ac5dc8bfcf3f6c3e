"""Trust boundaries with RBAC enforced (localcluster checks every request): a hostile worker pod of job
A tries to forge a commit for A pointing at job B's storage, to patch B's pods and to read B's Secret.
Every attempt fails (403) or is ignored (CommitRejected Event); B's storage and pods stay intact.
Then a namespace holding jobs and checkpoints is deleted and goes away within a bounded time."""

from __future__ import annotations

import base64
import pathlib
import sys
import time
from collections.abc import Callable

import pytest
from test_operator_harness import GROUP, NS, VERSION, Harness, make_harness  # noqa: F401 (fixture)

from elastra.api.membership import COMMIT_ANNOTATION, CommitReport

pytestmark = pytest.mark.timeout(150)
HOSTILE = pathlib.Path(__file__).with_name("hostile_worker.py")
TWO = {"min": 2, "max": 2}


def test_a_hostile_pod_speaks_only_for_its_own_job(make_harness: Callable[[int], Harness]) -> None:  # noqa: F811
    h = make_harness(4)
    secret = {"AWS_ACCESS_KEY_ID": "b-key", "AWS_SECRET_ACCESS_KEY": "b-secret"}
    h.core.create_namespaced_secret(
        NS,
        {
            "metadata": {"name": "b-creds"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in secret.items()},
        },
    )
    # B keeps every checkpoint: whatever disappears from its root was not B's own retention
    keep_all = {"everySteps": 20, "directory": {"path": str(h.workdir / "ckpt"), "keep": 1000}}
    h.create_job("b", replicas=TWO, checkpoint=keep_all)
    h.wait(h.running("b", 2), 60, "job B to run")
    h.wait(lambda: h.checkpoints("b"), 30, "a checkpoint of job B")
    b_root = h.workdir / "ckpt" / NS / "b"
    victim_step = h.checkpoints("b")[0]["spec"]["step"]
    victim = b_root / f"step-{victim_step}"
    assert (victim / "manifest.json").exists()

    env = {
        "HOSTILE_VICTIM_POD": "b-w-0",
        "HOSTILE_VICTIM_JOB": "b",
        "HOSTILE_VICTIM_SECRET": "b-creds",
        "HOSTILE_FORGED_URI": str(victim),
        "HOSTILE_FORGED_STEP": str(victim_step),
    }
    container_env = [{"name": "STUB_STEP_SECONDS", "value": "0.05"}]
    container_env += [{"name": k, "value": v} for k, v in env.items()]
    template = {
        "spec": {
            "containers": [
                {
                    "name": "trainer",
                    "image": "stub",
                    "command": [sys.executable, str(HOSTILE)],
                    "env": container_env,
                    "resources": {"limits": {"nvidia.com/gpu": 1}},
                }
            ]
        }
    }
    h.create_job("a", replicas=TWO, template=template)
    h.wait(h.running("a", 2), 60, "job A to run")

    # (1) the forged commit is ignored, with an Event naming why
    h.wait(lambda: "CommitRejected" in h.events("a"), 30, "a CommitRejected Event on job A")
    messages = [e.message for e in h.core.list_namespaced_event(NS).items if e.reason == "CommitRejected"]
    assert any(str(victim) in m and "is not the job's own" in m for m in messages), messages
    for ckpt in h.checkpoints("a"):
        assert ckpt["spec"]["uri"].startswith(str(h.workdir / "ckpt" / NS / "a") + "/"), ckpt["spec"]
    # (2) patching B's pods and (3) reading B's Secret are refused by RBAC
    attacks = _attacks(h, "a")
    for what in (
        "patch-victim-pod",
        "read-victim-pod",
        "read-victim-secret",
        "list-secrets",
        "patch-victim-membership",
        "delete-victim-pod",
    ):
        assert attacks.get(what) == "403", (what, attacks)
    assert attacks.get("forge-own-commit") == "200", "a pod may write its own reports"
    for pod in h.pods("b"):
        raw = (pod.metadata.annotations or {}).get(COMMIT_ANNOTATION)
        if raw:
            assert CommitReport.model_validate_json(raw).uri.startswith(str(b_root) + "/")

    # Deleting job A deletes A's storage only; B's checkpoint and B itself are untouched.
    h.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", "a")
    h.wait(lambda: not h.pods("a") and not h.checkpoints("a"), 60, "job A to be gone")
    assert (victim / "manifest.json").exists(), "job B's checkpoint must survive"
    assert h.status("b").get("phase") == "Running"


def _attacks(h: Harness, job: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for path in sorted((h.workdir / "cluster" / "nodes").glob(f"*/pods/{NS}_{job}-w-*/logs/*.log")):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("ATTACK "):
                _, what, status = line.split()
                found[what] = status
    return found


def test_refused_creates_are_reported_and_a_namespace_with_jobs_is_deleted_in_bounded_time(
    make_harness: Callable[[int], Harness],  # noqa: F811
) -> None:
    h = make_harness(2)
    h.core.create_namespace({"metadata": {"name": "doomed"}})
    h.create_job("gone", namespace="doomed", replicas=TWO)

    # A pod the API refuses (here: a ServiceAccount that does not exist) is a condition and an Event,
    # retried with backoff; the pass still writes status.
    container = {"name": "c", "image": "stub", "command": ["true"]}
    template = {"spec": {"serviceAccountName": "nobody", "containers": [container]}}
    h.create_job("refused", replicas={"min": 1, "max": 1}, template=template)

    def create_failed() -> dict[str, str] | None:
        ready = [c for c in h.status("refused").get("conditions") or [] if c["type"] == "Ready"]
        return ready[0] if ready and ready[0]["reason"] == "CreateFailed" else None

    ready = h.wait(create_failed, 30, "Ready=False/CreateFailed on the refused job")
    assert ready["status"] == "False" and 'serviceaccount "nobody" not found' in ready["message"]
    assert "CreateFailed" in h.events("refused")
    h.wait(
        lambda: h.custom.list_namespaced_custom_object(GROUP, VERSION, "doomed", "checkpoints")["items"],
        60,
        "a checkpoint in the namespace",
    )
    start = time.monotonic()
    h.core.delete_namespace("doomed")

    def gone() -> bool:
        return not any(n.metadata.name == "doomed" for n in h.core.list_namespace().items)

    h.wait(gone, 60, "the namespace to be deleted")
    assert time.monotonic() - start < 60
    assert not (h.workdir / "ckpt" / "doomed" / "gone").exists(), "the job's finalizer deleted its root"
