"""Dynamic admission: `MutatingWebhookConfiguration` and `ValidatingWebhookConfiguration`
(admissionregistration.k8s.io/v1), called over HTTPS with `AdmissionReview` v1, as kube-apiserver does.

For each CREATE or UPDATE (of an object or a subresource) the API server runs, in this order:
mutating webhooks (their JSON patches applied one after another), the object's own admission (defaults,
schema, CEL rules: `Store` in dry-run), then validating webhooks; only then is the object stored. A
DELETE calls the matching webhooks with `oldObject`. Honoured per webhook: `rules` (apiGroups,
apiVersions, resources incl. `x/status` and `*/*`, operations, scope), `namespaceSelector`,
`objectSelector`, `failurePolicy` (Fail by default), `timeoutSeconds` (10 by default, 1-30),
`sideEffects` (None or NoneOnDryRun; a dry-run request says `dryRun: true`), `clientConfig.url` or
`clientConfig.service` (a ready pod the Service selects; its certificate must name
`<service>.<namespace>.svc`) with its `caBundle`, `matchConditions` (CEL,
`localcluster.matchconditions`). Not done (the fidelity table in docs/architecture.md):
`matchPolicy: Equivalent` across versions, reinvocation, CONNECT, deletecollection.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import json
import logging
import ssl
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp

from localcluster import matchconditions, patch, tls
from localcluster.auth import UserInfo
from localcluster.errors import ApiError
from localcluster.resources import ResourceType
from localcluster.store import Store

log = logging.getLogger(__name__)

GROUP = "admissionregistration.k8s.io"
KINDS = {"mutatingwebhookconfigurations": "mutating", "validatingwebhookconfigurations": "validating"}
DEFAULT_TIMEOUT_S = 10
SIDE_EFFECTS = ("None", "NoneOnDryRun")


@dataclass(frozen=True, slots=True)
class Attributes:
    """What a webhook rule is matched against, and what the AdmissionReview says about the request."""

    rt: ResourceType
    """The resource written."""
    subresource: str | None
    """`status`, `scale`, ... or None for the object itself."""
    operation: str
    """CREATE or UPDATE."""
    namespace: str
    """The object's namespace (`""` when cluster-scoped)."""
    name: str
    """The object's name (may be empty on a create with generateName)."""
    user: UserInfo | None
    """Who asked (None with RBAC off)."""
    dry_run: bool
    """Whether the request is a dry run."""


# ------------------------------------------------------------------ configuration checks (pure)
def check_configuration(plural: str, obj: Any) -> None:
    """422 for a webhook configuration kube-apiserver would refuse. Pure."""
    errors: list[tuple[str, str]] = []
    if not isinstance(obj, dict):
        raise ApiError(400, "a webhook configuration must be an object")
    hooks = obj.get("webhooks") or []
    if not isinstance(hooks, list):
        errors.append(("webhooks", "must be a list"))
        hooks = []
    for i, hook in enumerate(hooks):
        errors += _hook_errors(f"webhooks[{i}]", hook)
    if errors:
        name = (obj.get("metadata") or {}).get("name", "")
        kind = obj.get("kind") or plural
        summary = ", ".join(f"{field}: {message}" for field, message in errors)
        raise ApiError(
            422,
            f'{kind}.{GROUP} "{name}" is invalid: {summary}',
            details={
                "name": name,
                "group": GROUP,
                "kind": kind,
                "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in errors],
            },
        )


def _hook_errors(at: str, hook: Any) -> list[tuple[str, str]]:
    """(field, message) for each thing wrong with one webhook. Pure."""
    if not isinstance(hook, dict):
        return [(at, "must be an object")]
    errors: list[tuple[str, str]] = []
    name = hook.get("name")
    if not isinstance(name, str) or "." not in name:
        errors.append((f"{at}.name", "should be a domain with at least three segments separated by dots"))
    if hook.get("sideEffects") not in SIDE_EFFECTS:
        errors.append((f"{at}.sideEffects", f"Unsupported value: must be one of {list(SIDE_EFFECTS)}"))
    versions = hook.get("admissionReviewVersions") or []
    if "v1" not in versions:
        errors.append((f"{at}.admissionReviewVersions", "must include at least one of v1"))
    timeout = hook.get("timeoutSeconds", DEFAULT_TIMEOUT_S)
    if not isinstance(timeout, int) or not 1 <= timeout <= 30:
        errors.append((f"{at}.timeoutSeconds", "the timeout value must be between 1 and 30 seconds"))
    if hook.get("failurePolicy", "Fail") not in {"Fail", "Ignore"}:
        errors.append((f"{at}.failurePolicy", 'Unsupported value: must be "Fail" or "Ignore"'))
    for j, condition in enumerate(hook.get("matchConditions") or []):
        try:
            matchconditions.check(str((condition or {}).get("expression", "")))
        except matchconditions.ConditionError as exc:
            errors.append((f"{at}.matchConditions[{j}].expression", f"compilation failed: {exc}"))
    config = hook.get("clientConfig") or {}
    if bool(config.get("url")) == bool(config.get("service")):
        errors.append((f"{at}.clientConfig", "exactly one of url or service is required"))
    elif config.get("url") and not str(config["url"]).startswith("https://"):
        errors.append((f"{at}.clientConfig.url", "'https' is the only allowed URL scheme"))
    return errors


