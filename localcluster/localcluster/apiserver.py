"""The API server emulator: Kubernetes REST over aiohttp, backed by `Store`.

Serves discovery, CRUD, PATCH (merge, JSON, strategic merge, server-side apply), list/watch with
selectors, bookmarks, 410 Gone and timeouts, Tables for kubectl, pod logs, evictions and bindings.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml
from aiohttp import web

from localcluster import discovery, names, openapi, podlogs, protobuf, schema, tables, webhooks
from localcluster.auth import UserInfo
from localcluster.errors import ApiError
from localcluster.patch import (
    APPLY_PATCH,
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    PatchError,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from localcluster.podlogs import LogPathFn, truthy
from localcluster.resources import ResourceType
from localcluster.security import Security
from localcluster.selectors import (
    Requirement,
    SelectorError,
    fields_match,
    labels_match,
    parse_field_selector,
    parse_label_selector,
)
from localcluster.store import Store
from localcluster.watchlog import WatchEvent

log = logging.getLogger("localcluster.apiserver")

USER = web.RequestKey("localcluster.user", UserInfo)
"""The authenticated user of a request (set when the server checks authentication)."""


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def _static(make: Callable[[], Any]) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A GET handler answering `make()` (text for str, JSON otherwise)."""

    async def handler(_request: web.Request) -> web.StreamResponse:
        body = make()
        return web.Response(text=body) if isinstance(body, str) else _json(body)

    return handler


def _strict_fields(rt: ResourceType, query: Mapping[str, str], obj: Any) -> None:
    """`fieldValidation=Strict` (kubectl's default): a custom resource with fields its schema would
    prune is refused, as the real server does. Built-in kinds have no schema here and pass."""
    if query.get("fieldValidation") != "Strict" or rt.schema is None or not isinstance(obj, dict):
        return
    unknown = schema.unknown_fields(rt.schema, obj)
    if unknown:
        listed = ", ".join(f'unknown field "{path}"' for path in unknown)
        raise ApiError(
            400,
            f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
            f"strict decoding error: {listed}",
        )


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=_dumps(obj), status=status, content_type="application/json")


@dataclass(frozen=True, slots=True)
class Target:
    """What a resource URL names."""

    rt: ResourceType
    """The resource type."""
    namespace: str | None
    """Namespace from the URL; None for cluster-wide."""
    name: str | None
    """Object name; None for the collection."""
    subresource: str | None
    """e.g. `status`, `log`."""


