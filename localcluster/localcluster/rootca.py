"""The cluster CA inside the cluster, as kube-controller-manager and the kubelet put it there:

- the root-CA publisher gives every namespace the `kube-root-ca.crt` ConfigMap (`ca.crt`);
- the ServiceAccount admission plugin's projected `kube-api-access-*` volume gets that ConfigMap as
  its third source, so each container finds `token`, `namespace` and `ca.crt` at
  /var/run/secrets/kubernetes.io/serviceaccount;
- `with_ca` extends the kubelet's projected-volume files with the ConfigMap's keys.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from localcluster.resources import ResourceType
from localcluster.serviceaccounts import VOLUME_PREFIX
from localcluster.store import Store
from localcluster.tls import ROOT_CA_CONFIGMAP
from localcluster.watchlog import StorageKey, WatchEvent

TokenFiles = Callable[[dict[str, Any]], dict[str, dict[str, bytes]]]


class RootCa:
    """Publishes the CA to namespaces and pods of one store."""

    def __init__(self, store: Store, ca_pem: bytes) -> None:
        self.store = store
        self.ca_pem = ca_pem
        self.cm_rt = store.type_of("", "v1", "configmaps")

    def install(self) -> None:
        """Publish to the namespaces there are and those to come; extend the pod admission."""
        self.store.listeners.append(self._on_event)
        self.store.create_hooks.append(self._admit)
        for ns in self.store.list(self.store.type_of("", "v1", "namespaces"), None)[0]:
            self._publish(ns["metadata"]["name"])

    def _publish(self, namespace: str) -> None:
        if (namespace, ROOT_CA_CONFIGMAP) not in self.store.objects[self.cm_rt.storage_key]:
            body = {"metadata": {"name": ROOT_CA_CONFIGMAP}, "data": {"ca.crt": self.ca_pem.decode()}}
            self.store.create(self.cm_rt, namespace, body)

    def _on_event(self, key: StorageKey, event: WatchEvent) -> None:
        if key == ("", "namespaces") and event.type == "ADDED":
            self._publish(event.obj["metadata"]["name"])

    def _admit(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """Add the CA ConfigMap to the ServiceAccount volume the ServiceAccount plugin just added."""
        if rt.kind != "Pod":
            return obj
        for volume in (obj.get("spec") or {}).get("volumes") or []:
            sources = (volume.get("projected") or {}).get("sources")
            if not volume.get("name", "").startswith(VOLUME_PREFIX) or sources is None:
                continue
            if not any("configMap" in s for s in sources):
                item = {"key": "ca.crt", "path": "ca.crt"}
                sources.append({"configMap": {"name": ROOT_CA_CONFIGMAP, "items": [item]}})
        return obj

    def with_ca(self, token_files: TokenFiles) -> TokenFiles:
        """`token_files` plus the keys of each projected volume's ConfigMap sources."""

        def files(pod: dict[str, Any]) -> dict[str, dict[str, bytes]]:
            out = token_files(pod)
            namespace = pod["metadata"].get("namespace", "default")
            for volume in (pod.get("spec") or {}).get("volumes") or []:
                for source in (volume.get("projected") or {}).get("sources") or []:
                    ref = source.get("configMap")
                    if ref is None:
                        continue
                    cm = self.store.objects[self.cm_rt.storage_key].get((namespace, ref.get("name", "")))
                    data = (cm or {}).get("data") or {}
                    items = ref.get("items") or [{"key": k, "path": k} for k in data]
                    for item in items:
                        if item.get("key") in data:
                            target = out.setdefault(volume["name"], {})
                            target[item.get("path") or item["key"]] = data[item["key"]].encode()
            return out

        return files