# ------------------------------------------------------------------ matching (pure)
def _selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A metav1.LabelSelector; an empty or absent selector matches everything. Pure."""
    if not selector:
        return True
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    return all(_expression_holds(e, labels) for e in selector.get("matchExpressions") or [])


def _expression_holds(expr: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
    value = labels.get(key) if isinstance(key, str) else None
    return {
        "In": value is not None and value in values,
        "NotIn": value is None or value not in values,
        "Exists": value is not None,
        "DoesNotExist": value is None,
    }.get(str(op), False)


def _one_matches(pattern: str, value: str) -> bool:
    return pattern in {"*", value}


def _resource_matches(pattern: str, plural: str, subresource: str | None) -> bool:
    resource, _, sub = pattern.partition("/")
    if not _one_matches(resource, plural):
        return False
    if subresource is None:
        return sub == ""
    return sub != "" and _one_matches(sub, subresource)


def rule_matches(rule: Mapping[str, Any], attrs: Attributes) -> bool:
    """One `RuleWithOperations` against a request. Pure."""
    rt = attrs.rt
    scope = rule.get("scope", "*")
    if (scope == "Cluster" and rt.namespaced) or (scope == "Namespaced" and not rt.namespaced):
        return False
    return (
        any(_one_matches(op, attrs.operation) for op in rule.get("operations") or [])
        and any(_one_matches(g, rt.group) for g in rule.get("apiGroups") or [])
        and any(_one_matches(v, rt.version) for v in rule.get("apiVersions") or [])
        and any(_resource_matches(r, rt.plural, attrs.subresource) for r in rule.get("resources") or [])
    )


def webhook_matches(
    hook: Mapping[str, Any],
    attrs: Attributes,
    obj: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
    namespace_labels: Mapping[str, str] | None,
) -> bool:
    """Whether `hook` is called for this request: a rule, the namespace and the object selectors. Pure.
    `namespace_labels` are the labels of the object's namespace (None: cluster-scoped)."""
    if not any(rule_matches(rule, attrs) for rule in hook.get("rules") or []):
        return False
    if attrs.rt.kind == "Namespace" and not attrs.rt.group:
        namespace_labels = ((obj or old or {}).get("metadata") or {}).get("labels") or {}
    if namespace_labels is not None and not _selector_matches(
        hook.get("namespaceSelector"), namespace_labels
    ):
        return False
    selector = hook.get("objectSelector")
    labels = [(each.get("metadata") or {}).get("labels") or {} for each in (obj, old) if each is not None]
    return any(_selector_matches(selector, each) for each in labels)


def review(attrs: Attributes, obj: Mapping[str, Any] | None, old: Mapping[str, Any] | None) -> dict[str, Any]:
    """The AdmissionReview v1 request body. Pure (but for its fresh uid)."""
    rt = attrs.rt
    kind = {"group": rt.group, "version": rt.version, "kind": rt.kind}
    resource = {"group": rt.group, "version": rt.version, "resource": rt.plural}
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": attrs.name,
        "operation": attrs.operation,
        "userInfo": _user(attrs.user),
        "object": obj,
        "oldObject": old,
        "dryRun": attrs.dry_run,
        "options": {
            "apiVersion": "meta.k8s.io/v1",
            "kind": f"{attrs.operation.capitalize()}Options",
        },
    }
    if attrs.subresource:
        request["subResource"] = request["requestSubResource"] = attrs.subresource
    if attrs.namespace:
        request["namespace"] = attrs.namespace
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def _user(user: UserInfo | None) -> dict[str, Any]:
    if user is None:
        return {"username": "system:anonymous", "groups": ["system:unauthenticated"]}
    out: dict[str, Any] = {"username": user.name, "groups": list(user.groups)}
    if user.uid:
        out["uid"] = user.uid
    if user.extra:
        out["extra"] = {k: list(v) for k, v in user.extra.items()}
    return out


