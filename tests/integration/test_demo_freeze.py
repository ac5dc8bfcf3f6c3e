"""A silent node loss with two ranks per pod, end to end (issue 14): `elastra demo --quick --nodes 3
--nproc-per-pod 2 --fault freeze --node-grace 30`.

3 pods x 2 ranks = world 6. At 1/3 a node is frozen (SIGSTOP, no TCP reset: the peers' gloo collectives
just block, their timeout is 60 s). Its agent stops reporting, so the operator leaves its pod out after
max(nodeLossTimeoutSeconds, 5 s) of silence: world 4, and the survivors' agents kill their blocked
workers. The node's 30 s grace keeps its pod (a real cluster's is 40 s), so at 1/2 the thaw resumes its
stale generation-1 workers while generation 2 trains: they must fail alone (their peers are gone) and
change nothing, and the pod, reporting on time again, rejoins in place: world 6. The job has the
node-local tier: each pod's two ranks share one local directory.
"""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys

import pytest

ELASTRA = pathlib.Path(sys.executable).parent / "elastra"
SILENCE_S = 5.0
"""The demo job's nodeLossTimeoutSeconds is 3: the operator's floor of 5 s of silence applies."""


@pytest.mark.timeout(330)
def test_frozen_node_is_left_out_then_rejoins_with_two_ranks_per_pod(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "demo"
    args = [
        "demo",
        "--quick",
        "--nodes",
        "3",
        "--nproc-per-pod",
        "2",
        "--fault",
        "freeze",
        "--node-grace",
        "30",
        "--local-tier",
    ]
    done = subprocess.run(
        [str(ELASTRA), *args, "--out", str(out)], capture_output=True, text=True, timeout=320, check=False
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["phase"] == "Succeeded" and summary["final_step"] == 150
    assert [w for _, w in summary["world_sizes"]] == [6, 4, 6], summary["world_sizes"]
    assert [e["kind"] for e in summary["events"]] == ["freeze", "thaw"]
    lost, back = summary["rescales"]
    assert (lost["reason"], back["reason"]) == ("Unresponsive", "ScaleUp")
    # detection: silence timeout + a resync pass + the demo's 0.5 s polling; slack for a loaded machine
    assert lost["detected_s"] <= SILENCE_S + 10, lost

    log = (out / "operator.log").read_text()
    failures = re.findall(r"event Failure on \S+: generation (\d+): lost (\S+) \((\w+)", log)
    assert len(failures) == 1, failures  # the thawed stale workers' PeerLost is no second failure
    generation, pod, reason = failures[0]
    assert (generation, reason) == ("1", "Unresponsive")

    frozen = summary["events"][0]["node"]
    runs = sorted((out / "cluster" / "nodes" / frozen / "pods").glob(f"default_{pod}_*"))
    assert len(runs) == 1, "the frozen node's pod rejoined in place, it was not recreated"
    agent_log = "".join(p.read_text() for p in (runs[0] / "logs").glob("*.log"))
    assert "generation 1: forked" in agent_log and "starting generation 3" in agent_log
    assert "starting generation 2" not in agent_log, "a frozen pod never runs the generation it missed"
    assert re.search(r"rank [45] generation 3 start", agent_log)

    # The local tier is one hostPath directory per node and job (`<path>/<namespace>/<job>-<uid>`),
    # shared by the pod's two ranks: each wrote its own shard (names differ by rank and by save) beside
    # the other's, under one manifest.
    survivor = next(n for n in ("node-1", "node-2", "node-3") if n != frozen)
    local = out / "cluster" / "nodes" / survivor / "hostpath" / "var" / "lib" / "elastra" / "local"
    steps = [d for d in local.glob("*/*/step-*") if (d / "manifest.json").exists()]
    assert steps, f"no committed step in the local tier {local}"
    newest = max(steps, key=lambda d: int(d.name.split("-")[1]))
    manifest = json.loads((newest / "manifest.json").read_text())
    shards = sorted(p.name for p in newest.glob("rank-*.safetensors"))
    assert len(shards) == 2 and all(name in manifest["files"] for name in shards), (shards, manifest["files"])
    assert len({name[: len("rank-00000")] for name in shards}) == 2, shards  # one shard per rank
