"""Real tools against localcluster: kubectl, a small kopf operator, Helm's Go SDK and `elastra local`."""

from __future__ import annotations

import functools
import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import polling
import pytest
from kubernetes import client, config

from localcluster import LocalCluster

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.dev}
spec:
  group: example.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {status: {}}
    additionalPrinterColumns:
    - {name: Size, type: integer, jsonPath: .spec.size}
    - {name: Phase, type: string, jsonPath: .status.phase}
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {type: integer, minimum: 1}
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""
PEERING_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: kopfpeerings.kopf.dev}
spec:
  scope: Namespaced
  group: kopf.dev
  names: {kind: KopfPeering, plural: kopfpeerings, singular: kopfpeering}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          status: {type: object, x-kubernetes-preserve-unknown-fields: true}
"""
OPERATOR = """
import sys

import kopf

@kopf.on.startup()
def configure(settings, **_):
    settings.peering.name = "test-peering"
    settings.peering.mandatory = True
    settings.watching.server_timeout = 10

@kopf.on.create("example.dev", "v1", "widgets")
def created(spec, body, patch, **_):
    kopf.info(body, reason="Seen", message=f"size {spec['size']}")
    patch.status["phase"] = "Seen"
    patch.status["double"] = spec["size"] * 2

@kopf.on.event("", "v1", "configmaps", labels={"watch": "me"})
def configmap(event, name, **_):
    # one write: print's separate pieces interleave with Kopf's log lines from other threads (unbuffered)
    sys.stdout.write(f"CONFIGMAP {event['type']} {name}\\n")
    sys.stdout.flush()
