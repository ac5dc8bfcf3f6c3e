"""The Helm chart: lint, render and schema-validate it for the default values and every value set in
charts/elastra/ci/, then check what each value set promises (RBAC scope, monitors, dashboard, image)."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Iterator
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "elastra"
RELEASE, NAMESPACE = "elastra", "elastra-system"
# The lowest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest the validator knows.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())
# Custom kinds are validated against a schema checked in next to the chart, or against the CRD that
# ships in the chart; any other kind kubernetes-validate does not know fails the test.
MONITORING_SCHEMAS = json.loads((CHART / "ci" / "schemas" / "monitoring.coreos.com-v1.json").read_text())
Obj = dict[str, Any]


def value_sets() -> list[Any]:
    sets = [pytest.param({}, id="defaults")]
    for path in sorted((CHART / "ci").glob("*-values.yaml")):
        sets.append(pytest.param(yaml.safe_load(path.read_text()), id=path.name.removesuffix("-values.yaml")))
    return sets


def load_ci_values(name: str) -> Obj:
    loaded: Obj = yaml.safe_load((CHART / "ci" / f"{name}-values.yaml").read_text())
    return loaded


def render(values: Obj) -> tuple[list[Obj], dict[str, str]]:
    """Render the chart; returns every object and the raw text per template (NOTES.txt included)."""
    with helm.Chart.load(CHART) as chart:
        manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects = [
        doc
        for name, text in sorted(manifests.items())
        if not name.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]
    return objects, manifests


def by_kind(objects: list[Obj], kind: str) -> list[Obj]:
    return [obj for obj in objects if obj["kind"] == kind]


def one(objects: list[Obj], kind: str) -> Obj:
    found = by_kind(objects, kind)
    assert len(found) == 1, f"expected one {kind}, got {[o['metadata']['name'] for o in found]}"
    return found[0]


def crd_schemas() -> Iterator[tuple[str, str, Obj]]:
    """(apiVersion, kind, openAPIV3Schema) of every CRD the chart installs, its subcharts' included."""
    with helm.Chart.load(CHART) as chart:
        crd_files = chart.crds
    for crd_file in crd_files:
        for crd in yaml.safe_load_all(crd_file["data"]):
            if not crd:
                continue
            for version in crd["spec"]["versions"]:
                api_version = f"{crd['spec']['group']}/{version['name']}"
                yield api_version, crd["spec"]["names"]["kind"], version["schema"]["openAPIV3Schema"]


def validate(obj: Obj) -> None:
    kind, api_version = obj["kind"], obj["apiVersion"]
    if api_version == "monitoring.coreos.com/v1":
        jsonschema.Draft202012Validator(MONITORING_SCHEMAS["kinds"][kind]).validate(obj)
        return
    for crd_api_version, crd_kind, schema in crd_schemas():
        if (crd_api_version, crd_kind) == (api_version, kind):
            jsonschema.Draft7Validator(schema).validate(obj)
            return
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(obj, version, strict=True)


# ----------------------------------------------------------------------------- every value set


@pytest.mark.parametrize("values", value_sets())
def test_lint_is_clean_in_strict_mode(values: Obj) -> None:
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("values", value_sets())
def test_every_rendered_object_validates(values: Obj) -> None:
    objects, _ = render(values)
    assert objects
    for obj in objects:
        try:
            validate(obj)
        except (jsonschema.ValidationError, kubernetes_validate.utils.ValidationError) as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}")


@pytest.mark.parametrize("values", value_sets())
def test_object_names_are_unique_and_namespaced_objects_have_a_namespace(values: Obj) -> None:
    objects, _ = render(values)
    cluster_kinds = {"ClusterRole", "ClusterRoleBinding", "ClusterKopfPeering"}
    keys = [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in objects]
    assert len(keys) == len(set(keys)), keys
    for kind, namespace, name in keys:
        assert (namespace is None) == (kind in cluster_kinds), f"{kind}/{name} namespace={namespace}"


@pytest.mark.parametrize("values", value_sets())
def test_operator_runs_non_root_on_a_read_only_root_filesystem(values: Obj) -> None:
    objects, _ = render(values)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


@pytest.mark.parametrize("values", value_sets())
def test_notes_render_next_steps(values: Obj) -> None:
    _, manifests = render(values)
    (notes,) = [text for name, text in manifests.items() if name.endswith("NOTES.txt")]
    assert "Next steps" in notes
    assert "kubectl" in notes
    assert "{{" not in notes


# ----------------------------------------------------------------------------- the operator


def container_args(objects: list[Obj]) -> list[str]:
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["elastra", "operator"]
    return [str(arg) for arg in container["args"]]


