"""The real operator against localcluster: suspend/resume, bad specs, finishing, and the Checkpoint
finalizer (retention, protection of the newest checkpoint, storage deletion)."""

from __future__ import annotations

import pathlib
import time
from collections.abc import Callable

import pytest
from kubernetes.client.exceptions import ApiException
from test_operator_harness import GROUP, NS, VERSION, Harness, make_harness  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(120)


def test_suspend_checkpoints_and_deletes_pods_then_resume_restores(
    make_harness: Callable[[int], Harness],  # noqa: F811
) -> None:
    h = make_harness(2)
    h.create_job("pause", replicas={"min": 1, "max": 2})
    before = h.wait(h.running("pause", 2), 40, "the job to run")

    h.patch_spec("pause", {"runPolicy": {"suspend": True}})

    h.wait(lambda: h.status("pause").get("phase") == "Suspended", 40, "phase Suspended")
    h.wait(lambda: not h.pods("pause"), 30, "every pod to be gone")
    held = h.membership("pause")
    assert held is not None and held.phase == "Hold" and not held.members
    newest = h.checkpoints("pause")[-1]
    assert "CheckpointRequested" in h.events("pause")

    h.patch_spec("pause", {"runPolicy": {"suspend": False}})

    after = h.wait(h.running("pause", 2, held.generation), 40, "the resumed job to run")
    m = h.membership("pause")
    assert m is not None and m.restore is not None
    assert m.restore.checkpoint == newest["metadata"]["name"], "resume restores the suspend checkpoint"
    assert after["failures"] == 0 and after["generation"] > before["generation"]


def test_bad_specs_are_refused_or_reported_and_create_nothing(
    make_harness: Callable[[int], Harness],  # noqa: F811
    tmp_path: pathlib.Path,
) -> None:
    h = make_harness(2)
    with pytest.raises(ApiException) as refused:
        h.create_job("zero", replicas={"min": 0, "max": 2})
    assert refused.value.status == 422 and "spec.replicas.min" in str(refused.value.body)

    # A CEL rule of the CRD: the API server refuses it, as a real one does. (The operator re-checks the
    # same rule for servers that do not evaluate CEL; its unit tests cover that path.)
    with pytest.raises(ApiException) as inverted:
        h.create_job("inverted", replicas={"min": 3, "max": 2})
    assert inverted.value.status == 422 and "replicas.min must be <= max" in str(inverted.value.body)

    # What no schema can say: the checkpoint to restore from does not exist.
    h.create_job(
        "orphan", checkpoint={"everySteps": 5, "directory": {"path": str(tmp_path)}, "restoreFrom": "nope"}
    )
    for name, words in (("orphan", "'nope'"),):

        def invalid(name: str = name) -> dict[str, str] | None:
            conditions = {c["type"]: c for c in h.status(name).get("conditions", [])}
            valid = conditions.get("Valid")
            return valid if valid and valid["status"] == "False" else None

        condition = h.wait(invalid, 20, f"{name}: condition Valid=False")
        assert condition["reason"] == "InvalidSpec" and words in condition["message"]
        assert "InvalidSpec" in h.events(name)
        assert h.status(name)["phase"] == "Pending"
    time.sleep(1)  # a few more passes of the operator: still nothing may appear
    assert h.pods("orphan") == [] and h.membership("orphan") is None


def test_every_rank_exiting_zero_succeeds_and_cleans_pods(make_harness: Callable[[int], Harness]) -> None:  # noqa: F811
    h = make_harness(2)
    h.create_job("done", env={"STUB_TOTAL_STEPS": "30"}, runPolicy={"cleanPodPolicy": "All"})
    status = h.wait(
        lambda: (s := h.status("done")).get("phase") in ("Succeeded", "Failed") and s, 60, "the end"
    )
    assert status["phase"] == "Succeeded" and status.get("completionTime")
    h.wait(lambda: not h.pods("done"), 30, "cleanPodPolicy All to delete the pods")


def test_user_exit_code_fails_the_job_permanently(make_harness: Callable[[int], Harness]) -> None:  # noqa: F811
    h = make_harness(2)
    env = {"STUB_FAIL_POD": "crash-w-1", "STUB_FAIL_AT_STEP": "15", "STUB_FAIL_EXIT_CODE": "3"}
    h.create_job("crash", env=env)
    status = h.wait(
        lambda: (s := h.status("crash")).get("phase") in ("Succeeded", "Failed") and s, 60, "the end"
    )
    assert status["phase"] == "Failed"
    failed = next(c for c in status["conditions"] if c["type"] == "Failed")
    assert failed["reason"] == "WorkerFailed" and "crash-w-1" in failed["message"]
    assert status["failures"] == 0, "a permanent failure is not retried"


def test_checkpoint_finalizer_protects_newest_and_deletes_storage(
    make_harness: Callable[[int], Harness],  # noqa: F811
) -> None:
    h = make_harness(2)
    h.create_job(
        "keep", checkpoint={"everySteps": 20, "directory": {"path": str(h.workdir / "ckpt"), "keep": 2}}
    )
    h.wait(h.running("keep", 2), 40, "the job to run")
    h.wait(lambda: len(h.checkpoints("keep")) == 2, 30, "retention to hold two checkpoints")
    first_seen: set[str] = set()

    def retention_deleted_one() -> bool:
        names = {c["metadata"]["name"] for c in h.checkpoints("keep")}
        first_seen.update(names)
        return len(first_seen) >= 4

    h.wait(retention_deleted_one, 30, "retention to delete older checkpoints")
    gone = sorted(first_seen - {c["metadata"]["name"] for c in h.checkpoints("keep")})
    assert gone, "retention deleted Checkpoint objects"
    root = h.workdir / "ckpt" / NS / "keep"
    for name in gone:
        assert not (root / name.removeprefix("keep-")).exists(), f"{name}: storage deleted with the object"

    # Protection: delete the newest by hand while the job runs; it stays until a newer one commits.
    newest = h.checkpoints("keep")[-1]
    name = newest["metadata"]["name"]
    h.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, "checkpoints", name)

    def protected() -> bool:
        current = [c for c in h.checkpoints("keep") if c["metadata"]["name"] == name]
        return bool(current) and (current[0].get("status") or {}).get("phase") == "Protected"

    h.wait(protected, 20, f"{name} to be Protected")
    assert pathlib.Path(newest["spec"]["uri"]).exists()
    h.wait(lambda: name not in {c["metadata"]["name"] for c in h.checkpoints("keep")}, 40, f"{name} to go")
    assert not pathlib.Path(newest["spec"]["uri"]).exists()


def test_deleting_the_job_deletes_pods_checkpoints_and_storage(
    make_harness: Callable[[int], Harness],  # noqa: F811
) -> None:
    h = make_harness(2)
    h.create_job("gone")
    h.wait(h.running("gone", 2), 40, "the job to run")
    h.wait(lambda: len(h.checkpoints("gone")) >= 2, 30, "two committed checkpoints")
    root = h.workdir / "ckpt" / NS / "gone"
    assert any(root.iterdir())

    h.custom.delete_namespaced_custom_object(GROUP, VERSION, NS, "trainingjobs", "gone")

    h.wait(lambda: not h.checkpoints("gone") and not h.pods("gone"), 40, "owned objects to be collected")
    assert h.membership("gone") is None
    h.wait(lambda: not root.exists(), 20, "the job's checkpoint root to be deleted")