"""


until = functools.partial(polling.until, timeout=60.0)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    # HTTPS with the cluster CA: kubectl, helm and kopf send the kubeconfig's token, and RBAC is on.
    with LocalCluster(
        workdir=tmp_path_factory.mktemp("lc"), nodes=2, heartbeat_interval_s=0.5, node_grace_s=3
    ) as lc:
        yield lc


def kubectl(
    cluster: LocalCluster, *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=check,
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
    )


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_apply_get_watch_describe_logs_delete(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    assert "widgets.example.dev created" in kubectl(cluster, "apply", "-f", "-", stdin=CRD).stdout
    widget = "apiVersion: example.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 3}\n"
    assert "widget.example.dev/w1 created" in kubectl(cluster, "apply", "-f", "-", stdin=widget).stdout
    assert "unchanged" in kubectl(cluster, "apply", "-f", "-", stdin=widget).stdout
    table = kubectl(cluster, "get", "wd").stdout.splitlines()
    assert table[0].split() == ["NAME", "SIZE", "PHASE"] and table[1].split() == ["w1", "3"]
    invalid = kubectl(cluster, "apply", "-f", "-", stdin=widget.replace("size: 3", "size: 0"), check=False)
    assert invalid.returncode != 0 and "spec.size" in invalid.stderr

    watcher = subprocess.Popen(
        ["kubectl", "get", "pods", "-w", "--output-watch-events"],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
    )
    pod = textwrap.dedent("""
        apiVersion: v1
        kind: Pod
        metadata: {name: talker}
        spec:
          terminationGracePeriodSeconds: 1
          containers:
          - name: main
            image: ignored
            command: [sh, -c, 'echo hello from $NODE; sleep 300']
            env:
            - name: NODE
              valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
    """)
    kubectl(cluster, "apply", "-f", "-", stdin=pod)
    until(lambda: "Running" in kubectl(cluster, "get", "pod", "talker").stdout)
    logs = until(lambda: kubectl(cluster, "logs", "talker").stdout)
    node = kubectl(cluster, "get", "pod", "talker", "-o", "jsonpath={.spec.nodeName}").stdout
    assert logs.strip() == f"hello from {node}"
    described = kubectl(cluster, "describe", "pod", "talker").stdout
    # (every pod has a ServiceAccount now, so describe's columns are as wide as on a real cluster)
    assert re.search(r"^Status:\s+Running$", described, re.M) and "Scheduled" in described
    events = kubectl(cluster, "get", "events", "--field-selector=involvedObject.name=talker").stdout
    header, *rows = events.splitlines()
    assert header.split() == ["LAST", "SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]
    scheduled = next(row.split(maxsplit=4) for row in rows if " Scheduled " in row)
    assert scheduled[1:] == [
        "Normal",
        "Scheduled",
        "pod/talker",
        f"Successfully assigned default/talker to {node}",
    ]
    assert "deleted" in kubectl(cluster, "delete", "pod", "talker").stdout
    assert "NotFound" in kubectl(cluster, "get", "pod", "talker", check=False).stderr
    watcher.terminate()
    seen = watcher.communicate(timeout=10)[0].splitlines()
    kinds = [line.split()[0] for line in seen if "talker" in line]
    assert kinds[0] == "ADDED" and "MODIFIED" in kinds and kinds[-1] == "DELETED"


def test_kopf_operator_watches_patches_status_and_posts_events(
    cluster: LocalCluster, tmp_path: pathlib.Path
) -> None:
    api = config.new_client_from_config(config_file=cluster.kubeconfig)
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    kubectl(cluster, "apply", "-f", "-", stdin=CRD)
    kubectl(cluster, "apply", "-f", "-", stdin=PEERING_CRD)
    until(lambda: "kopfpeerings" in kubectl(cluster, "api-resources", "--api-group=kopf.dev").stdout)
    custom.create_namespaced_custom_object(
        "kopf.dev",
        "v1",
        "default",
        "kopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": "test-peering"}},
    )
    (tmp_path / "op.py").write_text(OPERATOR)
    log = (tmp_path / "kopf.log").open("w")
    operator = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", "op.py", "--namespace", "default", "--verbose"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": cluster.kubeconfig},
    )
    try:
        custom.create_namespaced_custom_object(
            "example.dev",
            "v1",
            "default",
            "widgets",
            {
                "apiVersion": "example.dev/v1",
                "kind": "Widget",
                "metadata": {"name": "kw"},
                "spec": {"size": 4},
            },
        )
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": "watched", "labels": {"watch": "me"}}}
        )
        status = until(
            lambda: (
                custom.get_namespaced_custom_object("example.dev", "v1", "default", "widgets", "kw").get(
                    "status"
                )
                or {}
            ).get("double")
        )
        assert status == 8
        events = until(
            lambda: [
                e
                for e in core.list_namespaced_event("default", field_selector="involvedObject.name=kw").items
                if e.reason == "Seen"
            ]
        )
        assert events[0].message == "size 4"
        # kopf reports objects from its initial listing with type None, later ones as ADDED
        until(lambda: re.search(r"CONFIGMAP (None|ADDED) watched", (tmp_path / "kopf.log").read_text()))
        peering = custom.get_namespaced_custom_object(
            "kopf.dev", "v1", "default", "kopfpeerings", "test-peering"
        )
        assert peering.get("status"), "kopf did not register itself in the peering object"
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        log.close()


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_explain_and_strict_apply_use_the_published_schemas(
    cluster: LocalCluster, tmp_path: pathlib.Path
) -> None:
    kubectl(cluster, "apply", "-f", str(ROOT / "crds"))
    explained = {
        version: kubectl(cluster, "explain", "trainingjob.spec.replicas", *flags).stdout
        for version, flags in (("v3", ()), ("v2", ("--output=plaintext-openapiv2",)))
    }
    for version, text in explained.items():
        fields = dict(re.findall(r"^\s+(min|max)\s+(<\w+> -required-)", text, re.MULTILINE))
        assert fields == {"min": "<integer> -required-", "max": "<integer> -required-"}, (version, text)
        assert "Worker pod count range." in text, version

    job = (ROOT / "examples" / "gpt_tiny" / "trainingjob.yaml").read_text().replace("gpt-tiny", "explained")
    assert "created" in kubectl(cluster, "apply", "--validate=strict", "-f", "-", stdin=job).stdout
    again = kubectl(cluster, "apply", "-f", "-", "-v=8", stdin=job.replace("max: 4", "max: 3"))
    assert "Content-Type: application/merge-patch+json" in again.stderr  # as against a real server
    bogus = job.replace("  nprocPerPod: 1", "  nprocPerPod: 1\n  bogusField: 2")
    refused = kubectl(cluster, "apply", "-f", "-", stdin=bogus, check=False)
    assert refused.returncode != 0 and 'unknown field "spec.bogusField"' in refused.stderr
    kubectl(cluster, "apply", "--validate=false", "-f", "-", stdin=bogus)  # pruned, not refused
    custom = client.CustomObjectsApi(config.new_client_from_config(config_file=cluster.kubeconfig))
    stored = custom.get_namespaced_custom_object(
        "elastra.dev", "v1alpha1", "default", "trainingjobs", "explained"
    )
    assert "bogusField" not in stored["spec"] and stored["spec"]["replicas"]["max"] == 4
    custom.delete_namespaced_custom_object("elastra.dev", "v1alpha1", "default", "trainingjobs", "explained")


def test_deployment_runs_replaces_scales_and_removes_its_pods(cluster: LocalCluster) -> None:
    api = config.new_client_from_config(config_file=cluster.kubeconfig)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    template = {
        "metadata": {"labels": {"app": "sleeper"}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "main", "image": "ignored", "command": ["sleep", "120"]}],
        },
    }
    spec = {"replicas": 2, "selector": {"matchLabels": {"app": "sleeper"}}, "template": template}
    apps.create_namespaced_deployment("default", {"metadata": {"name": "sleeper"}, "spec": spec})

    def running() -> list[str]:
        pods = core.list_namespaced_pod("default", label_selector="app=sleeper").items
        return sorted(
            p.metadata.name for p in pods if p.status.phase == "Running" and not p.metadata.deletion_timestamp
        )

    def ready(count: int) -> bool:
        status = apps.read_namespaced_deployment("sleeper", "default").status
        return (status.ready_replicas or 0) == count and len(running()) == count

    until(lambda: ready(2))
    first = running()
    pod = core.read_namespaced_pod(first[0], "default")
    assert pod.metadata.owner_references[0].kind == "Deployment" and pod.metadata.labels["app"] == "sleeper"
    core.delete_namespaced_pod(first[0], "default")
    until(lambda: ready(2) and first[0] not in running())
    apps.patch_namespaced_deployment("sleeper", "default", {"spec": {"replicas": 1}})
    until(lambda: ready(1))
    apps.delete_namespaced_deployment("sleeper", "default")
    until(lambda: not core.list_namespaced_pod("default", label_selector="app=sleeper").items)


def test_helm_installs_upgrades_and_uninstalls_a_chart(cluster: LocalCluster, tmp_path: pathlib.Path) -> None:
    helm = pytest.importorskip("helm_python")
    chart = tmp_path / "tiny"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: tiny\nversion: 0.1.0\n")
    (chart / "values.yaml").write_text("greeting: hello\n")
    (chart / "templates" / "all.yaml").write_text(
        textwrap.dedent("""
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: "{{ .Release.Name }}-cfg"}
        data: {greeting: "{{ .Values.greeting }}"}
        ---
        apiVersion: v1
        kind: ServiceAccount
        metadata: {name: "{{ .Release.Name }}-sa"}
        ---
        apiVersion: rbac.authorization.k8s.io/v1
        kind: ClusterRole
        metadata: {name: "{{ .Release.Name }}-role"}
        rules: [{apiGroups: [""], resources: [pods], verbs: [get, list, watch]}]
        ---
        apiVersion: apps/v1
        kind: Deployment
        metadata: {name: "{{ .Release.Name }}-op"}
        spec:
          replicas: 1
          selector: {matchLabels: {app: tiny}}
          template:
            metadata: {labels: {app: tiny}}
            spec: {containers: [{name: op, image: ignored, command: [sleep, "300"]}]}
    """)
    )
    core = client.CoreV1Api(config.new_client_from_config(config_file=cluster.kubeconfig))
    cfg = helm.Config(kubeconfig_path=cluster.kubeconfig, namespace="default")
    release = cfg.install(
        helm.Chart.load(str(chart)), "demo", {"greeting": "hi"}, namespace="default", timeout=60
    )
    assert release["status"] == "deployed"
    assert core.read_namespaced_config_map("demo-cfg", "default").data == {"greeting": "hi"}
    assert [r["name"] for r in cfg.list()] == ["demo"]
    upgraded = cfg.upgrade(helm.Chart.load(str(chart)), "demo", {"greeting": "hey"}, namespace="default")
    assert upgraded["revision"] == 2
    assert core.read_namespaced_config_map("demo-cfg", "default").data == {"greeting": "hey"}
    cfg.uninstall("demo")
    assert "demo-cfg" not in [c.metadata.name for c in core.list_namespaced_config_map("default").items]


def test_elastra_local_cli_up_node_status_down(tmp_path: pathlib.Path) -> None:
    def local(*args: str) -> subprocess.CompletedProcess[str]:
        code = "import sys; from elastra.cli import main; sys.exit(main(sys.argv[1:]))"
        return subprocess.run(
            [sys.executable, "-c", code, "local", *args],
            capture_output=True,
            text=True,
            timeout=90,
            cwd=ROOT,
            check=False,
        )

    state = tmp_path / "state"
    up = local("up", "--dir", str(state), "--nodes", "2", "--heartbeat", "0.5", "--node-grace", "3")
    assert up.returncode == 0, up.stderr
    kubeconfig = next(
        line.split("=", 1)[1] for line in up.stdout.splitlines() if line.startswith("export KUBECONFIG=")
    )
    try:
        pid = json.loads((state / "state.json").read_text())["pid"]
        core = client.CoreV1Api(config.new_client_from_config(config_file=kubeconfig))
        assert sorted(n.metadata.name for n in core.list_node().items) == ["node-1", "node-2"]
        assert local("node", "kill", "node-1", "--dir", str(state)).returncode == 0
        assert "node-3 added" in local("node", "add", "--dir", str(state)).stdout
        assert local("node", "cordon", "node-2", "--dir", str(state)).returncode == 0
        status = until(lambda: (s := local("status", "--dir", str(state)).stdout) and "Unknown" in s and s)
        rows = {line.split()[0]: line.split() for line in status.splitlines()[2:]}
        assert rows["node-1"][1:4] == ["Unknown", "True", "killed"]
        assert rows["node-2"][1:4] == ["True", "False", "running"]
        missing = local("node", "kill", "node-9", "--dir", str(state))
        assert missing.returncode == 1 and "node-9" in missing.stderr
    finally:
        down = local("down", "--dir", str(state))
    assert down.returncode == 0 and "stopped" in down.stdout
    assert not (state / "state.json").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
