"""localcluster over TLS only, and its admission webhooks, with real clients: a Kopf operator whose
`@kopf.on.validate`/`@kopf.on.mutate` handlers run in Kopf's own webhook server (HTTPS, its managed
ValidatingWebhookConfiguration), a pod using in-cluster configuration, and webhooks that fail or hang."""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import json
import os
import pathlib
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import polling
import pytest
from aiohttp import web
from cryptography import x509
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from localcluster import LocalCluster, tls
from localcluster.cluster import free_port

until = functools.partial(polling.until, timeout=60.0)
pytestmark = pytest.mark.timeout(180)

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "gizmos.example.dev"},
    "spec": {
        "group": "example.dev",
        "scope": "Namespaced",
        "names": {"plural": "gizmos", "singular": "gizmo", "kind": "Gizmo"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 0}},
                            }
                        },
                    }
                },
            }
        ],
    },
}

OPERATOR = """
import os
import kopf

@kopf.on.startup()
def configure(settings, **_):
    settings.admission.server = kopf.WebhookServer(
        addr="127.0.0.1", host="127.0.0.1", port=int(os.environ["HOOK_PORT"]),
        certfile=os.environ["HOOK_CERT"], pkeyfile=os.environ["HOOK_KEY"],
    )
    settings.admission.managed = "gizmos.example.dev"

@kopf.on.mutate("example.dev", "v1", "gizmos", id="label")
def label(patch, **_):
    patch.metadata.setdefault("labels", {})["checked-by"] = "kopf"

@kopf.on.validate("example.dev", "v1", "gizmos", id="size")
def size(spec, **_):
    if spec.get("size", 0) > 10:
        raise kopf.AdmissionError("size must be at most 10", code=422)
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalCluster]:
    with LocalCluster(workdir=tmp_path_factory.mktemp("lc"), nodes=1, heartbeat_interval_s=0.5) as lc:
        yield lc


def _api(cluster: LocalCluster) -> client.ApiClient:
    return config.new_client_from_config(config_file=cluster.kubeconfig)


def gizmo(name: str, size: int) -> dict[str, Any]:
    return {
        "apiVersion": "example.dev/v1",
        "kind": "Gizmo",
        "metadata": {"name": name},
        "spec": {"size": size},
    }


def test_api_is_https_only_with_the_kubeconfig_ca(cluster: LocalCluster) -> None:
    assert cluster.url.startswith("https://")
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP gets no answer
        urllib.request.urlopen(cluster.url.replace("https://", "http://") + "/version", timeout=5)
    with pytest.raises(urllib.error.URLError) as err:  # a client that does not trust our CA refuses
        urllib.request.urlopen(cluster.url + "/version", timeout=5, context=ssl.create_default_context())
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
    with urllib.request.urlopen(cluster.url + "/version", timeout=5, context=cluster.ssl_context()) as r:
        assert r.status == 200
    # what Kopf's WebhookAutoServer reads to guess the cluster type (it crashed on plain HTTP)
    host, port = cluster.url.removeprefix("https://").rsplit(":", 1)
    served = x509.load_pem_x509_certificate(ssl.get_server_certificate((host, int(port))).encode())
    assert served.issuer.rfc4514_string() == "CN=localcluster-ca"
    names = served.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address(host) in names.get_values_for_type(x509.IPAddress)


def test_pod_in_cluster_config_has_token_ca_and_namespace(cluster: LocalCluster) -> None:
    """Every pod finds token, ca.crt and namespace at the ServiceAccount path and the service env, and
    elastra.kubeclient's in-cluster configuration reaches the API over HTTPS with them."""
    core = client.CoreV1Api(_api(cluster))
    script = (
        "import os, pathlib\n"
        "from elastra import kubeclient\n"
        "from kubernetes import client\n"
        "d = pathlib.Path(os.environ['ELASTRA_SERVICEACCOUNT_DIR'])\n"
        "print('files', sorted(p.name for p in d.iterdir()))\n"
        "print('ns', (d / 'namespace').read_text())\n"
        "print('service', os.environ['KUBERNETES_SERVICE_HOST'], os.environ['KUBERNETES_SERVICE_PORT'])\n"
        "settings = kubeclient.in_cluster()\n"
        "print('server', settings.server)\n"
        "api = kubeclient.api_client()\n"
        "try:\n"
        "    client.CoreV1Api(api).list_namespaced_secret('default')\n"
        "except client.ApiException as exc:\n"
        "    print('answer', exc.status, exc.body)\n"
    )
    env = [{"name": "ELASTRA_SERVICEACCOUNT_DIR", "value": "/var/run/secrets/kubernetes.io/serviceaccount"}]
    pod = {
        "metadata": {"name": "incluster"},
        "spec": {
            "restartPolicy": "Never",
            "containers": [
                {"name": "c", "image": "python", "command": [sys.executable, "-c", script], "env": env}
            ],
        },
    }
    core.create_namespaced_pod("default", pod)
    until(lambda: core.read_namespaced_pod("incluster", "default").status.phase in {"Succeeded", "Failed"})
    logs = core.read_namespaced_pod_log("incluster", "default", _preload_content=False).data.decode()
    assert core.read_namespaced_pod("incluster", "default").status.phase == "Succeeded", logs
    assert "files ['ca.crt', 'namespace', 'token']" in logs
    assert "ns default" in logs
    host, port = cluster.url.removeprefix("https://").rsplit(":", 1)
    assert f"service {host} {port}" in logs
    assert f"server https://{host}:{port}" in logs
    # authenticated over TLS as its ServiceAccount (which RBAC does not let read Secrets)
    assert "answer 403" in logs and "system:serviceaccount:default:default" in logs
    cm = core.read_namespaced_config_map("kube-root-ca.crt", "default")
    assert cm.data["ca.crt"] == cluster.ca_pem.decode()


