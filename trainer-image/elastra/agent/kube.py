"""The agent's only Kubernetes I/O: watch the membership ConfigMap, patch its own pod's annotations.

Both run on background threads and retry with backoff forever, so an unreachable API server never
blocks the agent's loop (workers keep running meanwhile).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from elastra import kubeclient
from elastra.agent.config import AgentConfig
from elastra.api.membership import MEMBERSHIP_KEY, Membership, membership_configmap_name

log = logging.getLogger("elastra.agent")

MAX_BACKOFF_S = 10.0


def load_kube_config() -> Any:
    """An API client: the kubeconfig in `KUBECONFIG` when set, else the pod's ServiceAccount
    (`elastra.kubeclient`)."""
    from kubernetes import client

    return client.CoreV1Api(kubeclient.api_client())


def parse_membership(configmap_data: dict[str, str] | None) -> Membership | None:
    """The record in a ConfigMap's data; None when absent. Raises ValueError when malformed."""
    raw = (configmap_data or {}).get(MEMBERSHIP_KEY)
    if raw is None:
        return None
    try:
        return Membership.model_validate(json.loads(raw))
    except (ValueError, ValidationError) as exc:
        raise ValueError(f"malformed membership record: {exc}") from exc


class KubeLink:
    """Membership in, annotations out."""

    def __init__(self, cfg: AgentConfig, on_membership: Callable[[Membership | None], None]) -> None:
        self.cfg = cfg
        self._on_membership = on_membership
        self._api: Any = None
        self._stop = threading.Event()
        self._pending: dict[str, str] = {}
        self._pending_lock = threading.Lock()
        self._wake = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        self._api = load_kube_config()
        for target, name in ((self._watch_loop, "membership"), (self._report_loop, "report")):
            thread = threading.Thread(target=target, name=f"elastra-agent-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, flush_timeout: float = 3.0) -> None:
        """Try to deliver the last report, then stop the threads."""
        self._wake.set()
        deadline = threading.Event()
        for _ in range(int(flush_timeout / 0.05)):
            with self._pending_lock:
                if not self._pending:
                    break
            deadline.wait(0.05)
        self._stop.set()
        self._wake.set()

    # ------------------------------------------------------------------ membership
    def _deliver(self, data: dict[str, str] | None) -> None:
        try:
            self._on_membership(parse_membership(data))
        except ValueError as exc:
            log.error("%s (keeping the previous one)", exc)

    def _watch_loop(self) -> None:
        from kubernetes import watch

        name = membership_configmap_name(self.cfg.job)
        selector = f"metadata.name={name}"
        backoff = 0.5
        while not self._stop.is_set():
            try:
                listed = self._api.list_namespaced_config_map(self.cfg.namespace, field_selector=selector)
                self._deliver(listed.items[0].data if listed.items else None)
                stream = watch.Watch().stream(
                    self._api.list_namespaced_config_map,
                    self.cfg.namespace,
                    field_selector=selector,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=max(1, int(self.cfg.poll_interval_s)),
                )
                for event in stream:
                    if self._stop.is_set():
                        return
                    obj = event["object"]
                    self._deliver(None if event["type"] == "DELETED" else obj.data)
                backoff = 0.5
            except Exception as exc:  # the API server may be down or restarting: retry forever
                log.warning("membership watch: %s; retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)

    # ------------------------------------------------------------------ reports
    def report(self, annotations: dict[str, str]) -> None:
        """Queue annotations for the own pod; newer values of a key replace older unsent ones."""
        with self._pending_lock:
            self._pending.update(annotations)
        self._wake.set()

    def _report_loop(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            self._wake.wait()
            self._wake.clear()
            with self._pending_lock:
                batch, self._pending = self._pending, {}
            if not batch:
                continue
            try:
                body = {"metadata": {"annotations": batch}}
                self._api.patch_namespaced_pod(self.cfg.pod, self.cfg.namespace, body)
                backoff = 0.5
            except Exception as exc:
                log.warning("reporting on pod %s: %s; retrying in %.1fs", self.cfg.pod, exc, backoff)
                with self._pending_lock:
                    self._pending = {**batch, **self._pending}
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
                self._wake.set()
