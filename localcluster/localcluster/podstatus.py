"""Builders of the pod status documents a kubelet writes: container statuses, terminated states
and the pod conditions. No I/O; `terminated` stamps the current time."""

from __future__ import annotations

from typing import Any

from localcluster.store import now_iso


def container_status(
    name: str,
    *,
    exit_code: int | None,
    restarts: int,
    started_at: str,
    pid: int | None,
    last_state: dict[str, Any],
) -> dict[str, Any]:
    """One entry of `status.containerStatuses`: running, or terminated with `exit_code`."""
    running = exit_code is None
    state: dict[str, Any] = (
        {"running": {"startedAt": started_at}}
        if exit_code is None
        else {"terminated": terminated(exit_code, started_at)}
    )
    entry: dict[str, Any] = {
        "name": name,
        "ready": running,
        "restartCount": restarts,
        "state": state,
        "image": "",
        "imageID": "",
        "started": running,
    }
    if pid is not None:
        entry["containerID"] = f"localcluster://{pid}"
    if last_state:
        entry["lastState"] = last_state
    return entry


def terminated(code: int, started_at: str) -> dict[str, Any]:
    """A container state's `terminated` part, finished now."""
    return {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "startedAt": started_at,
        "finishedAt": now_iso(),
    }


def conditions(now: str, *, initialized: bool, ready: bool) -> list[dict[str, Any]]:
    """PodScheduled, Initialized, ContainersReady and Ready, all transitioned at `now`."""

    def cond(kind: str, ok: bool) -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True" if ok else "False",
            "lastProbeTime": None,
            "lastTransitionTime": now,
        }

    return [
        cond("PodScheduled", True),
        cond("Initialized", initialized),
        cond("ContainersReady", ready),
        cond("Ready", ready),
    ]
