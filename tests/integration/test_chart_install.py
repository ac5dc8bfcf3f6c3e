"""Install the chart with helm-python-sdk (Helm's Go SDK) into a localcluster and read every object
back from its API server: the CRDs first (from crds/ and the kopf-peering subchart), then each
templated object, in both RBAC scopes; uninstall removes the templates and keeps the CRDs."""

from __future__ import annotations

import json
import pathlib
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import pytest
import yaml

from localcluster import LocalCluster, tls

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "elastra"
CRDS = {
    "trainingjobs.elastra.dev",
    "checkpoints.elastra.dev",
    "clusterkopfpeerings.kopf.dev",
    "kopfpeerings.kopf.dev",
}
pytestmark = pytest.mark.timeout(120)


class Api:
    """Plain reads over HTTPS against the cluster's API server, as the kubeconfig describes it."""

    def __init__(self, kubeconfig: str) -> None:
        config = yaml.safe_load(pathlib.Path(kubeconfig).read_text())
        self.server = config["clusters"][0]["cluster"]["server"]
        self.token = config["users"][0]["user"]["token"]
        self.context = tls.kubeconfig_context(kubeconfig)  # HTTPS only, with the cluster CA

    def get(self, path: str) -> dict[str, Any] | None:
        """The object at `path`, or None on 404."""
        request = urllib.request.Request(
            self.server + path, headers={"Authorization": f"Bearer {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.context) as response:
                found: dict[str, Any] = json.loads(response.read())
                return found
        except urllib.error.HTTPError as error:
            if error.code == 404:
                return None
            raise

    def get_object(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        group_version = obj["apiVersion"]
        prefix = f"/api/{group_version}" if "/" not in group_version else f"/apis/{group_version}"
        namespace = obj["metadata"].get("namespace")
        scope = f"/namespaces/{namespace}" if namespace else ""
        # Every kind the chart renders pluralises by a trailing "s".
        return self.get(f"{prefix}{scope}/{obj['kind'].lower()}s/{obj['metadata']['name']}")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # No nodes: the operator pods are created but never run, so this checks the chart, not the operator.
    # HTTPS with the cluster CA: helm sends the kubeconfig's token, so RBAC is on.
    with LocalCluster(workdir=tmp_path_factory.mktemp("localcluster"), nodes=0) as local_cluster:
        yield local_cluster


def helm_config(cluster: LocalCluster, namespace: str) -> helm.Config:
    # Helm's default storage driver: release records are Secrets in the release namespace (client-go
    # sends them as protobuf; localcluster decodes those).
    return helm.Config(kubeconfig_path=cluster.kubeconfig, namespace=namespace)


def install(
    config: helm.Config, release: str, namespace: str, values: dict[str, Any]
) -> list[dict[str, Any]]:
    result = config.install(CHART, release, values, namespace=namespace, create_namespace=True, timeout=60)
    assert result["status"] == "deployed", result
    return [obj for obj in yaml.safe_load_all(result["manifest"]) if obj]


@pytest.mark.parametrize(
    ("release", "namespace", "values"),
    [
        pytest.param("elastra", "elastra-system", {}, id="cluster-scope"),
        pytest.param(
            "team", "team-a", {"scope": "namespaced", "peering": {"name": "team"}}, id="namespaced-scope"
        ),
    ],
)
def test_install_creates_every_object(
    cluster: LocalCluster, release: str, namespace: str, values: dict[str, Any]
) -> None:
    api = Api(cluster.kubeconfig)
    with helm_config(cluster, namespace) as config:
        objects = install(config, release, namespace, values)
    crds = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    assert crds is not None
    assert {item["metadata"]["name"] for item in crds["items"]} >= CRDS
    kinds = {obj["kind"] for obj in objects}
    assert {"Deployment", "Service", "ServiceAccount", "ConfigMap"} <= kinds
    assert kinds & {"ClusterKopfPeering", "KopfPeering"}
    for obj in objects:
        stored = api.get_object(obj)
        assert stored is not None, f"{obj['kind']}/{obj['metadata']['name']} was not created"
        assert stored["metadata"]["labels"]["app.kubernetes.io/instance"] == release
    deployment = next(obj for obj in objects if obj["kind"] == "Deployment")
    stored_deployment = api.get_object(deployment)
    assert stored_deployment is not None
    assert stored_deployment["spec"]["replicas"] == 2
    assert stored_deployment["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "elastra",
        "operator",
    ]


def release_secrets(api: Api, namespace: str, release: str) -> list[str]:
    found = api.get(f"/api/v1/namespaces/{namespace}/secrets?labelSelector=owner%3Dhelm%2Cname%3D{release}")
    assert found is not None
    return sorted(item["metadata"]["name"] for item in found["items"])


def test_release_records_live_in_secrets_through_upgrade_and_uninstall(cluster: LocalCluster) -> None:
    api = Api(cluster.kubeconfig)
    release = namespace = "stored"
    values = {"scope": "namespaced", "peering": {"name": release}}
    with helm_config(cluster, namespace) as config:
        install(config, release, namespace, values)
    assert release_secrets(api, namespace, release) == [f"sh.helm.release.v1.{release}.v1"]
    with helm_config(cluster, namespace) as config:  # a new client finds the release in the cluster
        assert [r["name"] for r in config.list()] == [release]
        upgraded = config.upgrade(CHART, release, {**values, "replicaCount": 1}, namespace=namespace)
        assert upgraded["revision"] == 2 and upgraded["status"] == "deployed"
    deployment = api.get(f"/apis/apps/v1/namespaces/{namespace}/deployments/{release}-elastra")
    assert deployment is not None and deployment["spec"]["replicas"] == 1
    assert release_secrets(api, namespace, release) == [
        f"sh.helm.release.v1.{release}.v1",
        f"sh.helm.release.v1.{release}.v2",
    ]
    with helm_config(cluster, namespace) as config:
        assert [h["revision"] for h in config.history(release)] == [1, 2]
        config.uninstall(release)
        assert config.list() == []
    assert release_secrets(api, namespace, release) == []


def test_uninstall_removes_the_templates_and_keeps_the_crds(cluster: LocalCluster) -> None:
    api = Api(cluster.kubeconfig)
    release = namespace = "short-lived"
    with helm_config(cluster, namespace) as config:
        objects = install(config, release, namespace, {"scope": "namespaced", "peering": {"name": release}})
        assert all(api.get_object(obj) is not None for obj in objects)
        config.uninstall(release)
    assert [obj["kind"] for obj in objects if api.get_object(obj) is not None] == []
    crds = api.get("/apis/apiextensions.k8s.io/v1/customresourcedefinitions")
    assert crds is not None
    assert {item["metadata"]["name"] for item in crds["items"]} >= CRDS
