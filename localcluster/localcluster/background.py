"""`LocalCluster`: a `ClusterCore` on its own event loop in a background thread, for tests and the
demo. Calls from other threads are run on that loop and waited for."""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import threading
from dataclasses import asdict
from typing import Any

from localcluster import tls
from localcluster.cluster import S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, ClusterConfig, ClusterCore


class LocalCluster:
    """A local cluster on a background thread: `with LocalCluster(workdir=tmp) as lc: lc.kubeconfig`."""

    def __init__(
        self,
        *,
        workdir: str | os.PathLike[str],
        nodes: int = 4,
        gpus_per_node: int = 1,
        s3: bool = False,
        **options: Any,
    ) -> None:
        self.config = ClusterConfig(
            workdir=str(workdir), nodes=nodes, gpus_per_node=gpus_per_node, s3=s3, **options
        )
        self._core: ClusterCore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> LocalCluster:
        """Start serving; returns once the API answers and the nodes exist."""
        self._thread = threading.Thread(target=self._main, name="localcluster", daemon=True)
        self._thread.start()
        self._ready.wait(60)
        if self._error is not None:
            raise RuntimeError(f"localcluster failed to start: {self._error}") from self._error
        if not self._ready.is_set():
            self.stop()  # the loop may still finish starting: have it stop right after
            raise RuntimeError("localcluster did not start within 60 s")
        return self

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        core = ClusterCore(self.config)
        try:
            await core.start()
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            await core.stop()
            return
        self._core = core
        self._ready.set()
        await self._stop.wait()
        await core.stop()

    def stop(self) -> None:
        """Kill every pod process and stop the server."""
        if (
            self._loop is not None
            and self._stop is not None
            and self._thread is not None
            and self._thread.is_alive()
        ):
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ access
    @property
    def core(self) -> ClusterCore:
        """The running core (for calls made on its loop)."""
        if self._core is None:
            raise RuntimeError("localcluster is not running")
        return self._core

    @property
    def url(self) -> str:
        """The API server URL."""
        return self.core.url

    @property
    def kubeconfig(self) -> str:
        """Path of a kubeconfig for kubectl, the kubernetes client, kopf and Helm."""
        return self.core.kubeconfig

    @property
    def ca_pem(self) -> bytes:
        """The cluster CA (PEM) that signed the API server's certificate."""
        return self.core.pki.ca_pem

    def ssl_context(self) -> ssl.SSLContext:
        """A client TLS context that trusts the cluster CA (for plain urllib/aiohttp clients of the API)."""
        return tls.client_context(self.core.pki.ca_pem)

    @property
    def s3_url(self) -> str | None:
        """The moto S3 endpoint, when started with `s3=True`."""
        return self.core.s3_url

    @property
    def s3_credentials(self) -> dict[str, str]:
        """Environment variables for boto3 against the local S3 endpoint."""
        return {
            "AWS_ENDPOINT_URL_S3": self.core.s3_url or "",
            "AWS_ACCESS_KEY_ID": S3_ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY,
            "AWS_REGION": S3_REGION,
        }

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        core = self.core
        assert self._loop is not None

        async def run() -> Any:
            return fn(core, *args, **kwargs)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def kill_node(self, name: str) -> None:
        """SIGKILL the node's pods and stop its heartbeats (it turns NotReady after `node_grace_s`)."""
        self._call(ClusterCore.kill_node, name)

    def freeze_node(self, name: str) -> int:
        """SIGSTOP the node's pod processes and stop its heartbeats; returns how many were stopped."""
        return int(self._call(ClusterCore.freeze_node, name))

    def thaw_node(self, name: str) -> int:
        """Resume a frozen node; returns how many processes were resumed."""
        return int(self._call(ClusterCore.thaw_node, name))

    def add_node(self, name: str | None = None) -> str:
        """Add a node (or restart a killed one by name); returns its name."""
        return str(self._call(ClusterCore.add_node, name))

    def fail_pod(self, namespace: str, pod: str, exit_code: int = 137) -> None:
        """Make a virtual pod's simulated workers fail (see `ClusterCore.fail_pod`)."""
        self._call(ClusterCore.fail_pod, namespace, pod, exit_code)

    def cordon(self, name: str) -> None:
        """Mark a node unschedulable."""
        self._call(ClusterCore.cordon, name)

    def uncordon(self, name: str) -> None:
        """Mark a node schedulable again."""
        self._call(ClusterCore.cordon, name, unschedulable=False)

    def drain(self, name: str) -> list[str]:
        """Cordon the node and evict its pods."""
        return list(self._call(ClusterCore.drain, name))

    def status(self) -> dict[str, Any]:
        """Nodes and endpoints."""
        return dict(self._call(ClusterCore.status))

    def config_json(self) -> str:
        """The configuration, as JSON (for logs and the state file)."""
        return json.dumps(asdict(self.config))