def denied(name: str, status: Mapping[str, Any] | None) -> ApiError:
    """The error a rejection becomes (k8s `webhookerrors.ToStatusErr`). Pure."""
    status = status or {}
    sent = status.get("code")
    code = sent if isinstance(sent, int) and sent >= 400 else 400
    by = f'admission webhook "{name}" denied the request'
    message, reason = status.get("message"), status.get("reason")
    text = f"{by}: {message}" if message else f"{by}: {reason}" if reason else f"{by} without explanation"
    return ApiError(code, text, reason=str(reason) if reason else None, details=status.get("details"))


Writer = Callable[[Any, bool], dict[str, Any]]
"""Stores (or, with True, dry-runs) a create or update: `Store.create`/`Store.update` bound to a request."""


class CallError(Exception):
    """A webhook could not be called or answered nonsense: `failurePolicy` decides."""


# ------------------------------------------------------------------ calling
class Webhooks:
    """The webhook configurations of one store, and the calls they ask for."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def _configurations(self, plural: str) -> list[dict[str, Any]]:
        objects = self.store.objects.get((GROUP, plural)) or {}
        return [objects[k] for k in sorted(objects)]  # by name, as kube-apiserver orders them

    def active(self) -> bool:
        """Whether any webhook configuration exists (the fast path skips everything otherwise)."""
        return any(self.store.objects.get((GROUP, plural)) for plural in KINDS)

    def _matching(
        self, plural: str, attrs: Attributes, obj: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> list[dict[str, Any]]:
        if attrs.rt.group == GROUP and attrs.rt.plural in KINDS:
            return []  # webhook configurations are never subject to webhooks
        if attrs.operation not in {"CREATE", "UPDATE", "DELETE"}:
            return []
        ns_labels: dict[str, str] | None = None
        if attrs.rt.namespaced:
            ns = self.store.objects[("", "namespaces")].get(("", attrs.namespace)) or {}
            ns_labels = (ns.get("metadata") or {}).get("labels") or {}
        return [
            hook
            for config in self._configurations(plural)
            for hook in config.get("webhooks") or []
            if webhook_matches(hook, attrs, obj, old, ns_labels)
        ]

    async def mutate(
        self, attrs: Attributes, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        """`obj` after every matching mutating webhook, in order; ApiError on a rejection or failure."""
        for hook in self._matching("mutatingwebhookconfigurations", attrs, obj, old):
            response = await self._call(hook, attrs, obj, old)
            if response is None:
                continue
            if not response.get("allowed"):
                raise denied(hook["name"], response.get("status"))
            if response.get("patch"):
                obj = self._apply(hook, obj, response)
        return obj

    async def validate(
        self, attrs: Attributes, obj: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> None:
        """ApiError when any matching validating webhook rejects (or fails under failurePolicy Fail).
        They are called concurrently, as kube-apiserver does."""
        hooks = self._matching("validatingwebhookconfigurations", attrs, obj, old)
        responses = await asyncio.gather(*(self._call(h, attrs, obj, old) for h in hooks))
        for hook, response in zip(hooks, responses, strict=True):
            if response is not None and not response.get("allowed"):
                raise denied(hook["name"], response.get("status"))

    async def write(
        self,
        writer: Writer,
        attrs: Attributes,
        body: Any,
        old: dict[str, Any] | None,
    ) -> dict[str, Any]:
        """A create or update through admission as kube-apiserver orders it: mutating webhooks (on
        the defaulted object), the object's own admission (defaults, schema, CEL: a store dry run),
        validating webhooks; then `writer` stores it, unless the request is a dry run."""
        if not self.active():
            return writer(body, attrs.dry_run)
        defaulted = writer(body, True)
        meta = defaulted["metadata"]
        attrs = dataclasses.replace(attrs, namespace=meta.get("namespace", ""), name=meta.get("name", ""))
        mutated = await self.mutate(attrs, defaulted, old)
        final = writer(mutated, True) if mutated is not defaulted else defaulted
        await self.validate(attrs, final, old)
        return writer(mutated, attrs.dry_run)

    async def admit_delete(self, attrs: Attributes, old: dict[str, Any]) -> None:
        """A DELETE of `old`: matching mutating webhooks (their patches do not apply to a delete), then
        validating ones, each with `oldObject` and no `object`; ApiError when one refuses."""
        if not self.active():
            return
        for hook in self._matching("mutatingwebhookconfigurations", attrs, None, old):
            response = await self._call(hook, attrs, None, old)
            if response is not None and not response.get("allowed"):
                raise denied(hook["name"], response.get("status"))
        await self.validate(attrs, None, old)

    def _apply(self, hook: dict[str, Any], obj: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
        name = hook["name"]
        if response.get("patchType") != "JSONPatch":
            raise ApiError(500, f'Internal error occurred: webhook "{name}" answered an unknown patchType')
        try:
            ops = json.loads(base64.b64decode(response["patch"], validate=True))
            patched = patch.json_patch(obj, ops)
        except (binascii.Error, ValueError, TypeError, KeyError) as exc:
            raise ApiError(
                500, f'Internal error occurred: the patch of webhook "{name}" failed: {exc}'
            ) from exc
        if not isinstance(patched, dict):
            raise ApiError(500, f'Internal error occurred: the patch of webhook "{name}" made no object')
        return patched

    async def _call(
        self, hook: dict[str, Any], attrs: Attributes, obj: dict[str, Any] | None, old: dict[str, Any] | None
    ) -> dict[str, Any] | None:
        """The webhook's `response`; None when a match condition is false, or when the call (or a
        condition) failed and `failurePolicy` is Ignore."""
        name = hook["name"]
        body = review(attrs, obj, old)
        try:
            if hook.get("matchConditions") and not matchconditions.matches(
                hook["matchConditions"], body["request"]
            ):
                return None  # a false condition: the webhook is not called
            return await self._post(hook, body)
        except (CallError, matchconditions.ConditionError) as exc:
            if hook.get("failurePolicy", "Fail") == "Ignore":
                log.warning("webhook %s failed, ignored by its failurePolicy: %s", name, exc)
                return None
            raise ApiError(500, f'Internal error occurred: failed calling webhook "{name}": {exc}') from exc

    def _service_url(self, ref: Mapping[str, Any]) -> tuple[str, str]:
        """`clientConfig.service` -> (URL of a running pod behind the Service, the name its certificate
        must carry: `<service>.<namespace>.svc`). localcluster has no Service proxy, so the API server
        picks a ready pod the Service selects, as an endpoint would."""
        namespace, name = str(ref.get("namespace", "")), str(ref.get("name", ""))
        port, path = int(ref.get("port") or 443), str(ref.get("path") or "/")
        service = self.store.objects[("", "services")].get((namespace, name))
        if service is None:
            raise CallError(f'service "{name}" not found in namespace "{namespace}"')
        spec = service.get("spec") or {}
        selector = spec.get("selector") or {}
        entry = next((p for p in spec.get("ports") or [] if int(p.get("port", 0)) == port), None)
        if entry is None or not selector:
            raise CallError(f"service {namespace}/{name} has no port {port} with a pod selector")
        target = entry.get("targetPort", port)
        for (ns, _), pod in sorted(self.store.objects[("", "pods")].items()):
            labels = (pod.get("metadata") or {}).get("labels") or {}
            status = pod.get("status") or {}
            ready = any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
            )
            if ns != namespace or not ready or not status.get("podIP"):
                continue
            if any(labels.get(k) != v for k, v in selector.items()):
                continue
            number = target if isinstance(target, int) else _named_port(pod, str(target))
            if number is not None:
                return f"https://{status['podIP']}:{number}{path}", f"{name}.{namespace}.svc"
        raise CallError(f'no endpoints available for service "{namespace}/{name}"')

    async def _post(self, hook: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
        config = hook.get("clientConfig") or {}
        url, server_hostname = config.get("url"), None
        if not url:
            url, server_hostname = self._service_url(config.get("service") or {})
        context: ssl.SSLContext | bool = True
        if config.get("caBundle"):
            try:
                context = tls.client_context(base64.b64decode(config["caBundle"]))
            except (binascii.Error, ssl.SSLError, ValueError) as exc:
                raise CallError(f"bad caBundle: {exc}") from exc
        timeout = aiohttp.ClientTimeout(total=float(hook.get("timeoutSeconds", DEFAULT_TIMEOUT_S)))
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.post(url, json=body, ssl=context, server_hostname=server_hostname) as answer,
            ):
                if answer.status != 200:
                    raise CallError(f'Post "{url}": HTTP {answer.status}')
                reply = await answer.json(content_type=None)
        except TimeoutError as exc:
            raise CallError(f'Post "{url}": context deadline exceeded') from exc
        except (aiohttp.ClientError, ssl.SSLError, OSError, ValueError) as exc:
            raise CallError(f'Post "{url}": {exc}') from exc
        response = reply.get("response") if isinstance(reply, dict) else None
        if not isinstance(response, dict) or response.get("uid") != body["request"]["uid"]:
            raise CallError("expected an AdmissionReview response with the request's uid")
        return response


def _named_port(pod: Mapping[str, Any], name: str) -> int | None:
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == name:
                return int(port["containerPort"])
    return int(name) if name.isdigit() else None