def test_defaults_run_two_peered_replicas_cluster_wide() -> None:
    objects, _ = render({})
    deployment = one(objects, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    args = container_args(objects)
    assert args[:2] == ["--peering", "elastra"]
    # Kopf freezes replicas of equal priority: each replica ranks itself by age; a killed active one is
    # replaced after the peering lifetime.
    assert args[args.index("--priority") + 1] == "oldest-first"
    assert args[args.index("--peering-lifetime") + 1] == "60"
    assert "--all-namespaces" in args and "--namespace" not in args
    # Both servers bind the pod's IP (the kubelet expands $(POD_IP)), so replicas sharing one network
    # cannot collide on a port.
    assert args[args.index("--liveness-endpoint") + 1] == "http://$(POD_IP):8081/healthz"
    assert args[args.index("--metrics-host") + 1] == "$(POD_IP)"
    assert args[args.index("--metrics-port") + 1] == "8080"
    assert one(objects, "ClusterKopfPeering")["metadata"]["name"] == "elastra"
    assert one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    image = deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    assert image == "ghcr.io/elastra/elastra-operator:0.1.0"


def test_namespaced_scope_watches_only_its_namespaces() -> None:
    objects, _ = render(load_ci_values("namespaced"))
    args = container_args(objects)
    assert "--all-namespaces" not in args
    watched = [args[i + 1] for i, arg in enumerate(args) if arg == "--namespace"]
    assert watched == ["team-a", "team-b"]
    peerings = by_kind(objects, "KopfPeering")
    assert {p["metadata"]["namespace"] for p in peerings} == {"team-a", "team-b"}
    assert by_kind(objects, "ClusterKopfPeering") == []


def test_namespaced_scope_without_a_list_watches_the_release_namespace() -> None:
    objects, _ = render({"scope": "namespaced"})
    args = container_args(objects)
    assert [args[i + 1] for i, arg in enumerate(args) if arg == "--namespace"] == [NAMESPACE]
    assert {p["metadata"]["namespace"] for p in by_kind(objects, "KopfPeering")} == {NAMESPACE}


def test_overrides_reach_the_pod() -> None:
    values = load_ci_values("overrides")
    objects, _ = render(values)
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == f"{values['image']['repository']}@{values['image']['digest']}"
    assert container["imagePullPolicy"] == "Always"
    assert container["resources"] == values["resources"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["nodeSelector"] == values["nodeSelector"]
    assert pod["tolerations"] == values["tolerations"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert container["args"][-1] == "--verbose"
    assert {"name": "ELASTRA_LOG_FORMAT", "value": "json"} in container["env"]


def test_image_tag_override_wins_over_app_version() -> None:
    objects, _ = render({"image": {"tag": "0.2.0-rc1"}})
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert container["image"].endswith(":0.2.0-rc1")


def test_minimal_values_leave_out_every_optional_object() -> None:
    objects, _ = render(load_ci_values("minimal"))
    kinds = {o["kind"] for o in objects}
    for kind in ("PodDisruptionBudget", "ClusterKopfPeering", "KopfPeering", "ServiceAccount", "ConfigMap"):
        assert kind not in kinds
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "existing-operator-sa"
    cluster_resources = {r for role in by_kind(objects, "ClusterRole") for _, r, _ in grants(role["rules"])}
    assert "nodes" not in cluster_resources
    binding = next(b for b in by_kind(objects, "RoleBinding") if b["metadata"]["name"].endswith("-secrets"))
    assert binding["subjects"][0]["name"] == "existing-operator-sa"


# ----------------------------------------------------------------------------- RBAC


def grants(rules: list[Obj]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# What the operator needs (the contract in its brief); each row must be granted in both scopes.
OPERATOR_NEEDS = [
    ("elastra.dev", "trainingjobs", ("get", "list", "watch", "patch")),
    ("elastra.dev", "trainingjobs/status", ("get", "patch")),
    ("elastra.dev", "checkpoints", ("get", "list", "watch", "create", "patch", "delete")),
    ("elastra.dev", "checkpoints/status", ("get", "patch")),
    ("", "pods", ("create", "delete", "get", "list", "watch", "patch")),
    ("", "services", ("create", "get", "list", "watch", "patch", "delete")),
    ("", "configmaps", ("create", "get", "list", "watch", "patch", "delete")),
    ("", "events", ("create", "patch")),
    ("", "secrets", ("get",)),
    ("", "serviceaccounts", ("create", "get")),
    ("rbac.authorization.k8s.io", "roles", ("create", "get", "patch")),
    ("rbac.authorization.k8s.io", "rolebindings", ("create", "get")),
    ("coordination.k8s.io", "leases", ("get", "list", "watch", "create", "patch", "update")),
    ("", "nodes", ("get", "list", "watch")),
]


def operator_grants(objects: list[Obj]) -> dict[str | None, set[tuple[str, str, str]]]:
    """Grants bound to the operator's ServiceAccount, keyed by namespace (None: cluster-wide)."""
    roles = {(r["kind"], r["metadata"].get("namespace"), r["metadata"]["name"]): r for r in objects}
    result: dict[str | None, set[tuple[str, str, str]]] = {}
    for binding in by_kind(objects, "ClusterRoleBinding") + by_kind(objects, "RoleBinding"):
        if not any(s["name"] == "elastra" and s["namespace"] == NAMESPACE for s in binding["subjects"]):
            continue
        namespace = binding["metadata"].get("namespace")
        role_ns = None if binding["roleRef"]["kind"] == "ClusterRole" else namespace
        role = roles[(binding["roleRef"]["kind"], role_ns, binding["roleRef"]["name"])]
        result.setdefault(namespace, set()).update(grants(role["rules"]))
    return result


@pytest.mark.parametrize(
    ("values", "namespaces"),
    [
        # cluster scope: everything cluster-wide, but Secrets only in the job namespaces
        pytest.param({}, [NAMESPACE], id="cluster-scope"),
        pytest.param(load_ci_values("namespaced"), ["team-a", "team-b"], id="namespaced-scope"),
    ],
)
def test_operator_rbac_covers_what_it_needs(values: Obj, namespaces: list[str | None]) -> None:
    objects, _ = render(values)
    granted = operator_grants(objects)
    cluster_wide = granted.get(None, set())
    for namespace in namespaces:
        available = granted.get(namespace, set()) | cluster_wide
        for group, resource, verbs in OPERATOR_NEEDS:
            for verb in verbs:
                assert (group, resource, verb) in available, (namespace, group, resource, verb)
    peering = ("kopf.dev", "clusterkopfpeerings" if values == {} else "kopfpeerings", "patch")
    assert all(peering in granted.get(ns, set()) | cluster_wide for ns in namespaces)


def test_namespaced_scope_grants_nothing_cluster_wide_but_nodes() -> None:
    objects, _ = render(load_ci_values("namespaced"))
    assert {(g, r) for g, r, _ in operator_grants(objects).get(None, set())} == {("", "nodes")}


@pytest.mark.parametrize("values", value_sets())
def test_rbac_has_no_wildcards_and_secrets_are_read_only(values: Obj) -> None:
    objects, _ = render(values)
    for role in by_kind(objects, "ClusterRole") + by_kind(objects, "Role"):
        for group, resource, verb in grants(role["rules"]):
            assert "*" not in (group, resource, verb), role["metadata"]["name"]
            if resource == "secrets":
                assert verb == "get"
            assert verb not in {"escalate", "bind", "impersonate"}


@pytest.mark.parametrize(
    ("values", "namespaces"),
    [
        pytest.param({}, {NAMESPACE}, id="cluster-scope-release-namespace"),
        pytest.param(load_ci_values("namespaced"), {"team-a", "team-b"}, id="namespaced-watched"),
        pytest.param(load_ci_values("overrides"), {"ml-jobs", "ml-research"}, id="explicit-list"),
    ],
)
def test_secrets_are_read_in_the_job_namespaces_only(values: Obj, namespaces: set[str]) -> None:
    objects, _ = render(values)
    for role in by_kind(objects, "ClusterRole"):
        assert all(resource != "secrets" for _, resource, _ in grants(role["rules"])), role["metadata"]
    secret_roles = [
        r for r in by_kind(objects, "Role") if any(res == "secrets" for _, res, _ in grants(r["rules"]))
    ]
    assert {r["metadata"]["namespace"] for r in secret_roles} == namespaces
    for role in secret_roles:
        assert grants(role["rules"]) == {("", "secrets", "get")}
    # no chart-made worker identity: the operator gives each job its own (docs/protocol.md)
    assert not [a for a in by_kind(objects, "ServiceAccount") if a["metadata"]["name"] == "elastra-trainer"]


def test_operator_may_create_each_jobs_identity_but_not_escalate() -> None:
    objects, _ = render({})
    granted = {g for role in by_kind(objects, "ClusterRole") for g in grants(role["rules"])}
    for needed in [
        ("", "serviceaccounts", "create"),
        ("rbac.authorization.k8s.io", "roles", "create"),
        ("rbac.authorization.k8s.io", "rolebindings", "create"),
    ]:
        assert needed in granted
    assert not {v for _, _, v in granted} & {"escalate", "bind", "impersonate"}


@pytest.mark.parametrize(
    ("values", "env"),
    [
        pytest.param({}, "", id="aws-only"),
        pytest.param(
            {"s3": {"allowedEndpoints": ["http://a:9000", "https://b"]}},
            "http://a:9000,https://b",
            id="listed",
        ),
    ],
)
def test_s3_allowed_endpoints_reach_the_operator(values: Obj, env: str) -> None:
    objects, _ = render(values)
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "ELASTRA_S3_ALLOWED_ENDPOINTS", "value": env} in container["env"]


# ----------------------------------------------------------------------------- monitoring


def test_monitoring_objects_are_off_by_default() -> None:
    kinds = {o["kind"] for o in render({})[0]}
    assert kinds.isdisjoint({"ServiceMonitor", "PodMonitor", "PrometheusRule"})


def test_monitoring_values_create_monitors_that_keep_the_job_labels() -> None:
    objects, _ = render(load_ci_values("monitoring"))
    service = one(objects, "Service")
    service_monitor = one(objects, "ServiceMonitor")
    assert service_monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert service_monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = service_monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"]
    assert endpoint["honorLabels"] is True and endpoint["interval"] == "15s"
    pod_monitor = one(objects, "PodMonitor")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == {"elastra.dev/role": "worker"}
    assert pod_monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml-jobs"]}
    (pod_endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    assert pod_endpoint["honorLabels"] is True
    assert pod_endpoint["relabelings"][0]["replacement"] == "$1:9400"
    rule = one(objects, "PrometheusRule")
    alerts = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts["ElastraJobFailingRepeatedly"]["expr"].endswith(">= 5")
    assert "[1h]" in alerts["ElastraJobFailingRepeatedly"]["expr"]
    assert 'up{job="elastra-operator"}' in alerts["ElastraOperatorDown"]["expr"]


def test_service_targets_the_operator_metrics_port() -> None:
    objects, _ = render({"metrics": {"port": 9090}})
    service = one(objects, "Service")
    container = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "metrics" and ports["metrics"] == 9090
    assert container["args"][container["args"].index("--metrics-port") + 1] == "9090"
    pod_labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()


@pytest.mark.parametrize(
    ("values", "label", "value", "namespace"),
    [
        pytest.param({}, "grafana_dashboard", "1", NAMESPACE, id="default-sidecar-label"),
        pytest.param(
            load_ci_values("monitoring"), "grafana_dashboard_elastra", "yes", "monitoring", id="custom-label"
        ),
    ],
)
def test_dashboard_configmap_carries_the_dashboard(
    values: Obj, label: str, value: str, namespace: str
) -> None:
    objects, _ = render(values)
    config_map = one(objects, "ConfigMap")
    assert config_map["metadata"]["labels"][label] == value
    assert config_map["metadata"]["namespace"] == namespace
    shipped = json.loads(config_map["data"]["elastra.json"])
    assert shipped == json.loads((CHART / "dashboards" / "elastra.json").read_text())


# ----------------------------------------------------------------------------- values.schema.json


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        pytest.param({"scope": "everywhere"}, "/scope", id="unknown-scope"),
        pytest.param({"replicaCount": -1}, "/replicaCount", id="negative-replicas"),
        pytest.param({"replicas": 2}, "replicas", id="misspelt-top-level-key"),
        pytest.param({"image": {"digest": "latest"}}, "/image/digest", id="digest-not-sha256"),
        pytest.param(
            {"serviceMonitor": {"interval": "30 seconds"}}, "/serviceMonitor/interval", id="bad-duration"
        ),
        pytest.param({"watchNamespaces": ["Team_A"]}, "/watchNamespaces/0", id="invalid-namespace-name"),
        pytest.param(
            {"prometheusRule": {"alerts": {"jobFailing": {"severity": "page"}}}}, "severity", id="severity"
        ),
        pytest.param({"metrics": {"port": 70000}}, "/metrics/port", id="port-out-of-range"),
    ],
)
def test_schema_rejects_bad_values_with_a_clear_message(values: Obj, complaint: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as exc:
        chart.render(values, name=RELEASE, namespace=NAMESPACE)
    assert complaint in str(exc.value)


def test_schema_documents_every_default_value() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(values: Obj, node: Obj, path: str) -> None:
        for key, value in values.items():
            assert key in node.get("properties", {}), f"{path}/{key} is not in values.schema.json"
            child = node["properties"][key]
            if isinstance(value, dict) and child.get("properties"):
                walk(value, child, f"{path}/{key}")

    walk(defaults, schema, "")
