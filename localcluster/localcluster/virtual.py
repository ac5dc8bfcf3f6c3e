"""Virtual nodes: nodes whose pods run no process, as kwok does for Kubernetes.

A virtual node is a real Node object with a renewed Lease; a pod bound to it turns Running at once (an IP,
a running container status, Ready) without starting anything. Each pod's agent is played by the protocol
simulator (`localcluster.simulator`, its own process), which this module feeds over a pipe with what
only the machine would know: a pod started (with the environment its container would get), a pod being
deleted (SIGTERM), a node powered off. The simulator answers when a virtual container exits. Everything
the simulated agents say goes through the API, like a real agent's.

All virtual nodes share one heartbeat task (one Lease write per node per interval) and pod changes are
handled incrementally from the store's change feed, so 1,000 virtual nodes cost no per-node task and no
list of every pod per change.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import logging
import pathlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from localcluster import podspec, podstatus
from localcluster.errors import ApiError
from localcluster.ippool import IpPool
from localcluster.store import Store, now_iso, now_micro
from localcluster.watchlog import StorageKey, WatchEvent

log = logging.getLogger("localcluster.virtual")

VIRTUAL_LABEL = "localcluster.dev/virtual"
"""Label on virtual nodes (value `true`); kwok labels its nodes `type: kwok` the same way."""
STOP_WAIT_S = 5.0
"""Longest a deleted virtual pod waits for its simulated agent to exit before it is removed."""


def virtual_node_name(index: int) -> str:
    """Name of virtual node `index` (1-based)."""
    return f"vnode-{index}"


@dataclass(slots=True)
class VirtualPod:
    """A pod bound to a virtual node that was started."""

    key: tuple[str, str]
    uid: str
    node: str
    ip: str
    started_at: str
    stopping: bool = False
    exited: asyncio.Event = field(default_factory=asyncio.Event)


class VirtualNodes:
    """The virtual nodes of one cluster, their pods, and the pipe to the agent simulator."""

    def __init__(
        self,
        *,
        store: Store,
        ips: IpPool,
        workdir: pathlib.Path,
        heartbeat_interval_s: float,
        lease_duration_s: float,
        simulator_argv: list[str] | None,
        on_event: Callable[[dict[str, Any], str, str, str], None],
    ) -> None:
        self.store = store
        self.ips = ips
        self.workdir = workdir
        self.heartbeat_interval_s = heartbeat_interval_s
        self.lease_duration_s = lease_duration_s
        self.simulator_argv = simulator_argv
        self.on_event = on_event
        self.nodes: dict[str, bool] = {}
        """Virtual node -> alive."""
        self.pods: dict[str, VirtualPod] = {}
        """uid -> started pod."""
        self._dirty: dict[tuple[str, str], None] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._sim: asyncio.subprocess.Process | None = None
        store.listeners.append(self._on_change)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        """Start the simulator process, the shared heartbeat and the pod handler."""
        if self.simulator_argv is not None:
            log_file = (self.workdir / "simulator.log").open("ab")
            self._sim = await asyncio.create_subprocess_exec(
                *self.simulator_argv,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_file,
                start_new_session=True,
            )
            log_file.close()
            self._tasks.append(asyncio.create_task(self._read_simulator()))
        self._tasks += [asyncio.create_task(self._heartbeat()), asyncio.create_task(self._pod_loop())]

    async def stop(self) -> None:
        """Stop the tasks and the simulator."""
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._sim is not None and self._sim.returncode is None:
            if self._sim.stdin is not None:
                self._sim.stdin.close()
            try:
                await asyncio.wait_for(self._sim.wait(), 5)
            except TimeoutError:
                self._sim.kill()
                await self._sim.wait()

    def is_virtual(self, node: str | None) -> bool:
        """Whether `node` is one of these virtual nodes."""
        return node is not None and node in self.nodes

    def add(self, name: str) -> None:
        """A virtual node (new, or back after a kill): its Lease is renewed from now on. Pods that were
        on it when it was killed are gone with their agents: they turn Failed, as after a reboot."""
        came_back = name in self.nodes and not self.nodes[name]
        self.nodes[name] = True
        self._renew(name)
        if came_back:
            pods_rt = self.store.type_of("", "v1", "pods")
            for pod in self.store.list(pods_rt, None)[0]:
                if (pod.get("spec") or {}).get("nodeName") == name and (pod.get("status") or {}).get(
                    "phase"
                ) in {"Running", "Pending", None}:
                    self._write_status(pod, _failed_status(pod, "NodeRestarted", 137))
        self._wake.set()

    def kill(self, name: str) -> None:
        """Power off a virtual node: its agents vanish without a word, its Lease stops being renewed."""
        self.nodes[name] = False
        for uid in [u for u, p in self.pods.items() if p.node == name]:
            gone = self.pods.pop(uid)
            self.ips.release(gone.ip)
        self._send({"op": "nodeLost", "node": name})

    def fail(self, namespace: str, pod: str, exit_code: int, reason: str | None) -> None:
        """Inject a worker failure into a virtual pod's simulated agent."""
        self._send(
            {"op": "fail", "namespace": namespace, "pod": pod, "exitCode": exit_code, "reason": reason}
        )

    # ------------------------------------------------------------------ heartbeat
    async def _heartbeat(self) -> None:
        while True:
            started = time.monotonic()
            for name, alive in list(self.nodes.items()):
                if alive:
                    self._renew(name)
            await asyncio.sleep(max(0.05, self.heartbeat_interval_s - (time.monotonic() - started)))

    def _renew(self, name: str) -> None:
        leases = self.store.type_of("coordination.k8s.io", "v1", "leases")
        spec = {
            "holderIdentity": name,
            "leaseDurationSeconds": max(1, round(self.lease_duration_s)),
            "renewTime": now_micro(),
        }
        try:
            lease = self.store.get(leases, "kube-node-lease", name)
            self.store.update(leases, "kube-node-lease", name, {**lease, "spec": {**lease["spec"], **spec}})
        except ApiError:
            self.store.create(leases, "kube-node-lease", {"metadata": {"name": name}, "spec": spec})
        nodes_rt = self.store.type_of("", "v1", "nodes")
        with contextlib.suppress(ApiError):
            node = self.store.get(nodes_rt, "", name)
            ready: dict[str, Any] = next(
                (c for c in (node.get("status") or {}).get("conditions") or [] if c.get("type") == "Ready"),
                {},
            )
            if ready.get("status") != "True":
                self._set_ready(node)

    def _set_ready(self, node: dict[str, Any]) -> None:
        nodes_rt = self.store.type_of("", "v1", "nodes")
        now = now_iso()
        status = copy.deepcopy(node.get("status") or {})
        status["conditions"] = [
            *(c for c in status.get("conditions") or [] if c.get("type") != "Ready"),
            {
                "type": "Ready",
                "status": "True",
                "reason": "KubeletReady",
                "message": "virtual kubelet is posting ready status",
                "lastHeartbeatTime": now,
                "lastTransitionTime": now,
            },
        ]
        name = node["metadata"]["name"]
        self.store.update(nodes_rt, "", name, {**node, "status": status}, subresource="status")
        taints = [
            t
            for t in (node.get("spec") or {}).get("taints") or []
            if not t.get("key", "").startswith("node.kubernetes.io/unreachable")
        ]
        if taints != ((node.get("spec") or {}).get("taints") or []):
            fresh = self.store.get(nodes_rt, "", name)
            self.store.update(
                nodes_rt, "", name, {**fresh, "spec": {**fresh.get("spec", {}), "taints": taints}}
            )

    # ------------------------------------------------------------------ pods
    def _on_change(self, key: StorageKey, event: WatchEvent) -> None:
        if key != ("", "pods"):
            return
        for obj in (event.obj, event.old):
            if obj and self.is_virtual((obj.get("spec") or {}).get("nodeName")):
                meta = obj["metadata"]
                self._dirty[(meta.get("namespace", ""), meta["name"])] = None
                self._wake.set()
                return

    async def _pod_loop(self) -> None:
        pods_rt = self.store.type_of("", "v1", "pods")
        while True:
            await self._wake.wait()
            self._wake.clear()
            dirty, self._dirty = self._dirty, {}
            for ns, name in dirty:
                try:
                    pod = self.store.get(pods_rt, ns, name)
                except ApiError:
                    continue
                try:
                    self._sync(pod)
                except Exception:  # one bad pod must not stop the others
                    log.exception("virtual pod %s/%s", ns, name)
            await asyncio.sleep(0)

    def _sync(self, pod: dict[str, Any]) -> None:
        meta, spec = pod["metadata"], pod.get("spec") or {}
        node, uid = spec.get("nodeName"), meta["uid"]
        run = self.pods.get(uid)
        if not self.nodes.get(node or "", False):
            return  # a powered-off node does nothing
        deleting = meta.get("deletionTimestamp") is not None
        phase = (pod.get("status") or {}).get("phase")
        if run is None and deleting:
            with contextlib.suppress(ApiError):
                self.store.delete(
                    self.store.type_of("", "v1", "pods"), meta["namespace"], meta["name"], grace_seconds=0
                )
        elif run is None and phase in {"Pending", None}:
            self._start_pod(pod)
        elif run is not None and deleting and not run.stopping:
            run.stopping = True
            self._send({"op": "stop", "uid": uid})
            asyncio.get_running_loop().create_task(self._finish_deletion(run))

    def _start_pod(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        key = (meta["namespace"], meta["name"])
        ip = self.ips.allocate()
        now = now_iso()
        containers = (pod.get("spec") or {}).get("containers") or []
        status = {
            **(pod.get("status") or {}),
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "startTime": now,
            "conditions": podstatus.conditions(now, initialized=True, ready=True),
            "containerStatuses": [
                podstatus.container_status(
                    c["name"], exit_code=None, restarts=0, started_at=now, pid=None, last_state={}
                )
                for c in containers
            ],
        }
        written = self._write_status(pod, status)
        if written is None:
            self.ips.release(ip)
            return
        run = VirtualPod(key, meta["uid"], pod["spec"]["nodeName"], ip, now)
        self.pods[run.uid] = run
        env: dict[str, str] = {}
        if containers:
            try:
                folders = podspec.volume_folders(written, node_dir=self.workdir, pod_dir=self.workdir)
                env = podspec.plan_container(containers[0], written, folders=folders, lookup=self._lookup).env
            except (podspec.PodSpecError, KeyError) as exc:
                log.warning("virtual pod %s/%s: %s", *key, exc)
        self._send({
            "op": "start",
            "uid": run.uid,
            "namespace": key[0],
            "pod": key[1],
            "node": run.node,
            "labels": meta.get("labels") or {},
            "env": env,
        })  # fmt: skip

    def _lookup(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self.store.get(self.store.type_of("", "v1", plural), namespace, name)
        except ApiError:
            return None

    async def _finish_deletion(self, run: VirtualPod) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(run.exited.wait(), STOP_WAIT_S)
        self.pods.pop(run.uid, None)
        self.ips.release(run.ip)
        with contextlib.suppress(ApiError):
            self.store.delete(self.store.type_of("", "v1", "pods"), *run.key, grace_seconds=0)

    def _exited(self, uid: str, code: int) -> None:
        """The simulated agent of `uid` exited with `code`: the container terminates."""
        run = self.pods.get(uid)
        if run is None:
            return
        run.exited.set()
        if run.stopping:
            return
        self.pods.pop(uid, None)
        self.ips.release(run.ip)
        try:
            pod = self.store.get(self.store.type_of("", "v1", "pods"), *run.key)
        except ApiError:
            return
        if pod["metadata"]["uid"] == uid:
            phase = "Succeeded" if code == 0 else "Failed"
            status = copy.deepcopy(pod.get("status") or {})
            status["phase"] = phase
            status["conditions"] = podstatus.conditions(now_iso(), initialized=True, ready=False)
            status["containerStatuses"] = [
                podstatus.container_status(
                    c.get("name", ""),
                    exit_code=code,
                    restarts=0,
                    started_at=run.started_at,
                    pid=None,
                    last_state={},
                )
                for c in status.get("containerStatuses") or []
            ]
            self._write_status(pod, status)

    def _write_status(self, pod: dict[str, Any], status: dict[str, Any]) -> dict[str, Any] | None:
        try:
            written: dict[str, Any] = self.store.update(
                self.store.type_of("", "v1", "pods"),
                pod["metadata"]["namespace"],
                pod["metadata"]["name"],
                {**pod, "status": status},
                subresource="status",
            )
        except ApiError:
            return None
        return written

    # ------------------------------------------------------------------ simulator pipe
    def _send(self, message: dict[str, Any]) -> None:
        if self._sim is None or self._sim.stdin is None or self._sim.stdin.is_closing():
            return
        self._sim.stdin.write(json.dumps(message).encode() + b"\n")

    async def _read_simulator(self) -> None:
        assert self._sim is not None and self._sim.stdout is not None
        while True:
            line = await self._sim.stdout.readline()
            if not line:
                log.warning("the agent simulator exited (%s)", await self._sim.wait())
                return
            try:
                message = json.loads(line)
                if message.get("op") == "exit":
                    self._exited(str(message["uid"]), int(message["code"]))
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable line from the simulator: %r", line[:200])


def _failed_status(pod: dict[str, Any], reason: str, code: int) -> dict[str, Any]:
    status = copy.deepcopy(pod.get("status") or {})
    status.update(phase="Failed", reason=reason, message="the virtual node restarted")
    status["containerStatuses"] = [
        {
            **c,
            "ready": False,
            "started": False,
            "state": {"terminated": podstatus.terminated(code, now_iso())},
        }
        for c in status.get("containerStatuses") or []
    ]
    return status


def simulator_argv(kubeconfig: str, config: dict[str, Any]) -> list[str]:
    """The command line of the agent simulator process."""
    return [
        sys.executable,
        "-m",
        "localcluster.simulator",
        "--kubeconfig",
        kubeconfig,
        "--config",
        json.dumps(config),
    ]
