"""Process kubelets: one per simulated node. Each runs its pods' containers as local processes (one
process group per container), reports pod status, terminates gracefully on deletion and renews its
node Lease. `kill()` SIGKILLs every process group of the node and stops its heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import os
import pathlib
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from localcluster import podspec, podstatus
from localcluster.errors import ApiError
from localcluster.ippool import IpPool
from localcluster.store import Store, now_iso, now_micro

log = logging.getLogger("localcluster.kubelet")


@dataclass(slots=True)
class ContainerRun:
    """One container's current process."""

    name: str
    """Container name."""
    process: asyncio.subprocess.Process | None = None
    """The running process (its pid is also its process group id)."""
    restarts: int = 0
    """Restart count."""
    started_at: str = ""
    """When the current process started."""
    last_state: dict[str, Any] = field(default_factory=dict)
    """The previous run's terminated state."""


@dataclass(slots=True)
class PodRun:
    """A pod this kubelet runs."""

    key: tuple[str, str]
    """(namespace, name)."""
    uid: str
    """The pod's uid (a recreated pod with the same name is a different run)."""
    folder: pathlib.Path
    """Per-pod folder: volumes and logs."""
    ip: str = ""
    """The pod's 127.x address."""
    containers: dict[str, ContainerRun] = field(default_factory=dict)
    """Runs of the main containers."""
    task: asyncio.Task[None] | None = None
    """The task driving this pod."""
    terminate: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when the pod is being deleted."""


class Kubelet:
    """One node: heartbeats plus the pods bound to it."""

    def __init__(
        self,
        *,
        store: Store,
        node: str,
        node_dir: pathlib.Path,
        ips: IpPool,
        heartbeat_interval_s: float,
        lease_duration_s: float,
        base_env: dict[str, str],
        default_cwd: str,
        on_event: Callable[[dict[str, Any], str, str, str], None],
        token_files: Callable[[dict[str, Any]], dict[str, dict[str, bytes]]] | None = None,
    ) -> None:
        self.store = store
        self.node = node
        self.node_dir = node_dir
        self.ips = ips
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lease_duration_s = lease_duration_s
        self.base_env = base_env
        self.default_cwd = default_cwd
        self.on_event = on_event
        self.token_files = token_files
        """Files of the pod's projected ServiceAccount volumes (a fresh bound token each)."""
        self.alive = False
        self.pods: dict[str, PodRun] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._wake = asyncio.Event()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Begin heartbeats and pod sync (the Node object must exist)."""
        self.alive = True
        self._tasks = [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._sync_loop())]

    def kill(self) -> None:
        """Power off the node: SIGKILL every container process group, stop heartbeats and syncing.
        Pod objects stay as they were, as on a real cluster."""
        self.alive = False
        for pod in self.pods.values():
            for run in pod.containers.values():
                _killpg(run.process, signal.SIGKILL)
            if pod.task:
                pod.task.cancel()
        for task in self._tasks:
            task.cancel()
        self.pods.clear()

    async def stop(self) -> None:
        """Shut down (the cluster is going away): kill everything and wait for the tasks."""
        tasks = [p.task for p in self.pods.values() if p.task] + self._tasks
        self.kill()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def poke(self) -> None:
        """Something about this node's pods changed."""
        self._wake.set()

    def log_path(self, namespace: str, pod: str, container: str, previous: bool) -> pathlib.Path | None:
        """Where a container's output is (the previous run's with `previous`)."""
        run = next((p for p in self.pods.values() if p.key == (namespace, pod)), None)
        folders = (
            [run.folder]
            if run
            else sorted(self.node_dir.glob(f"pods/{namespace}_{pod}_*"), key=lambda p: p.stat().st_mtime)[-1:]
        )
        for folder in folders:
            restarts = run.containers[container].restarts if run and container in run.containers else None
            if restarts is None:
                logs = sorted(
                    (folder / "logs").glob(f"{container}.*.log"), key=lambda p: int(p.name.split(".")[-2])
                )
                return (logs[-2] if previous and len(logs) > 1 else logs[-1]) if logs else None
            return folder / "logs" / f"{container}.{restarts - 1 if previous else restarts}.log"
        return None

    # ------------------------------------------------------------------ heartbeat
    async def _heartbeat(self) -> None:
        leases = self.store.type_of("coordination.k8s.io", "v1", "leases")
        nodes = self.store.type_of("", "v1", "nodes")
        while self.alive:
            lease_spec = {
                "holderIdentity": self.node,
                "leaseDurationSeconds": max(1, round(self.lease_duration_s)),
                "renewTime": now_micro(),
            }
            try:
                lease = self.store.get(leases, "kube-node-lease", self.node)
                self.store.update(
                    leases,
                    "kube-node-lease",
                    self.node,
                    {**lease, "spec": {**lease.get("spec", {}), **lease_spec}},
                )
            except ApiError:
                self.store.create(
                    leases, "kube-node-lease", {"metadata": {"name": self.node}, "spec": lease_spec}
                )
            with contextlib.suppress(ApiError):
                node = self.store.get(nodes, "", self.node)
                conditions = (node.get("status") or {}).get("conditions") or []
                ready: dict[str, Any] = next((c for c in conditions if c.get("type") == "Ready"), {})
                if ready.get("status") != "True":
                    self._set_node_ready(node)
            await asyncio.sleep(self.heartbeat_interval_s)

    def _set_node_ready(self, node: dict[str, Any]) -> None:
        nodes = self.store.type_of("", "v1", "nodes")
        now = now_iso()
        status = copy.deepcopy(node.get("status") or {})
        others = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
        status["conditions"] = [
            *others,
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "kubelet is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            },
        ]
        self.store.update(nodes, "", self.node, {**node, "status": status}, subresource="status")
        taints = [
            t
            for t in (node.get("spec") or {}).get("taints") or []
            if not t.get("key", "").startswith("node.kubernetes.io/unreachable")
        ]
        if taints != ((node.get("spec") or {}).get("taints") or []):
            fresh = self.store.get(nodes, "", self.node)
            self.store.update(
                nodes, "", self.node, {**fresh, "spec": {**fresh.get("spec", {}), "taints": taints}}
            )
        self.on_event(node, "NodeReady", f"Node {self.node} status is now: NodeReady", "Normal")

    # ------------------------------------------------------------------ pods
    async def _sync_loop(self) -> None:
        pods_rt = self.store.type_of("", "v1", "pods")
        while self.alive:
            await self._wake.wait()
            self._wake.clear()
            bound, _ = self.store.list(pods_rt, None)
            seen = set()
            for pod in bound:
                if (pod.get("spec") or {}).get("nodeName") != self.node:
                    continue
                uid = pod["metadata"]["uid"]
                seen.add(uid)
                run = self.pods.get(uid)
                if (
                    run is None
                    and (pod.get("status") or {}).get("phase") in {"Pending", None}
                    and not pod["metadata"].get("deletionTimestamp")
                ):
                    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
                    run = PodRun((ns, name), uid, self.node_dir / "pods" / f"{ns}_{name}_{uid[:8]}")
                    self.pods[uid] = run
                    run.task = asyncio.create_task(self._run_pod(run))
                elif run is None and pod["metadata"].get("deletionTimestamp"):
                    with contextlib.suppress(ApiError):
                        self.store.delete(
                            pods_rt, pod["metadata"]["namespace"], pod["metadata"]["name"], grace_seconds=0
                        )
                elif run is not None and pod["metadata"].get("deletionTimestamp"):
                    run.terminate.set()
            for uid in [u for u in self.pods if u not in seen]:
                gone = self.pods[uid]
                if gone.task is not None and gone.task.done():  # finished earlier, object now deleted
                    del self.pods[uid]
                else:
                    gone.terminate.set()

    def _pod(self, run: PodRun) -> dict[str, Any] | None:
        try:
            pod = self.store.get(self.store.type_of("", "v1", "pods"), *run.key)
        except ApiError:
            return None
        return pod if pod["metadata"]["uid"] == run.uid else None

    def _write_status(self, run: PodRun, change: Callable[[dict[str, Any]], None]) -> None:
        pod = self._pod(run)
        if pod is None or not self.alive:
            return
        status = copy.deepcopy(pod.get("status") or {})
        change(status)
        with contextlib.suppress(ApiError):
            self.store.update(
                self.store.type_of("", "v1", "pods"),
                *run.key,
                {**pod, "status": status},
                subresource="status",
            )

    def _lookup(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.store.get(self.store.type_of("", "v1", plural), namespace, name)
        except ApiError:
            return None

    async def _run_pod(self, run: PodRun) -> None:
        try:
            await self._run_pod_inner(run)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a kubelet bug must not take the node down; the pod shows it
            log.exception("pod %s/%s failed to run", *run.key)
            message = str(exc)
            self._write_status(
                run, lambda s: s.update(phase="Failed", reason="KubeletError", message=message)
            )
        finally:
            if run.ip:
                self.ips.release(run.ip)

    async def _run_pod_inner(self, run: PodRun) -> None:
        pod = self._pod(run)
        if pod is None:
            return
        run.ip = self.ips.allocate()
        now = now_iso()
        self._write_status(
            run,
            lambda s: s.update(
                podIP=run.ip,
                podIPs=[{"ip": run.ip}],
                hostIP="127.0.0.1",
                hostIPs=[{"ip": "127.0.0.1"}],
                startTime=now,
                conditions=podstatus.conditions(now, initialized=False, ready=False),
            ),
        )
        pod = self._pod(run)
        if pod is None:
            return
        try:
            folders = podspec.volume_folders(pod, node_dir=self.node_dir, pod_dir=run.folder)
            for folder in folders.values():
                folder.mkdir(parents=True, exist_ok=True)
            files_of = podspec.volume_files(pod, self._lookup)
            if self.token_files is not None:
                files_of.update(self.token_files(pod))
            for volume, files in files_of.items():
                for rel, content in files.items():
                    target = podspec.inside(folders[volume], rel)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(content)
                    target.chmod(0o600)
            (run.folder / "logs").mkdir(parents=True, exist_ok=True)
            spec = pod["spec"]
            inits = [
                podspec.plan_container(c, pod, folders=folders, lookup=self._lookup)
                for c in spec.get("initContainers") or []
            ]
            mains = [
                podspec.plan_container(c, pod, folders=folders, lookup=self._lookup)
                for c in spec["containers"]
            ]
        except (podspec.PodSpecError, OSError, KeyError) as exc:
            message = str(exc)
            self._write_status(
                run, lambda s: s.update(phase="Failed", reason="CreateContainerConfigError", message=message)
            )
            self.on_event(pod, "Failed", message, "Warning")
            return
        for launch in inits:
            init = ContainerRun(launch.name)
            code = await self._run_to_end(run, init, launch)
            if code is None:
                return await self._finish_deletion(run)
            if code != 0:
                failure = {
                    "phase": "Failed",
                    "reason": "InitContainerFailed",
                    "message": f"init container {launch.name} exited {code}",
                }
                self._write_status(run, lambda s, f=failure: s.update(f))  # type: ignore[misc]
                return
        self._write_status(
            run, lambda s: s.update(conditions=podstatus.conditions(now_iso(), initialized=True, ready=False))
        )
        for launch in mains:
            run.containers[launch.name] = ContainerRun(launch.name)
        await self._supervise(run, mains, spec.get("restartPolicy", "Always"))

    async def _spawn(self, run: PodRun, container: ContainerRun, launch: podspec.Launch) -> None:
        env = {**self.base_env, "HOSTNAME": run.key[1], **launch.env}
        log_file = run.folder / "logs" / f"{launch.name}.{container.restarts}.log"
        with log_file.open("ab") as out:
            container.process = await asyncio.create_subprocess_exec(
                *launch.argv,
                env=env,
                cwd=launch.cwd or self.default_cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        container.started_at = now_iso()

    async def _run_to_end(self, run: PodRun, container: ContainerRun, launch: podspec.Launch) -> int | None:
        """Run one init container; None when the pod was deleted meanwhile."""
        try:
            await self._spawn(run, container, launch)
        except OSError as exc:
            self.on_event(self._pod(run) or {}, "Failed", f"Error: {exc}", "Warning")
            return 127
        assert container.process is not None
        waiter = asyncio.create_task(container.process.wait())
        stopper = asyncio.create_task(run.terminate.wait())
        done, _ = await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if stopper in done:
            _killpg(container.process, signal.SIGKILL)
            waiter.cancel()
            return None
        stopper.cancel()
        return podspec.exit_code(waiter.result())

    async def _supervise(self, run: PodRun, launches: list[podspec.Launch], restart_policy: str) -> None:
        by_name = {launch.name: launch for launch in launches}
        exited: dict[str, int] = {}
        waits: dict[asyncio.Task[int], str] = {}
        for launch in launches:
            try:
                await self._spawn(run, run.containers[launch.name], launch)
            except OSError as exc:
                exited[launch.name] = 127
                self.on_event(self._pod(run) or {}, "Failed", f"Error: {exc}", "Warning")
                continue
            proc = run.containers[launch.name].process
            assert proc is not None
            waits[asyncio.create_task(proc.wait())] = launch.name
        self._report(run, exited)
        stopper = asyncio.create_task(run.terminate.wait())
        while waits:
            done, _ = await asyncio.wait({*waits, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if stopper in done:
                await self._terminate(run, waits)
                return await self._finish_deletion(run)
            for task in done:
                name = waits.pop(task)
                container = run.containers[name]
                code = podspec.exit_code(task.result())
                container.last_state = {"terminated": podstatus.terminated(code, container.started_at)}
                restart = restart_policy == "Always" or (restart_policy == "OnFailure" and code != 0)
                if not restart:
                    exited[name] = code
                    continue
                await asyncio.sleep(min(10.0, 0.5 * 2 ** min(container.restarts, 5)))
                if run.terminate.is_set():
                    exited[name] = code
                    continue
                container.restarts += 1
                await self._spawn(run, container, by_name[name])
                assert container.process is not None
                waits[asyncio.create_task(container.process.wait())] = name
            self._report(run, exited)
        stopper.cancel()
        phase = "Succeeded" if all(code == 0 for code in exited.values()) else "Failed"
        self._write_status(run, lambda s: s.update(phase=phase))

    def _report(self, run: PodRun, exited: dict[str, int]) -> None:
        statuses = [
            podstatus.container_status(
                name,
                exit_code=exited.get(name),
                restarts=container.restarts,
                started_at=container.started_at,
                pid=container.process.pid if container.process is not None else None,
                last_state=container.last_state,
            )
            for name, container in run.containers.items()
        ]
        all_ready = all(s["ready"] for s in statuses)
        now = now_iso()
        self._write_status(
            run,
            lambda s: s.update(
                phase="Running" if len(exited) < len(run.containers) else s.get("phase", "Running"),
                containerStatuses=statuses,
                conditions=podstatus.conditions(now, initialized=True, ready=all_ready),
            ),
        )

    async def _terminate(self, run: PodRun, waits: dict[asyncio.Task[int], str]) -> None:
        pod = self._pod(run)
        grace = int((pod or {}).get("metadata", {}).get("deletionGracePeriodSeconds") or 0)
        for container in run.containers.values():
            _killpg(container.process, signal.SIGTERM)
        self.on_event(pod or {}, "Killing", "Stopping container(s)", "Normal")
        if waits:
            _, still = await asyncio.wait(set(waits), timeout=grace)
            if still:
                for container in run.containers.values():
                    _killpg(container.process, signal.SIGKILL)
                await asyncio.wait(still, timeout=5)

    async def _finish_deletion(self, run: PodRun) -> None:
        with contextlib.suppress(ApiError):
            self.store.delete(self.store.type_of("", "v1", "pods"), *run.key, grace_seconds=0)
        self.pods.pop(run.uid, None)


def _killpg(process: asyncio.subprocess.Process | None, sig: int) -> None:
    if process is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, sig)