def test_kopf_webhooks_mutate_and_reject_on_localcluster(
    cluster: LocalCluster, tmp_path: pathlib.Path
) -> None:
    api = _api(cluster)
    custom = client.CustomObjectsApi(api)
    client.ApiextensionsV1Api(api).create_custom_resource_definition(CRD)
    until(lambda: custom.list_namespaced_custom_object("example.dev", "v1", "default", "gizmos") is not None)
    # Kopf's WebhookServer with a certificate of our own (Kopf would self-sign with certbuilder): it
    # puts the certificate file (leaf + CA) into the webhook configuration's caBundle.
    serving = tls.ClusterCA("webhook-ca")
    leaf = serving.issue("kopf-webhook", ("127.0.0.1",))
    (tmp_path / "hook.crt").write_bytes(leaf.cert_pem + serving.cert_pem)
    (tmp_path / "hook.key").write_bytes(leaf.key_pem)
    (tmp_path / "op.py").write_text(OPERATOR)
    log = (tmp_path / "kopf.log").open("w")
    env = {
        **os.environ,
        "KUBECONFIG": cluster.kubeconfig,
        "HOOK_PORT": str(free_port()),
        "HOOK_CERT": str(tmp_path / "hook.crt"),
        "HOOK_KEY": str(tmp_path / "hook.key"),
    }
    operator = subprocess.Popen(
        [sys.executable, "-m", "kopf", "run", "op.py", "--standalone", "--namespace", "default", "--verbose"],
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    admission = client.AdmissionregistrationV1Api(api)
    try:

        def managed() -> bool:
            names = [c.metadata.name for c in admission.list_validating_webhook_configuration().items]
            return "gizmos.example.dev" in names

        until(managed)
        until(lambda: "Serving webhooks" in (tmp_path / "kopf.log").read_text() or managed())
        ok = until(lambda: _create_when_served(custom, gizmo("small", 3)))
        assert ok["metadata"]["labels"] == {"checked-by": "kopf"}, "the mutating webhook's patch was applied"
        with pytest.raises(ApiException) as err:
            custom.create_namespaced_custom_object("example.dev", "v1", "default", "gizmos", gizmo("big", 50))
        assert err.value.status == 422
        assert "denied the request: size must be at most 10" in err.value.body
        with pytest.raises(ApiException):
            custom.get_namespaced_custom_object("example.dev", "v1", "default", "gizmos", "big")
        with pytest.raises(ApiException) as upd:  # updates are validated too
            custom.patch_namespaced_custom_object(
                "example.dev", "v1", "default", "gizmos", "small", {"spec": {"size": 11}}
            )
        assert upd.value.status == 422
    finally:
        operator.terminate()
        operator.wait(timeout=30)
        log.close()
        for each in admission.list_validating_webhook_configuration().items:
            admission.delete_validating_webhook_configuration(each.metadata.name)
        for each in admission.list_mutating_webhook_configuration().items:
            admission.delete_mutating_webhook_configuration(each.metadata.name)


def _create_when_served(custom: client.CustomObjectsApi, body: dict[str, Any]) -> dict[str, Any] | None:
    """Create once Kopf's webhook server answers (the configuration may exist a moment before)."""
    try:
        created: dict[str, Any] = custom.create_namespaced_custom_object(
            "example.dev", "v1", "default", "gizmos", body
        )
    except ApiException as exc:
        if exc.status == 500:  # failed calling webhook: the server is not listening yet
            return None
        raise
    return created


# ------------------------------------------------------------------ failurePolicy and timeoutSeconds
class SlowHook:
    """An HTTPS AdmissionReview server on its own thread that answers after `delay` seconds."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.ca = tls.ClusterCA("slow-hook-ca")
        leaf = self.ca.issue("slow-hook", ("127.0.0.1",))
        self.port = free_port()
        self._cert = (leaf.cert_pem, leaf.key_pem)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def __enter__(self) -> SlowHook:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(30)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    async def _start(self) -> None:
        import tempfile

        folder = pathlib.Path(tempfile.mkdtemp())
        (folder / "c.pem").write_bytes(self._cert[0])
        (folder / "k.pem").write_bytes(self._cert[1])
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(folder / "c.pem", folder / "k.pem")

        async def handle(request: web.Request) -> web.Response:
            body = await request.json()
            await asyncio.sleep(self.delay)
            uid = body["request"]["uid"]
            return web.json_response({"response": {"uid": uid, "allowed": False}})

        app = web.Application()
        app.router.add_post("/", handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, handler_cancellation=True)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=context).start()

    def configuration(
        self, name: str, *, policy: str, timeout: int, labels: dict[str, str]
    ) -> dict[str, Any]:
        import base64

        rule = {
            "apiGroups": [""],
            "apiVersions": ["v1"],
            "resources": ["configmaps"],
            "operations": ["CREATE"],
        }
        return {
            "metadata": {"name": name},
            "webhooks": [
                {
                    "name": f"{name}.example.dev",
                    "rules": [rule],
                    "clientConfig": {
                        "url": f"https://127.0.0.1:{self.port}/",
                        "caBundle": base64.b64encode(self.ca.cert_pem).decode(),
                    },
                    "objectSelector": {"matchLabels": labels},
                    "matchConditions": [
                        {"name": "not-exempt", "expression": "object.metadata.name != 'exempt'"}
                    ],
                    "failurePolicy": policy,
                    "timeoutSeconds": timeout,
                    "sideEffects": "None",
                    "admissionReviewVersions": ["v1"],
                }
            ],
        }


def test_failure_policy_and_timeout(cluster: LocalCluster) -> None:
    api = _api(cluster)
    core, admission = client.CoreV1Api(api), client.AdmissionregistrationV1Api(api)
    with SlowHook(delay=20.0) as hook:
        admission.create_validating_webhook_configuration(
            hook.configuration("strict", policy="Fail", timeout=1, labels={"hook": "strict"})
        )
        admission.create_validating_webhook_configuration(
            hook.configuration("lenient", policy="Ignore", timeout=1, labels={"hook": "lenient"})
        )
        try:
            started = time.monotonic()
            with pytest.raises(ApiException) as err:
                core.create_namespaced_config_map(
                    "default", {"metadata": {"name": "s", "labels": {"hook": "strict"}}}
                )
            assert err.value.status == 500 and "context deadline exceeded" in err.value.body
            assert time.monotonic() - started < 15, "timeoutSeconds (1 s) cut the 20 s call short"
            core.create_namespaced_config_map(
                "default", {"metadata": {"name": "l", "labels": {"hook": "lenient"}}}
            )
            core.create_namespaced_config_map(
                "default", {"metadata": {"name": "n", "labels": {"hook": "none"}}}
            )
            # a false matchCondition: the strict webhook is not called at all (else: 500, as above)
            core.create_namespaced_config_map(
                "default", {"metadata": {"name": "exempt", "labels": {"hook": "strict"}}}
            )
        finally:
            admission.delete_validating_webhook_configuration("strict")
            admission.delete_validating_webhook_configuration("lenient")
    with pytest.raises(ApiException) as bad:  # v1 refuses sideEffects Some/Unknown
        admission.create_validating_webhook_configuration(
            {
                **hook.configuration("bad", policy="Fail", timeout=1, labels={}),
                "webhooks": [
                    {
                        **hook.configuration("bad", policy="Fail", timeout=1, labels={})["webhooks"][0],
                        "sideEffects": "Some",
                    }
                ],
            }
        )
    assert bad.value.status == 422


GATE = """
import os, ssl
from aiohttp import web

async def review(request):
    body = await request.json()
    req = body["request"]
    verdict = ((req["object"] or req["oldObject"])["metadata"].get("labels") or {}).get("verdict")
    allowed = verdict != "deny" and not (req["operation"] == "DELETE" and verdict == "keep")
    status = {"code": 403, "message": "the gate says no"}
    return web.json_response({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                              "response": {"uid": req["uid"], "allowed": allowed, "status": status}})

context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
context.load_cert_chain(os.environ["CERT"], os.environ["KEY"])
app = web.Application()
app.router.add_post("/review", review)
web.run_app(app, host=os.environ["POD_IP"], port=8443, ssl_context=context, print=None)
"""


def test_webhook_behind_a_service_runs_in_a_pod(cluster: LocalCluster) -> None:
    """`clientConfig.service`: the API server calls a ready pod the Service selects, checking its
    certificate against `<service>.<namespace>.svc` and the caBundle."""
    import base64

    api = _api(cluster)
    core, admission = client.CoreV1Api(api), client.AdmissionregistrationV1Api(api)
    ca = tls.ClusterCA("gate-ca")
    leaf = ca.issue("gate", ("gate.default.svc",))
    secret = {
        "metadata": {"name": "gate-tls"},
        "stringData": {"tls.crt": leaf.cert_pem.decode(), "tls.key": leaf.key_pem.decode()},
    }
    core.create_namespaced_secret("default", secret)
    env = [
        {"name": "CERT", "value": "/certs/tls.crt"},
        {"name": "KEY", "value": "/certs/tls.key"},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    container = {
        "name": "gate",
        "image": "python",
        "command": [sys.executable, "-c", GATE],
        "env": env,
        "ports": [{"name": "https", "containerPort": 8443}],
        "volumeMounts": [{"name": "tls", "mountPath": "/certs"}],
    }
    pod_spec = {"containers": [container], "volumes": [{"name": "tls", "secret": {"secretName": "gate-tls"}}]}
    core.create_namespaced_pod(
        "default", {"metadata": {"name": "gate", "labels": {"app": "gate"}}, "spec": pod_spec}
    )
    service_spec = {"selector": {"app": "gate"}, "ports": [{"port": 443, "targetPort": "https"}]}
    core.create_namespaced_service("default", {"metadata": {"name": "gate"}, "spec": service_spec})
    rule = {
        "apiGroups": [""],
        "apiVersions": ["v1"],
        "resources": ["configmaps"],
        "operations": ["CREATE", "DELETE"],
    }
    hook = {
        "name": "gate.example.dev",
        "rules": [rule],
        "clientConfig": {
            "service": {"namespace": "default", "name": "gate", "path": "/review"},
            "caBundle": base64.b64encode(ca.cert_pem).decode(),
        },
        "objectSelector": {"matchExpressions": [{"key": "verdict", "operator": "Exists"}]},
        "sideEffects": "None",
        "admissionReviewVersions": ["v1"],
    }
    admission.create_validating_webhook_configuration({"metadata": {"name": "gate"}, "webhooks": [hook]})
    try:

        def allowed_once_up() -> bool:
            try:
                core.create_namespaced_config_map(
                    "default", {"metadata": {"name": "ok", "labels": {"verdict": "allow"}}}
                )
            except ApiException as exc:
                if exc.status == 500:  # the pod is not serving yet
                    return False
                raise
            return True

        until(allowed_once_up)
        with pytest.raises(ApiException) as err:
            core.create_namespaced_config_map(
                "default", {"metadata": {"name": "no", "labels": {"verdict": "deny"}}}
            )
        assert err.value.status == 403
        message = json.loads(err.value.body)["message"]
        assert message == 'admission webhook "gate.example.dev" denied the request: the gate says no'
        with pytest.raises(ApiException):
            core.read_namespaced_config_map("no", "default")
        core.create_namespaced_config_map(
            "default", {"metadata": {"name": "kept", "labels": {"verdict": "keep"}}}
        )
        with pytest.raises(ApiException) as refused:  # DELETE goes to the webhook too, with oldObject
            core.delete_namespaced_config_map("kept", "default")
        assert refused.value.status == 403
        assert core.read_namespaced_config_map("kept", "default").metadata.deletion_timestamp is None
        core.delete_namespaced_config_map("ok", "default")
    finally:
        admission.delete_validating_webhook_configuration("gate")
        core.delete_namespaced_pod("gate", "default", grace_period_seconds=0)
