"""The memory tier's snapshot server: a process the agent owns, so the pod's snapshots outlive its
workers (docs/architecture.md, Memory tier). Started once per pod, before the first generation;
it dies with the agent (`PR_SET_PDEATHSIG`), and the memory volume goes with the pod."""

from __future__ import annotations

import logging
import subprocess
import sys
from collections.abc import Mapping

from elastra.agent.lifeline import die_with_parent
from elastra.api.pod import PodContract

log = logging.getLogger("elastra.agent")


def start_memory_server(env: Mapping[str, str], pod_ip: str) -> subprocess.Popen[bytes] | None:
    """Start `python -m elastra.storage.memory` on `pod_ip` when the pod has a memory tier, else None."""
    contract = PodContract.from_env(env)  # what the operator set: one model, both sides
    directory = contract.memory_dir
    if not directory:
        return None
    port = str(contract.memory_port)
    argv = [sys.executable, "-m", "elastra.storage.memory", "--dir", directory, "--host", pod_ip,
            "--port", port, "--owned"]  # fmt: skip
    log.info("memory tier: snapshot server on %s:%s for %s", pod_ip, port, directory)
    return subprocess.Popen(argv, preexec_fn=die_with_parent)  # noqa: PLW1509 - prctl only


def stop_memory_server(server: subprocess.Popen[bytes], timeout: float = 3.0) -> None:
    """SIGTERM (it removes the snapshots), then SIGKILL after `timeout`."""
    if server.poll() is not None:
        return
    server.terminate()
    try:
        server.wait(timeout)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
