"""`elastra.kubeclient.in_cluster`: a pod's way to the API server, from its environment and its
ServiceAccount folder (the folder's files are input: a missing one must not weaken the connection)."""

from __future__ import annotations

import pathlib

import pytest

from elastra import kubeclient


def _folder(tmp_path: pathlib.Path, *, ca: bool, namespace: bool = True) -> pathlib.Path:
    (tmp_path / "token").write_text("t0k3n\n")
    if ca:
        (tmp_path / "ca.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    if namespace:
        (tmp_path / "namespace").write_text("team-a\n")
    return tmp_path


@pytest.mark.parametrize(
    ("host", "ca", "server", "uses_folder_ca"),
    [
        pytest.param("10.0.0.1", True, "https://10.0.0.1:443", True, id="with-ca"),
        pytest.param("10.0.0.1", False, "https://10.0.0.1:443", False, id="no-ca-still-https-never-plain"),
        pytest.param("fd00::1", True, "https://[fd00::1]:443", True, id="ipv6-host-bracketed"),
    ],
)
def test_in_cluster_is_always_https(
    tmp_path: pathlib.Path, host: str, ca: bool, server: str, uses_folder_ca: bool
) -> None:
    folder = _folder(tmp_path, ca=ca)
    env = {"KUBERNETES_SERVICE_HOST": host, "KUBERNETES_SERVICE_PORT": "443",
           kubeclient.SERVICEACCOUNT_DIR_ENV: str(folder)}  # fmt: skip
    settings = kubeclient.in_cluster(env)
    assert settings.server == server
    assert (settings.ca_path is not None) is uses_folder_ca
    assert settings.token() == "t0k3n"
    assert settings.namespace == "team-a"


@pytest.mark.parametrize(
    ("env", "match"),
    [
        pytest.param({}, "not running in a pod", id="no-service-env"),
        pytest.param({"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "1"},
                     "no ServiceAccount token", id="no-token"),
    ],
)  # fmt: skip
def test_in_cluster_refuses_without_a_pod_identity(
    tmp_path: pathlib.Path, env: dict[str, str], match: str
) -> None:
    with pytest.raises(kubeclient.InClusterError, match=match):
        kubeclient.in_cluster({**env, kubeclient.SERVICEACCOUNT_DIR_ENV: str(tmp_path)})