class ApiServer:
    """The HTTP face of the store."""

    def __init__(
        self,
        store: Store,
        *,
        bookmark_interval_s: float = 30.0,
        log_path: LogPathFn | None = None,
        security: Security | None = None,
    ) -> None:
        self.store = store
        self.bookmark_interval_s = bookmark_interval_s
        self.log_path = log_path
        self.security = security
        """Authentication and RBAC; None serves everybody everything (no auth at all)."""
        self.webhooks = webhooks.Webhooks(store)
        """Admission webhooks (`localcluster.webhooks`), called on creates and updates."""
        self.address = "127.0.0.1:0"
        self.app = web.Application(
            middlewares=[self._errors, self._authenticate], client_max_size=64 * 1024**2
        )
        static: dict[str, Callable[[], Any]] = {
            "/version": lambda: discovery.VERSION_INFO,
            "/api": lambda: discovery.core_versions(self.address),
            "/apis": lambda: discovery.group_list(self.store.served()),
            "/openapi/v3": lambda: discovery.openapi_v3_root(self.store.served()),
            "/healthz": lambda: "ok",
            "/readyz": lambda: "ok",
            "/livez": lambda: "ok",
        }
        for path, make in static.items():
            self.app.router.add_get(path, _static(make))
        self.app.router.add_get("/openapi/v3/{path:.*}", self._openapi_v3)
        self.app.router.add_get("/openapi/v2", self._openapi_v2)
        self.app.router.add_route("*", "/api/{path:.*}", self._dispatch)
        self.app.router.add_route("*", "/apis/{path:.*}", self._dispatch)

    @web.middleware
    async def _errors(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
            return response
        except ApiError as exc:
            return _json(exc.status(), exc.code)
        except (SelectorError, json.JSONDecodeError, yaml.YAMLError, ValueError, TypeError, KeyError) as exc:
            return _json(ApiError(400, f"bad request: {exc}").status(), 400)

    @web.middleware
    async def _authenticate(
        self, request: web.Request, handler: Callable[[web.Request], Any]
    ) -> web.StreamResponse:
        """Every request, the control endpoints included, passes authentication and RBAC first."""
        if self.security is not None:
            request[USER] = self.security.check(
                request.method, request.path, request.query, request.headers.get("Authorization")
            )
        response: web.StreamResponse = await handler(request)
        return response

    async def _openapi_v2(self, request: web.Request) -> web.Response:
        """Swagger 2.0: the gnostic protobuf when asked for (client-go asks for nothing else), else JSON."""
        document = openapi.v2_document(self.store.served(), discovery.VERSION_INFO["gitVersion"])
        if openapi.PROTOBUF_V2 in request.headers.get("Accept", ""):
            # the real server answers protobuf as octet-stream ('@' is not valid in a Content-Type)
            return web.Response(body=openapi.v2_protobuf(document), content_type="application/octet-stream")
        return _json(document)

    async def _openapi_v3(self, request: web.Request) -> web.Response:
        parts = request.match_info["path"].split("/")
        if parts[0] == "api" and len(parts) == 2:
            return _json(discovery.openapi_v3_group_version(self.store.served(), "", parts[1]))
        if parts[0] == "apis" and len(parts) == 3:
            return _json(discovery.openapi_v3_group_version(self.store.served(), parts[1], parts[2]))
        raise ApiError(404, "not found")

    # ------------------------------------------------------------------ routing
    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        parts = [p for p in request.path.split("/") if p]
        if parts[0] == "api":
            group, rest = "", parts[1:]
        else:
            group, rest = (parts[1], parts[2:]) if len(parts) > 1 else ("", [])
        if not rest:
            if parts[0] == "api":
                return _json(discovery.core_versions(self.address))
            info = discovery.group_info(self.store.served(), group)
            if info is None:
                raise ApiError(404, "the server could not find the requested resource")
            return _json(info)
        version, rest = rest[0], rest[1:]
        if not rest:
            listing = discovery.resource_list(self.store.served(), group, version)
            if listing is None:
                raise ApiError(404, "the server could not find the requested resource")
            return _json(listing)
        target = self._target(group, version, rest)
        return await self._handle(request, target)

    def _target(self, group: str, version: str, rest: list[str]) -> Target:
        namespace = None
        if rest[0] == "namespaces" and len(rest) >= 3 and rest[2] not in {"status", "finalize"}:
            namespace, rest = rest[1], rest[2:]
            names.check_namespace(namespace)
        rt = self.store.type_of(group, version, rest[0])
        if namespace is not None and not rt.namespaced:
            raise ApiError(404, f"{rt.plural} is not namespaced")
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if sub == "finalize":
            sub = None
        if sub is not None and sub not in rt.subresources:
            raise ApiError(404, f"the server could not find the requested resource ({rt.plural}/{sub})")
        return Target(rt, namespace, name, sub)

    async def _handle(self, request: web.Request, t: Target) -> web.StreamResponse:  # noqa: PLR0911, PLR0912
        method, q = request.method, request.query
        ns = t.namespace or ""
        if method == "GET" and t.name is None:
            labels, fields = (
                parse_label_selector(q.get("labelSelector")),
                parse_field_selector(q.get("fieldSelector")),
            )
            if truthy(q.get("watch")):
                return await self._watch(request, t, labels, fields)
            items, rv = self.store.list(t.rt, t.namespace, labels, fields)
            return self._render_list(request, t.rt, items, str(rv))
        if method == "GET" and t.subresource == "log":
            assert t.name is not None
            return await podlogs.serve(request, self.store, t.namespace or "", t.name, self.log_path)
        if method == "GET":
            assert t.name is not None
            if truthy(q.get("watch")):
                return await self._watch(request, t, (), (Requirement("metadata.name", "=", (t.name,)),))
            obj = self._versioned(t.rt, self.store.get(t.rt, ns, t.name))
            if "as=Table" in request.headers.get("Accept", ""):
                return _json(
                    tables.table(
                        t.rt,
                        [obj],
                        obj["metadata"]["resourceVersion"],
                        include_object=q.get("includeObject", "Metadata"),
                    )
                )
            return _json(obj)
        if method == "POST" and t.name is None:
            body = await self._body(request)
            _strict_fields(t.rt, q, body)
            return _json(self._versioned(t.rt, await self._write(request, t, ns, body, name=None)), 201)
        if method == "POST" and t.subresource == "token" and t.name is not None and self.security:
            return _json(self.security.token_request(ns, t.name, await self._body(request)), 201)
        if method == "POST" and t.subresource in {"eviction", "binding"}:
            return _json(await self._pod_action(request, t), 201)
        if method == "PUT" and t.name is not None:
            body = await self._body(request)
            _strict_fields(t.rt, q, body)
            return _json(self._versioned(t.rt, await self._write(request, t, ns, body, name=t.name)))
        if method == "PATCH" and t.name is not None:
            return await self._patch(request, t)
        if method == "DELETE" and t.name is not None:
            opts = await self._delete_options(request)
            current = self.store.get(t.rt, ns, t.name)
            await self.webhooks.admit_delete(self._attributes(request, t, ns, "DELETE"), current)
            if q.get("dryRun"):
                return _json(self._versioned(t.rt, current))
            return _json(self._versioned(t.rt, self.store.delete(t.rt, ns, t.name, **opts)))
        if method == "DELETE":
            opts = await self._delete_options(request)
            labels, fields = (
                parse_label_selector(q.get("labelSelector")),
                parse_field_selector(q.get("fieldSelector")),
            )
            items, _ = self.store.list(t.rt, t.namespace, labels, fields)
            deleted = [
                self.store.delete(t.rt, o["metadata"].get("namespace", ""), o["metadata"]["name"], **opts)
                for o in items
            ]
            return self._render_list(request, t.rt, deleted, str(self.store.rv))
        raise ApiError(405, f"method {method} is not allowed on this resource")

    # ------------------------------------------------------------------ helpers
    async def _body(self, request: web.Request) -> dict[str, Any]:
        raw = await request.read()
        ctype = request.headers.get("Content-Type", "application/json").split(";")[0].strip()
        if ctype == protobuf.PROTOBUF:
            try:
                return protobuf.decode(raw)
            except protobuf.ProtobufError as exc:
                raise ApiError(415, f"unsupported media type {ctype}: {exc}") from exc
        body = (
            yaml.safe_load(raw)
            if ctype == APPLY_PATCH or ctype.endswith("yaml")
            else json.loads(raw or b"null")
        )
        return body  # type: ignore[no-any-return]

    def _versioned(self, rt: ResourceType, obj: dict[str, Any]) -> dict[str, Any]:
        if obj.get("apiVersion") == rt.api_version:
            return obj
        return {**obj, "apiVersion": rt.api_version}

    def _render_list(
        self, request: web.Request, rt: ResourceType, items: list[dict[str, Any]], rv: str
    ) -> web.Response:
        items = [self._versioned(rt, o) for o in items]
        if "as=Table" in request.headers.get("Accept", ""):
            return _json(
                tables.table(rt, items, rv, include_object=request.query.get("includeObject", "Metadata"))
            )
        return _json(
            {
                "kind": f"{rt.kind}List",
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": rv},
                "items": items,
            }
        )

    async def _patch(self, request: web.Request, t: Target) -> web.Response:
        assert t.name is not None
        ns = t.namespace or ""
        ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
        body = await self._body(request)
        try:
            current = self.store.get(t.rt, ns, t.name)
        except ApiError as exc:
            if exc.code != 404 or ctype != APPLY_PATCH:
                raise
            if not isinstance(body, dict):
                raise ApiError(400, "an apply patch must be an object") from exc
            return _json(self._versioned(t.rt, await self._write(request, t, ns, body, name=None)), 201)
        try:
            if ctype == MERGE_PATCH:
                patched = merge_patch(current, body)
            elif ctype == JSON_PATCH:
                patched = json_patch(current, body)
            elif ctype in {STRATEGIC_MERGE_PATCH, APPLY_PATCH}:
                if ctype == STRATEGIC_MERGE_PATCH and t.rt.schema is not None:
                    raise ApiError(415, "strategic merge patch is not supported for custom resources")
                patched = strategic_merge_patch(current, body)
            else:
                raise ApiError(415, f"unsupported patch type {ctype!r}")
        except PatchError as exc:
            raise ApiError(422, str(exc)) from exc
        if not isinstance(patched, dict):
            raise ApiError(422, "the patch did not produce an object")
        _strict_fields(t.rt, request.query, patched)
        return _json(self._versioned(t.rt, await self._write(request, t, ns, patched, name=t.name)))

    async def _write(
        self, request: web.Request, t: Target, ns: str, body: Any, *, name: str | None
    ) -> dict[str, Any]:
        """Create (`name` None) or update, through admission as kube-apiserver orders it: mutating
        webhooks, then the object's own admission (defaults, schema, CEL: a store dry run), then
        validating webhooks; then stored, unless the request is a dry run (`localcluster.webhooks`)."""
        if t.rt.group == webhooks.GROUP and t.rt.plural in webhooks.KINDS:
            webhooks.check_configuration(t.rt.plural, body)

        def writer(obj: Any, dry: bool) -> dict[str, Any]:
            if name is None:
                return self.store.create(t.rt, ns, obj, dry_run=dry)
            return self.store.update(t.rt, ns, name, obj, subresource=t.subresource, dry_run=dry)

        attrs = self._attributes(request, t, ns, "CREATE" if name is None else "UPDATE")
        old = None if name is None else self.store.get(t.rt, ns, name)
        return await self.webhooks.write(writer, attrs, body, old)

    def _attributes(self, request: web.Request, t: Target, ns: str, operation: str) -> webhooks.Attributes:
        return webhooks.Attributes(
            rt=t.rt,
            subresource=t.subresource,
            operation=operation,
            namespace=ns,
            name=t.name or "",
            user=request.get(USER),
            dry_run=bool(request.query.get("dryRun")),
        )

    async def _delete_options(self, request: web.Request) -> dict[str, Any]:
        q = request.query
        body = await self._body(request) if (await request.read()).strip() else {}
        grace = body.get("gracePeriodSeconds", q.get("gracePeriodSeconds"))
        pre = body.get("preconditions") or {}
        return {
            "grace_seconds": int(grace) if grace is not None else None,
            "propagation": body.get("propagationPolicy") or q.get("propagationPolicy"),
            "precondition_uid": pre.get("uid"),
            "precondition_rv": pre.get("resourceVersion"),
        }

    async def _pod_action(self, request: web.Request, t: Target) -> dict[str, Any]:
        assert t.name is not None
        body = await self._body(request)
        ns = t.namespace or ""
        if t.subresource == "eviction":
            grace = (body.get("deleteOptions") or {}).get("gracePeriodSeconds")
            self.store.delete(t.rt, ns, t.name, grace_seconds=grace)
            return {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}
        pod = self.store.get(t.rt, ns, t.name)
        if (pod.get("spec") or {}).get("nodeName"):
            raise ApiError(409, f'pod {t.name} is already assigned to node "{pod["spec"]["nodeName"]}"')
        updated = {**pod, "spec": {**pod["spec"], "nodeName": (body.get("target") or {}).get("name")}}
        self.store.update(t.rt, ns, t.name, updated, subresource="binding")
        return {"kind": "Status", "apiVersion": "v1", "status": "Success", "code": 201}

    # ------------------------------------------------------------------ watch
    async def _watch(
        self,
        request: web.Request,
        t: Target,
        labels: tuple[Requirement, ...],
        fields: tuple[Requirement, ...],
    ) -> web.StreamResponse:
        q = request.query
        raw_rv = q.get("resourceVersion")
        since = int(raw_rv) if raw_rv not in (None, "", "0") else None
        timeout = float(q.get("timeoutSeconds", 1800))
        bookmarks = truthy(q.get("allowWatchBookmarks"))
        as_table = "as=Table" in request.headers.get("Accept", "")
        initial = self.store.list(t.rt, t.namespace, labels, fields)[0] if since is None else []
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        try:
            watcher, backlog = self.store.watch(t.rt, since, initial)
        except ApiError as exc:
            await response.prepare(request)
            await response.write(_dumps({"type": "ERROR", "object": exc.status()}) + b"\n")
            return response
        await response.prepare(request)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            pending = backlog
            while True:
                chunk = b"".join(self._encode(t, e, labels, fields, as_table) for e in pending)
                if chunk:
                    await response.write(chunk)
                remaining = deadline - loop.time()
                if remaining <= 0 or (watcher.overflowed and watcher.queue.empty()):
                    break
                wait = min(remaining, self.bookmark_interval_s) if bookmarks else remaining
                try:
                    first = await asyncio.wait_for(watcher.queue.get(), wait)
                except TimeoutError:
                    if bookmarks and loop.time() < deadline:
                        mark = {
                            "kind": t.rt.kind,
                            "apiVersion": t.rt.api_version,
                            "metadata": {"resourceVersion": str(self.store.rv)},
                        }
                        await response.write(_dumps({"type": "BOOKMARK", "object": mark}) + b"\n")
                    pending = []
                    continue
                pending = [first]
                while not watcher.queue.empty():
                    pending.append(watcher.queue.get_nowait())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.store.unwatch(t.rt, watcher)
        with contextlib.suppress(ConnectionResetError):
            await response.write_eof()
        return response

    def _encode(
        self,
        t: Target,
        event: WatchEvent,
        labels: tuple[Requirement, ...],
        fields: tuple[Requirement, ...],
        as_table: bool,
    ) -> bytes:
        obj = event.obj
        ns = obj["metadata"].get("namespace", "")
        if t.namespace is not None and ns != t.namespace:
            return b""
        kind = event.type
        if labels or fields:

            def ok(o: dict[str, Any] | None) -> bool:
                return (
                    o is not None
                    and labels_match(labels, o["metadata"].get("labels"))
                    and fields_match(fields, o)
                )

            now_ok, was_ok = ok(obj), ok(event.old)
            if kind == "MODIFIED":
                kind = "MODIFIED" if now_ok and was_ok else "ADDED" if now_ok else "DELETED" if was_ok else ""
            elif not now_ok:
                kind = ""
        if not kind:
            return b""
        plain = kind == event.type and not as_table and obj.get("apiVersion") == t.rt.api_version
        if plain and event.wire is not None:
            return event.wire
        out: Any = self._versioned(t.rt, obj)
        if as_table:
            out = tables.table(t.rt, [out], obj["metadata"]["resourceVersion"])
        line = _dumps({"type": kind, "object": out}) + b"\n"
        if plain:
            event.wire = line
        return line
