"""A whole local cluster: API server, scheduler, node lifecycle controller and one process kubelet
per node, all on one asyncio event loop, plus an optional moto S3 endpoint.

`ClusterCore` is the async core. `localcluster.background.LocalCluster` runs it on a background thread
for tests and the demo; `localcluster.server` runs it as a detached process for `elastra local up`.
Both serve the control endpoints under `/localcluster/v1/` (node kill/add/cordon/uncordon/drain,
status, shutdown) that the CLI uses from other shells.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import pathlib
import platform
import socket
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from localcluster import tls
from localcluster.apiserver import ApiServer
from localcluster.controllers import NodeLifecycle, Scheduler, record_event
from localcluster.deployments import DeploymentController
from localcluster.errors import ApiError
from localcluster.ippool import IpPool
from localcluster.kubelet import Kubelet
from localcluster.requestcount import RequestCounter
from localcluster.rootca import RootCa
from localcluster.security import Security
from localcluster.store import Store, now_iso
from localcluster.virtual import VIRTUAL_LABEL, VirtualNodes, simulator_argv, virtual_node_name
from localcluster.watchlog import StorageKey, WatchEvent

S3_ACCESS_KEY = "localcluster"
S3_SECRET_KEY = "localcluster-secret"  # noqa: S105 - moto accepts any key; a fixed, public test value
S3_REGION = "us-east-1"


@dataclass(kw_only=True, slots=True)
class ClusterConfig:
    """How to start a local cluster."""

    workdir: str
    """State folder: kubeconfig, node folders (hostPath volumes, pod logs)."""
    nodes: int = 4
    """Nodes created at start (`node-1` ... `node-N`)."""
    gpus_per_node: int = 1
    """Allocatable `nvidia.com/gpu` per node (a counted extended resource; no real GPU)."""
    cpu_per_node: str = "8"
    """Allocatable cpu per node."""
    memory_per_node: str = "32Gi"
    """Allocatable memory per node."""
    host: str = "127.0.0.1"
    """API server bind address."""
    port: int = 0
    """API server port; 0 picks a free one."""
    heartbeat_interval_s: float = 2.0
    """How often each kubelet renews its node Lease."""
    node_grace_s: float = 10.0
    """A node whose Lease is older than this turns NotReady (real clusters: 40 s)."""
    bookmark_interval_s: float = 30.0
    """How often idle watches that asked for bookmarks get one."""
    s3: bool = False
    """Also start a moto S3 endpoint."""
    compaction_interval_s: float = 300.0
    """Like etcd: every interval, watch history older than one interval is dropped (410 Gone)."""
    container_cwd: str | None = None
    """Working dir of containers without workingDir; None: the current directory."""
    validation_rules: bool = True
    """Evaluate CRD CEL rules (`x-kubernetes-validations`) like a real API server (422 on failure).
    Turn off only to emulate a server that does not evaluate CEL."""
    rbac: bool = True
    """Authenticate every request and authorize it with RBAC, as a real API server does: the admin
    kubeconfig is cluster-admin, each pod gets its ServiceAccount's token. Off: anybody may do anything."""
    virtual_nodes: int = 0
    """Virtual nodes created at start (`vnode-1` ... `vnode-N`): their pods run no process; the protocol
    simulator (`localcluster.simulator`) plays their Elastra agents through the API."""
    simulator: dict[str, Any] | None = None
    """Protocol simulator settings (`localcluster.simulator.SimulatorConfig` fields); None: defaults."""

    def __post_init__(self) -> None:
        if self.nodes < 0 or self.gpus_per_node < 0 or self.virtual_nodes < 0:
            raise ValueError("nodes and gpus_per_node must be >= 0")
        if self.heartbeat_interval_s <= 0 or self.node_grace_s <= self.heartbeat_interval_s:
            raise ValueError(
                f"node_grace_s ({self.node_grace_s}) must exceed "
                f"heartbeat_interval_s ({self.heartbeat_interval_s}) > 0"
            )


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class ClusterCore:
    """The cluster on the current event loop."""

    def __init__(self, config: ClusterConfig) -> None:
        self.config = config
        self.workdir = pathlib.Path(config.workdir).resolve()
        self.store = Store(validation_rules=config.validation_rules)
        self.kubelets: dict[str, Kubelet] = {}
        self.ips = IpPool()
        self.security = Security(self.store)
        """Tokens, ServiceAccounts and RBAC objects exist either way; checks only with `config.rbac`."""
        self.security.install()
        self.pki = tls.make_pki(self.workdir / "pki", config.host)
        """The cluster CA and the API server's certificate: the API is served over HTTPS only."""
        self.root_ca = RootCa(self.store, self.pki.ca_pem)
        self.root_ca.install()
        self.api = ApiServer(
            self.store,
            bookmark_interval_s=config.bookmark_interval_s,
            log_path=self._log_path,
            security=self.security if config.rbac else None,
        )
        self.url = ""
        self.kubeconfig = str(self.workdir / "kubeconfig")
        self.s3_url: str | None = None
        self.shutdown_requested = asyncio.Event()
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._moto: Any = None
        self.store.listeners.append(self._route_pod_events)
        self.requests = RequestCounter()
        self.api.app.middlewares.insert(0, self.requests.middleware)
        self._add_control_routes(self.api.app)
        self.virtual: VirtualNodes | None = None

    async def start(self) -> None:
        """Serve the API, start the controllers and the initial nodes."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        port = self.config.port or free_port(self.config.host)
        self._runner = web.AppRunner(
            self.api.app, access_log=None, handler_cancellation=True, shutdown_timeout=0.5
        )
        await self._runner.setup()
        await web.TCPSite(self._runner, self.config.host, port, ssl_context=self.pki.server_context()).start()
        self.url = f"https://{self.config.host}:{port}"
        self.api.address = f"{self.config.host}:{port}"
        self._write_kubeconfig()
        self._tasks = [
            asyncio.create_task(Scheduler(self.store).run()),
            asyncio.create_task(NodeLifecycle(self.store, grace_s=self.config.node_grace_s).run()),
            asyncio.create_task(DeploymentController(self.store).run()),
        ]
        if self.config.s3:
            from moto.server import ThreadedMotoServer

            s3_port = free_port(self.config.host)
            self._moto = ThreadedMotoServer(ip_address=self.config.host, port=s3_port, verbose=False)
            self._moto.start()
            self.s3_url = f"http://{self.config.host}:{s3_port}"
        for index in range(1, self.config.nodes + 1):
            self.add_node(f"node-{index}")
        if self.config.virtual_nodes:
            await self._start_virtual()
        self.store.compact(self.store.rv)
        self._tasks.append(asyncio.create_task(self._compact_periodically()))

    async def _compact_periodically(self) -> None:
        previous = self.store.rv
        while True:
            await asyncio.sleep(self.config.compaction_interval_s)
            self.store.compact(previous)
            previous = self.store.rv

    async def _start_virtual(self) -> None:
        self.virtual = VirtualNodes(
            store=self.store,
            ips=self.ips,
            workdir=self.workdir,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            lease_duration_s=self.config.node_grace_s,
            simulator_argv=simulator_argv(self.kubeconfig, self.config.simulator or {}),
            on_event=lambda obj, reason, message, kind: record_event(
                self.store, obj, reason, message, kind, component="kubelet"
            ),
        )
        await self.virtual.start()
        nodes_rt = self.store.type_of("", "v1", "nodes")
        for index in range(1, self.config.virtual_nodes + 1):
            name = virtual_node_name(index)
            node = self._node_object(name)
            node["metadata"]["labels"][VIRTUAL_LABEL] = "true"
            self.store.create(nodes_rt, "", node)
            self.virtual.add(name)

    async def stop(self) -> None:
        """Kill every pod process, stop the controllers and the server."""
        if self.virtual is not None:
            await self.virtual.stop()
        for kubelet in list(self.kubelets.values()):
            await kubelet.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._moto is not None:
            self._moto.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "localcluster",
                    "cluster": {
                        "server": self.url,
                        "certificate-authority-data": base64.b64encode(self.pki.ca_pem).decode(),
                    },
                }
            ],
            "users": [{"name": "localcluster", "user": {"token": self.security.authenticator.admin_token}}],
            "contexts": [
                {
                    "name": "localcluster",
                    "context": {"cluster": "localcluster", "user": "localcluster", "namespace": "default"},
                }
            ],
            "current-context": "localcluster",
        }
        path = pathlib.Path(self.kubeconfig)
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    # ------------------------------------------------------------------ nodes
    def add_node(self, name: str | None = None) -> str:
        """Create (or bring back) a node and start its kubelet."""
        if name is None:
            index = 1
            while f"node-{index}" in self.kubelets or self._node_exists(f"node-{index}"):
                index += 1
            name = f"node-{index}"
        if name in self.kubelets and self.kubelets[name].alive:
            raise ApiError(409, f"node {name} is already running")
        if self.virtual is not None and self.virtual.is_virtual(name):
            if self.virtual.nodes[name]:
                raise ApiError(409, f"node {name} is already running")
            self.virtual.add(name)
            return name
        nodes_rt = self.store.type_of("", "v1", "nodes")
        if not self._node_exists(name):
            self.store.create(nodes_rt, "", self._node_object(name))
        # Pods reach the API as their ServiceAccount (in-cluster configuration), never as the admin.
        env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
        host, _, port = self.api.address.rpartition(":")
        env.update(LOCALCLUSTER_NODE=name, KUBERNETES_SERVICE_HOST=host, KUBERNETES_SERVICE_PORT=port)
        kubelet = Kubelet(
            store=self.store,
            node=name,
            node_dir=self.workdir / "nodes" / name,
            ips=self.ips,
            heartbeat_interval_s=self.config.heartbeat_interval_s,
            lease_duration_s=self.config.node_grace_s,
            base_env=env,
            default_cwd=self.config.container_cwd or os.getcwd(),
            token_files=self.root_ca.with_ca(self.security.service_accounts.token_files),
            on_event=lambda obj, reason, message, kind: record_event(
                self.store, obj, reason, message, kind, component="kubelet"
            ),
        )
        self.kubelets[name] = kubelet
        kubelet.start()
        kubelet.poke()
        return name

    def _node_exists(self, name: str) -> bool:
        try:
            self.store.get(self.store.type_of("", "v1", "nodes"), "", name)
        except ApiError:
            return False
        return True

    def _node_object(self, name: str) -> dict[str, Any]:
        resources = {
            "cpu": self.config.cpu_per_node,
            "memory": self.config.memory_per_node,
            "pods": "110",
            "ephemeral-storage": "100Gi",
        }
        if self.config.gpus_per_node:
            resources["nvidia.com/gpu"] = str(self.config.gpus_per_node)
        labels = {
            "kubernetes.io/hostname": name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "localcluster",
        }
        return {
            "metadata": {"name": name, "labels": labels},
            "spec": {},
            "status": {
                "capacity": resources,
                "allocatable": resources,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": "KubeletNotReady",
                        "message": "kubelet is starting",
                        "lastHeartbeatTime": now_iso(),
                        "lastTransitionTime": now_iso(),
                    }
                ],
                "addresses": [
                    {"type": "InternalIP", "address": "127.0.0.1"},
                    {"type": "Hostname", "address": name},
                ],
                "nodeInfo": {
                    "kubeletVersion": "v1.32.0-localcluster",
                    "kubeProxyVersion": "v1.32.0-localcluster",
                    "operatingSystem": "linux",
                    "architecture": "amd64",
                    "containerRuntimeVersion": "localcluster://process",
                    "kernelVersion": platform.release(),
                    "osImage": "localcluster",
                    "bootID": name,
                    "machineID": name,
                    "systemUUID": name,
                },
            },
        }

    def _kubelet(self, name: str) -> Kubelet:
        kubelet = self.kubelets.get(name)
        if kubelet is None:
            raise ApiError(404, f'nodes "{name}" not found')
        return kubelet

    def kill_node(self, name: str) -> None:
        """SIGKILL the node's pod processes and stop its heartbeats (NotReady after the grace period)."""
        if self.virtual is not None and self.virtual.is_virtual(name):
            self.virtual.kill(name)
            return
        self._kubelet(name).kill()

    def freeze_node(self, name: str) -> int:
        """SIGSTOP the node's pod processes and stop its heartbeats; returns the processes stopped."""
        kubelet = self._kubelet(name)
        if not kubelet.alive:
            raise ApiError(409, f'node "{name}" is killed, not running: nothing to freeze')
        return kubelet.freeze()

    def thaw_node(self, name: str) -> int:
        """SIGCONT a frozen node's processes and resume its heartbeats; returns the processes resumed."""
        kubelet = self._kubelet(name)
        if not kubelet.frozen:
            raise ApiError(409, f'node "{name}" is not frozen')
        return kubelet.thaw()

    def fail_pod(self, namespace: str, pod: str, exit_code: int = 137, reason: str | None = None) -> None:
        """Make a virtual pod's simulated workers fail with `exit_code` (its peers see a lost peer)."""
        if self.virtual is None:
            raise ApiError(404, "this cluster has no virtual nodes")
        self.virtual.fail(namespace, pod, exit_code, reason)

    def cordon(self, name: str, *, unschedulable: bool = True) -> None:
        """Mark a node (un)schedulable."""
        nodes_rt = self.store.type_of("", "v1", "nodes")
        node = self.store.get(nodes_rt, "", name)
        spec = {k: v for k, v in (node.get("spec") or {}).items() if k != "unschedulable"}
        if unschedulable:
            spec["unschedulable"] = True
        self.store.update(nodes_rt, "", name, {**node, "spec": spec})

    def drain(self, name: str) -> list[str]:
        """Cordon, then evict (gracefully delete) every pod on the node; returns `ns/name` of each."""
        self.cordon(name)
        pods_rt = self.store.type_of("", "v1", "pods")
        evicted = []
        for pod in self.store.list(pods_rt, None)[0]:
            if (pod.get("spec") or {}).get("nodeName") == name and not pod["metadata"].get(
                "deletionTimestamp"
            ):
                self.store.delete(pods_rt, pod["metadata"]["namespace"], pod["metadata"]["name"])
                evicted.append(f"{pod['metadata']['namespace']}/{pod['metadata']['name']}")
        return evicted

    def status(self) -> dict[str, Any]:
        """Nodes (ready, schedulable, kubelet alive, pod count) and endpoints."""
        nodes = []
        pods = self.store.list(self.store.type_of("", "v1", "pods"), None)[0]
        for node in self.store.list(self.store.type_of("", "v1", "nodes"), None)[0]:
            name = node["metadata"]["name"]
            ready = next(
                (
                    c.get("status")
                    for c in (node.get("status") or {}).get("conditions") or []
                    if c.get("type") == "Ready"
                ),
                "Unknown",
            )
            nodes.append({
                "name": name,
                "ready": ready,
                "schedulable": not (node.get("spec") or {}).get("unschedulable"),
                "kubelet": self._kubelet_state(name),
                "pods": sum(1 for p in pods if (p.get("spec") or {}).get("nodeName") == name),
            })  # fmt: skip
        return {
            "url": self.url,
            "kubeconfig": self.kubeconfig,
            "s3": self.s3_url,
            "nodes": nodes,
            "pid": os.getpid(),
        }

    def _kubelet_state(self, name: str) -> str:
        """`running`, `frozen`, `virtual` or `killed`, for `status()`."""
        if self.virtual is not None and self.virtual.is_virtual(name):
            return "virtual" if self.virtual.nodes[name] else "killed"
        kubelet = self.kubelets.get(name)
        if kubelet is None or not kubelet.alive:
            return "killed"
        return "frozen" if kubelet.frozen else "running"

    # ------------------------------------------------------------------ plumbing
    def _route_pod_events(self, key: StorageKey, event: WatchEvent) -> None:
        if key != ("", "pods"):
            return
        for obj in (event.obj, event.old):
            node = ((obj or {}).get("spec") or {}).get("nodeName")
            kubelet = self.kubelets.get(node) if node else None
            if kubelet is not None and kubelet.alive:
                kubelet.poke()

    def _log_path(self, namespace: str, pod: str, container: str, previous: bool) -> pathlib.Path | None:
        try:
            obj = self.store.get(self.store.type_of("", "v1", "pods"), namespace, pod)
        except ApiError:
            return None
        node = (obj.get("spec") or {}).get("nodeName")
        kubelet = self.kubelets.get(node) if node else None
        return kubelet.log_path(namespace, pod, container, previous) if kubelet else None

    def _add_control_routes(self, app: web.Application) -> None:
        async def status(_request: web.Request) -> web.Response:
            return web.json_response(self.status())

        async def add(request: web.Request) -> web.Response:
            body = await request.json() if request.can_read_body else {}
            return web.json_response({"name": self.add_node(body.get("name"))})

        async def node_action(request: web.Request) -> web.Response:
            name, action = request.match_info["name"], request.match_info["action"]
            result: Any = None
            if action == "kill":
                self.kill_node(name)
            elif action == "freeze":
                result = self.freeze_node(name)
            elif action == "thaw":
                result = self.thaw_node(name)
            elif action in {"cordon", "uncordon"}:
                self.cordon(name, unschedulable=action == "cordon")
            elif action == "drain":
                result = self.drain(name)
            elif action == "add":
                result = self.add_node(name)
            else:
                raise ApiError(404, f"unknown node action {action!r}")
            return web.json_response({"node": name, "action": action, "result": result})

        async def fail_pod(request: web.Request) -> web.Response:
            body = await request.json() if request.can_read_body else {}
            namespace, pod = request.match_info["namespace"], request.match_info["name"]
            self.fail_pod(namespace, pod, int(body.get("exitCode", 137)), body.get("reason") or None)
            return web.json_response({"pod": f"{namespace}/{pod}", "action": "fail"})

        async def requests(_request: web.Request) -> web.Response:
            return web.json_response(self.requests.snapshot())

        async def shutdown(_request: web.Request) -> web.Response:
            self.shutdown_requested.set()
            return web.json_response({"shutdown": True})

        app.router.add_get("/localcluster/v1/status", status)
        app.router.add_post("/localcluster/v1/nodes", add)
        app.router.add_post("/localcluster/v1/nodes/{name}/{action}", node_action)
        app.router.add_post("/localcluster/v1/shutdown", shutdown)
        app.router.add_get("/localcluster/v1/requests", requests)
        app.router.add_post("/localcluster/v1/virtual/pods/{namespace}/{name}/fail", fail_pod)
