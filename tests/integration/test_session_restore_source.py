"""gpt_tiny with real gloo ranks, restored the way the pod agent starts a generation (`ELASTRA_RESTORE_STEP`
and `ELASTRA_RESTORE_URI` set, a control directory):

- a fork (`restoreFrom`): the restore point is another job's step directory, saved at world 2; the
  child at world 1 starts at that step with the data position the parent had there, checkpoints into
  its own root, and leaves the parent's root alone;
- a corrupt restore point: the ranks fall back together to the next older committed checkpoint, and the
  status says which step they restored and why they skipped the newer one.
"""

from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
from collections import defaultdict

import pytest

from elastra.control import WorkerStatus, status_file

pytestmark = pytest.mark.timeout(180)

ROOT = pathlib.Path(__file__).resolve().parents[2]
TRAIN = ROOT / "examples" / "gpt_tiny" / "train.py"
COMMON = ["--global-batch", "8", "--micro-batch", "4", "--block", "16", "--every-steps", "5"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(world: int, args: list[str], tmp: pathlib.Path, env: dict[str, str]) -> None:
    for _ in range(3):  # a port picked free can be taken by another process before rank 0 binds it
        logs = _run_once(world, args, tmp, env)
        if "EADDRINUSE" not in logs:
            return
    raise AssertionError(logs)


def _run_once(world: int, args: list[str], tmp: pathlib.Path, env: dict[str, str]) -> str:
    """Run the ranks; '' when all exit 0, else their logs (fails unless the rendezvous port was taken)."""
    for old in tmp.glob(f"w{world}-rank*.log"):
        old.unlink()
    port = _free_port()
    procs = []
    for rank in range(world):
        full = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(world),
            "LOCAL_RANK": str(rank),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",
            "ELASTRA_COLLECTIVE_TIMEOUT_SECONDS": "30",
            **env,
        }
        log = open(tmp / f"w{world}-rank{rank}.log", "ab")  # noqa: SIM115 - closed with the process
        procs.append(
            subprocess.Popen([sys.executable, str(TRAIN), *COMMON, *args], env=full, stdout=log, stderr=log)
        )
    codes = []
    try:
        codes = [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    logs = "\n".join(p.read_text()[-3000:] for p in sorted(tmp.glob(f"w{world}-rank*.log")))
    if codes == [0] * world:
        return ""
    assert "EADDRINUSE" in logs, logs
    return logs


def _samples(path: pathlib.Path) -> dict[int, set[int]]:
    """step -> every sample index trained at that step (all ranks together)."""
    out: dict[int, set[int]] = defaultdict(set)
    for record in map(json.loads, path.read_text().splitlines()):
        out[record["step"]].update(record["idx"])
    return out


def _committed(root: pathlib.Path) -> list[int]:
    return sorted(int(p.parent.name.removeprefix("step-")) for p in root.glob("step-*/manifest.json"))


def _under_agent(tmp: pathlib.Path, name: str, **env: str) -> dict[str, str]:
    ctl = tmp / name
    ctl.mkdir()
    return {"ELASTRA_CONTROL_DIR": str(ctl), "ELASTRA_GENERATION": "1", **env}


def _status(tmp: pathlib.Path, name: str) -> WorkerStatus:
    return WorkerStatus.model_validate_json((tmp / name / status_file(0)).read_text())


def test_fork_restores_another_roots_step_at_another_world_size(tmp_path: pathlib.Path) -> None:
    parent, child = tmp_path / "parent", tmp_path / "child"
    _run(2, ["--steps", "15", "--checkpoint-uri", str(parent), "--sample-log", str(tmp_path / "p.jsonl")],
         tmp_path, {})  # fmt: skip
    assert _committed(parent) == [5, 10, 15]
    before = sorted(str(p.relative_to(parent)) for p in parent.rglob("*"))

    env = _under_agent(
        tmp_path, "ctl-child", ELASTRA_RESTORE_STEP="10", ELASTRA_RESTORE_URI=str(parent / "step-10")
    )
    _run(1, ["--steps", "15", "--checkpoint-uri", str(child), "--sample-log", str(tmp_path / "c.jsonl")],
         tmp_path, env)  # fmt: skip

    status = _status(tmp_path, "ctl-child")
    assert status.restored_step == 10 and not status.restore_skipped
    assert _committed(child) == [15], "the fork checkpoints into its own root"
    assert sorted(str(p.relative_to(parent)) for p in parent.rglob("*")) == before, "parent untouched"
    parent_samples, child_samples = _samples(tmp_path / "p.jsonl"), _samples(tmp_path / "c.jsonl")
    assert min(child_samples) == 10, "the fork starts at the restored step"
    for step in range(10, 15):
        assert child_samples[step] == parent_samples[step], f"step {step}: the parent's data position"


def test_corrupt_restore_point_falls_back_to_the_older_checkpoint(tmp_path: pathlib.Path) -> None:
    root = tmp_path / "ckpt"
    _run(2, ["--steps", "10", "--checkpoint-uri", str(root)], tmp_path, {})
    assert _committed(root) == [5, 10]
    shard = next((root / "step-10").glob("rank-*.safetensors"))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the payload: a checksum mismatch
    shard.write_bytes(bytes(data))

    env = _under_agent(
        tmp_path,
        "ctl",
        ELASTRA_RESTORE_STEP="10",
        ELASTRA_RESTORE_URI=str(root / "step-10"),
        ELASTRA_CHECKPOINT_KEEP="1",
    )
    _run(2, ["--steps", "12", "--checkpoint-uri", str(root)], tmp_path, env)

    status = _status(tmp_path, "ctl")
    assert status.restored_step == 5
    assert [s.step for s in status.restore_skipped] == [10]
    assert (
        "checksum" in status.restore_skipped[0].reason or "another rank" in status.restore_skipped[0].reason
    )
    # Under an agent the trainers never prune the durable tier (keep 1 notwithstanding): the operator
    # owns its retention, through Checkpoint objects, and may still be about to restore any of these.
    assert _committed(root) == [5, 10, 12]
