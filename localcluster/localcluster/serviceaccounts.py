"""ServiceAccounts as a real control plane handles them:

- every namespace gets a `default` ServiceAccount (the ServiceAccount controller);
- the ServiceAccount admission plugin defaults a pod's `serviceAccountName` to `default`, refuses a pod
  whose ServiceAccount does not exist (403), and adds the projected `kube-api-access-*` volume (token and
  namespace) mounted at `/var/run/secrets/kubernetes.io/serviceaccount` in every container, unless
  `automountServiceAccountToken` is false on the pod or the ServiceAccount;
- `POST .../serviceaccounts/NAME/token` (TokenRequest) issues a token.

The kubelet writes the token file itself (`token_files`), bound to the pod.
"""

from __future__ import annotations

import copy
import datetime
import secrets
import string
from typing import Any

from localcluster.auth import DEFAULT_TOKEN_SECONDS, Authenticator
from localcluster.errors import ApiError
from localcluster.resources import ResourceType
from localcluster.store import Store
from localcluster.watchlog import StorageKey, WatchEvent

MOUNT_PATH = "/var/run/secrets/kubernetes.io/serviceaccount"
"""Where every container finds its token, as on a real cluster."""
VOLUME_PREFIX = "kube-api-access-"


def _suffix() -> str:
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))


class ServiceAccounts:
    """The ServiceAccount controller, admission plugin and TokenRequest, on one store."""

    def __init__(self, store: Store, authenticator: Authenticator) -> None:
        self.store = store
        self.auth = authenticator
        self.sa_rt = store.type_of("", "v1", "serviceaccounts")

    def install(self) -> None:
        """Hook into the store and give existing namespaces their `default` ServiceAccount."""
        self.store.create_hooks.append(self.admit)
        self.store.listeners.append(self._on_event)
        for ns in self.store.list(self.store.type_of("", "v1", "namespaces"), None)[0]:
            self._ensure_default(ns["metadata"]["name"])

    def _ensure_default(self, namespace: str) -> None:
        if (namespace, "default") not in self.store.objects[self.sa_rt.storage_key]:
            self.store.create(self.sa_rt, namespace, {"metadata": {"name": "default"}})

    def _on_event(self, key: StorageKey, event: WatchEvent) -> None:
        if key == ("", "namespaces") and event.type == "ADDED":
            self._ensure_default(event.obj["metadata"]["name"])

    # ------------------------------------------------------------------ admission
    def admit(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        """The ServiceAccount admission plugin (pods only)."""
        if rt.kind != "Pod":
            return obj
        meta = obj.get("metadata") or {}
        namespace = meta.get("namespace", "default")
        spec = obj.setdefault("spec", {})
        name = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        spec["serviceAccountName"] = spec["serviceAccount"] = name
        sa = self.store.objects[self.sa_rt.storage_key].get((namespace, name))
        if sa is None:
            raise ApiError(
                403,
                f'pods "{meta.get("name", "")}" is forbidden: error looking up service account '
                f'{namespace}/{name}: serviceaccount "{name}" not found',
                reason="Forbidden",
            )
        automount = spec.get("automountServiceAccountToken")
        if automount is None:
            automount = sa.get("automountServiceAccountToken", True)
        if not automount or any(
            m.get("mountPath") == MOUNT_PATH
            for c in spec.get("containers") or []
            for m in c.get("volumeMounts") or []
        ):
            return obj
        obj = copy.deepcopy(obj)
        spec = obj["spec"]
        volume = f"{VOLUME_PREFIX}{_suffix()}"
        field_ref = {"apiVersion": "v1", "fieldPath": "metadata.namespace"}
        sources = [
            {"serviceAccountToken": {"path": "token", "expirationSeconds": DEFAULT_TOKEN_SECONDS}},
            {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": field_ref}]}},
        ]
        projected = {"defaultMode": 0o644, "sources": sources}
        spec.setdefault("volumes", []).append({"name": volume, "projected": projected})
        mount = {"name": volume, "mountPath": MOUNT_PATH, "readOnly": True}
        for group in ("initContainers", "containers"):
            for container in spec.get(group) or []:
                container["volumeMounts"] = [*(container.get("volumeMounts") or []), mount]
        return obj

    # ------------------------------------------------------------------ tokens
    def token_files(self, pod: dict[str, Any]) -> dict[str, dict[str, bytes]]:
        """Volume name -> files of each projected ServiceAccount volume, with a fresh bound token."""
        out: dict[str, dict[str, bytes]] = {}
        namespace = pod["metadata"].get("namespace", "default")
        sa = (pod.get("spec") or {}).get("serviceAccountName") or "default"
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            sources = (volume.get("projected") or {}).get("sources") or []
            files: dict[str, bytes] = {}
            for source in sources:
                token = source.get("serviceAccountToken")
                if token is not None:
                    seconds = int(token.get("expirationSeconds") or DEFAULT_TOKEN_SECONDS)
                    value, _ = self.auth.issue(namespace, sa, pod=pod, seconds=seconds)
                    files[token.get("path") or "token"] = value.encode()
                for item in (source.get("downwardAPI") or {}).get("items") or []:
                    if (item.get("fieldRef") or {}).get("fieldPath") == "metadata.namespace":
                        files[item["path"]] = namespace.encode()
            if files:
                out[volume["name"]] = files
        return out

    def token_request(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """TokenRequest (`POST serviceaccounts/NAME/token`): a token, optionally bound to a pod."""
        spec = body.get("spec") or {}
        seconds = int(spec.get("expirationSeconds") or 3600)
        pod = None
        ref = spec.get("boundObjectRef") or {}
        if ref.get("kind") == "Pod":
            pod = self.store.objects[("", "pods")].get((namespace, ref.get("name", "")))
            if pod is None or (ref.get("uid") and ref["uid"] != pod["metadata"]["uid"]):
                raise ApiError(404, f'pods "{ref.get("name")}" not found')
        token, expires = self.auth.issue(namespace, name, pod=pod, seconds=seconds)
        stamp = datetime.datetime.fromtimestamp(expires, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "kind": "TokenRequest",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {**spec, "expirationSeconds": seconds},
            "status": {"token": token, "expirationTimestamp": stamp},
        }
