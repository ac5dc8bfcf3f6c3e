"""A TrainingJob on localcluster (real operator, pod agents, trainers) starts from a Hugging Face
directory (`restoreFrom`), loses a node after its first checkpoint, restores that checkpoint at the
smaller world size, and Succeeds. (Export of such a session-layout checkpoint: test_hf_files; of a
trained FSDP2 checkpoint, bit for bit: test_hf_pretrained.)"""

from __future__ import annotations

import json
import pathlib
import socket
import subprocess
import sys
from collections.abc import Callable

import pytest
from test_operator_harness import ROOT, Harness, make_harness  # noqa: F401 (fixture)

pytestmark = pytest.mark.timeout(420)  # ~4.5 min at load average 40 on 2 cores
TRAIN = ROOT / "examples" / "hf_finetune" / "train.py"
MAKE = ROOT / "examples" / "hf_finetune" / "make_pretrained.py"
STEPS = 20
RANDOM_INIT_LOSS = 5.0
"""A byte-level model at random initialisation is near ln(256) = 5.5; the pretrained one starts lower."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_job_starts_from_pretrained_loses_a_node_and_finishes(
    make_harness: Callable[[int], Harness],  # noqa: F811
    tmp_path: pathlib.Path,
) -> None:
    pretrained = tmp_path / "gpt2"
    argv = [sys.executable, str(MAKE), str(pretrained), "--max-shard-size", "60KB", "--steps", "15"]
    made = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert made.returncode == 0, made.stderr
    assert (pretrained / "model.safetensors.index.json").exists()
    losses = tmp_path / "loss.jsonl"
    h = make_harness(3)
    command = [sys.executable, "-m", "elastra.agent", "--", sys.executable, str(TRAIN), "--steps", str(STEPS),
               "--step-sleep", "0.2", "--loss-log", str(losses)]  # fmt: skip
    env = [{"name": "OMP_NUM_THREADS", "value": "1"},
           {"name": "ELASTRA_METRICS_PORT", "value": str(_free_port())}]  # fmt: skip
    container = {"name": "trainer", "image": "trainer", "command": command, "env": env,
                 "resources": {"limits": {"nvidia.com/gpu": 1}}}  # fmt: skip
    template = {"spec": {"containers": [container]}}
    ckpt_root = tmp_path / "ckpt"
    h.create_job(
        "hf",
        replicas={"min": 2, "max": 3},
        template=template,
        checkpoint={
            "everySteps": 5,
            "directory": {"path": str(ckpt_root), "keep": 3},
            "restoreFrom": str(pretrained),
        },
    )
    before = h.wait(h.running("hf", 3), 120, "the job to run on 3 nodes")
    h.wait(lambda: len(h.checkpoints("hf")) >= 1, 120, "a first committed checkpoint")
    m = h.membership("hf")
    assert m is not None and m.restore is None  # the first generation started from pretrained weights
    h.cluster.kill_node(h.node_of(m.members[-1].pod))
    after = h.wait(h.running("hf", 2, before["generation"]), 120, "a new generation of the survivors")
    m2 = h.membership("hf")
    assert m2 is not None and m2.restore is not None and after["failures"] == 1
    h.wait(lambda: h.status("hf").get("phase") == "Succeeded", 150, "the job to Succeed")

    records = [json.loads(line) for line in losses.read_text().splitlines()]
    first = next(r for r in records if r["step"] == 0)
    # It started from the pretrained model, not from a random initialisation.
    assert first["world"] == 3 and first["loss"] < RANDOM_INIT_LOSS, first
    assert {r["world"] for r in records if r["step"] == STEPS - 1} == {2}
