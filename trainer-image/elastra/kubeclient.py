"""How Elastra's processes reach the Kubernetes API: a kubeconfig when one is named, else in-cluster
configuration from the pod's ServiceAccount.

In-cluster configuration reads `token` (re-read when the kubelet rotates it), `namespace` and, when
present, `ca.crt` from the ServiceAccount folder, and the API server's address from
`KUBERNETES_SERVICE_HOST`/`KUBERNETES_SERVICE_PORT`. The folder is the in-cluster path
`/var/run/secrets/kubernetes.io/serviceaccount` unless `ELASTRA_SERVICEACCOUNT_DIR` names another one:
the operator always sets it to that same path in worker pods, so localcluster (which has no mount
namespaces and maps mount paths to per-pod folders) can rewrite it to the pod's own folder. The server
is always reached over HTTPS: with `ca.crt` as the trust anchor when the folder has one, else the
client's default bundle (the kubernetes client's: certifi's). There is no plain-HTTP fallback: the
token is a credential, and a missing `ca.crt` must not send it in clear text.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from elastra.api.pod import SERVICEACCOUNT_DIR, SERVICEACCOUNT_DIR_ENV

__all__ = ["SERVICEACCOUNT_DIR", "SERVICEACCOUNT_DIR_ENV", "InCluster", "api_client", "in_cluster"]


class InClusterError(RuntimeError):
    """Neither a kubeconfig nor a usable in-cluster ServiceAccount."""


@dataclass(frozen=True, slots=True)
class InCluster:
    """Where and how to reach the API server from inside a pod."""

    server: str
    """`https://host:port`."""
    token_path: pathlib.Path
    """The ServiceAccount token file."""
    ca_path: pathlib.Path | None
    """The cluster CA bundle, when the folder has one."""
    namespace: str | None
    """The pod's namespace, from the folder."""

    def token(self) -> str:
        """The current token (the kubelet may have rotated it)."""
        return self.token_path.read_text().strip()


def in_cluster(environ: Mapping[str, str] | None = None) -> InCluster:
    """The in-cluster settings of this process; InClusterError when it is not in a pod."""
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise InClusterError("KUBERNETES_SERVICE_HOST/PORT are not set: not running in a pod")
    folder = pathlib.Path(env.get(SERVICEACCOUNT_DIR_ENV) or SERVICEACCOUNT_DIR)
    token = folder / "token"
    if not token.is_file():
        raise InClusterError(f"no ServiceAccount token at {token}")
    ca = folder / "ca.crt"
    host = f"[{host}]" if ":" in host else host
    namespace_file = folder / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.is_file() else None
    return InCluster(f"https://{host}:{port}", token, ca if ca.is_file() else None, namespace)


def in_cluster_configuration(settings: InCluster) -> Any:
    """A `kubernetes.client.Configuration` that re-reads the token before each request."""
    from kubernetes import client

    conf = client.Configuration()
    conf.host = settings.server
    if settings.ca_path is not None:
        conf.ssl_ca_cert = str(settings.ca_path)
    # The full header value under the old key: clients before and after v36 (which looks for
    # `BearerToken`, falling back to `authorization`) both send it as it is.
    conf.api_key = {"authorization": f"Bearer {settings.token()}"}

    def refresh(configuration: Any) -> None:
        configuration.api_key["authorization"] = f"Bearer {settings.token()}"

    conf.refresh_api_key_hook = refresh
    return conf


def api_client(kubeconfig: str | None = None) -> Any:
    """A `kubernetes.client.ApiClient`: the kubeconfig given or in `KUBECONFIG`, else in-cluster."""
    from kubernetes import client, config

    path = kubeconfig or os.environ.get("KUBECONFIG")
    if path or not os.environ.get("KUBERNETES_SERVICE_HOST"):
        return config.new_client_from_config(config_file=path)
    return client.ApiClient(in_cluster_configuration(in_cluster()))
