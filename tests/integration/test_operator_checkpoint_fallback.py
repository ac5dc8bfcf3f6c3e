"""The real operator, pod agents and gpt_tiny on localcluster, with checkpoints as untrusted input:

- the newest checkpoint is corrupted mid-run, then a node is killed: the new generation's ranks fall
  back together to the older checkpoint, the agents say so, the operator marks the corrupt Checkpoint
  `Verified=False` (with an Event); the job trains on from the older one, saves the same step again
  (a new manifest), the operator verifies that Checkpoint again (reason `Recommitted`, with its new
  digest) and the job Succeeds;
- a fork: a child job with `restoreFrom` naming the parent's Checkpoint starts at that step at another
  world size and checkpoints into its own root.
"""

from __future__ import annotations

import json
import pathlib
import sys
from collections.abc import Callable
from typing import Any

import pytest
from test_operator_harness import NS, ROOT, Harness, agent_template, make_harness  # noqa: F401 (fixture)

from elastra.api.membership import AGENT_ANNOTATION, AgentReport

pytestmark = pytest.mark.timeout(150)

TRAIN = ROOT / "examples" / "gpt_tiny" / "train.py"


def trainer(steps: int, step_sleep: float) -> dict[str, Any]:
    """A pod template running the real agent and gpt_tiny (small, CPU, one thread)."""
    command = [sys.executable, str(TRAIN), "--steps", str(steps), "--global-batch", "8", "--micro-batch", "4"]
    command += ["--block", "16", "--step-sleep", str(step_sleep)]
    return agent_template(command, "gpt-tiny")


def finished(h: Harness, name: str) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        s = h.status(name)
        return s if s.get("phase") in ("Succeeded", "Failed") else None

    return check


def reports(h: Harness, name: str) -> list[AgentReport]:
    out = []
    for p in h.pods(name):
        raw = (p.metadata.annotations or {}).get(AGENT_ANNOTATION)
        if raw:
            out.append(AgentReport.model_validate_json(raw))
    return out


def corrupt(step_dir: pathlib.Path) -> None:
    """Flip the last byte of every shard file: each fails its checksum."""
    for shard in step_dir.glob("rank-*.safetensors"):
        data = bytearray(shard.read_bytes())
        data[-1] ^= 0xFF
        shard.write_bytes(bytes(data))


def condition(checkpoint: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next(
        (c for c in (checkpoint.get("status") or {}).get("conditions", []) if c["type"] == type_), None
    )


def test_corrupt_newest_checkpoint_then_node_kill_recovers_from_the_older_one(
    make_harness: Callable[[int], Harness],  # noqa: F811
) -> None:
    h = make_harness(2)
    root = h.workdir / "ckpt"
    h.create_job(
        "fb",
        replicas={"min": 1, "max": 2},
        template=trainer(steps=80, step_sleep=0.2),
        checkpoint={"everySteps": 20, "directory": {"path": str(root), "keep": 3}},
    )
    before = h.wait(h.running("fb", 2), 60, "the job to run on 2 nodes")
    h.wait(lambda: len(h.checkpoints("fb")) >= 2, 60, "two committed checkpoints")
    newest = h.checkpoints("fb")[-1]
    bad_step = newest["spec"]["step"]
    bad_digest = newest["spec"]["manifestDigest"]
    corrupt(pathlib.Path(newest["spec"]["uri"]))
    m = h.membership("fb")
    assert m is not None
    h.cluster.kill_node(h.node_of(m.members[-1].pod))

    h.wait(h.running("fb", 1, before["generation"]), 60, "a generation of the survivor")
    m2 = h.membership("fb")
    assert m2 is not None and m2.restore is not None and m2.restore.step == bad_step, "restore point: corrupt"

    def marked() -> dict[str, Any] | None:
        c = next((c for c in h.checkpoints("fb") if c["spec"]["step"] == bad_step), None)
        verified = condition(c, "Verified") if c else None
        return verified if verified and verified["status"] == "False" else None

    verified = h.wait(marked, 30, "the corrupt Checkpoint to be marked Verified=False")
    assert verified["reason"] == "RestoreFailed" and "checksum" in verified["message"]
    assert "CheckpointUnusable" in h.events("fb")
    restored = [r for r in reports(h, "fb") if r.generation == m2.generation and r.restored_step is not None]
    assert restored and all(r.restored_step == bad_step - 20 for r in restored), "fell back to the older one"
    assert [s.step for s in restored[0].restore_skipped] == [bad_step]

    def reverified() -> dict[str, Any] | None:
        c = next((c for c in h.checkpoints("fb") if c["spec"]["step"] == bad_step), None)
        verified = condition(c, "Verified") if c else None
        return c if verified and verified["status"] == "True" else None

    again = h.wait(reverified, 30, "the re-saved step to be Verified again")
    assert condition(again, "Verified")["reason"] == "Recommitted"  # type: ignore[index]
    assert again["spec"]["manifestDigest"] != bad_digest, "the spec describes the new save"
    assert again["spec"]["generation"] == m2.generation
    assert again["metadata"]["finalizers"] == ["elastra.dev/finalizer"]
    assert "CheckpointRecommitted" in h.events("fb")

    status = h.wait(finished(h, "fb"), 90, "the job to finish")
    assert status["phase"] == "Succeeded", status
    assert h.log.read_text().count("usable again:") == 1, "re-verified once, not again on later passes"


def test_fork_with_restore_from_at_another_world_size(
    make_harness: Callable[[int], Harness],  # noqa: F811
) -> None:
    h = make_harness(2)
    root = h.workdir / "ckpt"
    directory = {"path": str(root), "keep": 3}
    h.create_job(
        "parent",
        replicas={"min": 2, "max": 2},
        template=trainer(steps=20, step_sleep=0.0),
        checkpoint={"everySteps": 10, "directory": directory},
    )
    assert h.wait(finished(h, "parent"), 90, "the parent to finish")["phase"] == "Succeeded"
    parent_steps = [c["spec"]["step"] for c in h.checkpoints("parent")]
    assert 10 in parent_steps and 20 in parent_steps
    parent_root = root / NS / "parent"
    parent_files = sorted(str(p.relative_to(parent_root)) for p in parent_root.rglob("*"))

    h.create_job(
        "child",
        replicas={"min": 1, "max": 1},
        template=trainer(steps=30, step_sleep=0.0),
        checkpoint={"everySteps": 10, "directory": directory, "restoreFrom": "parent-step-10"},
    )
    status = h.wait(finished(h, "child"), 90, "the child to finish")
    assert status["phase"] == "Succeeded", status
    child = [c["spec"] for c in h.checkpoints("child")]
    assert [c["step"] for c in child] == [20, 30], "the child starts at step 10 and saves its own steps"
    assert all(c["uri"].startswith(str(root / NS / "child")) for c in child), "into its own root"
    assert all(c["worldSize"] == 1 for c in child)
    manifest = json.loads((root / NS / "child" / "step-20" / "manifest.json").read_text())
    assert manifest["world_size"] == 1
    assert sorted(str(p.relative_to(parent_root)) for p in parent_root.rglob("*")) == parent_files
