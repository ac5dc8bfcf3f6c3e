"""The object store behind the API server: resourceVersions, metadata rules, finalizers, garbage
collection and CRD registration. Admission (defaults, schema and CEL validation) is
`localcluster.admission`; the watch event log the store appends to is `localcluster.watchlog`.

Everything runs on the API server's event loop thread, so operations are plain synchronous calls and
each is atomic. Stored objects are never mutated in place: every write stores a fresh dict, so
readers and watch streams can hold references safely.
"""

from __future__ import annotations

import builtins
import collections
import copy
import datetime
import secrets
import string
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from localcluster import admission, fieldrules, names, resources
from localcluster.errors import ApiError, already_exists, conflict, not_found
from localcluster.resources import ResourceType
from localcluster.selectors import Requirement, fields_match, labels_match
from localcluster.watchlog import StorageKey, Watcher, WatchEvent, WatchLog

ObjectKey = tuple[str, str]  # (namespace or "", name)
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")


def now_iso() -> str:
    """The current time in the API's RFC 3339 form (seconds, UTC)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    """The current time with microseconds (Lease renewTime uses MicroTime)."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Store:
    """In-memory objects of every served resource, with a monotonic resourceVersion."""

    def __init__(self, *, history_per_resource: int = 50_000, validation_rules: bool = True) -> None:
        self.validation_rules = validation_rules
        """Whether CRD CEL rules are evaluated (`localcluster.celrules`)."""
        self.rv = 0
        self.types: dict[tuple[str, str, str], ResourceType] = {}
        self.objects: dict[StorageKey, dict[ObjectKey, dict[str, Any]]] = collections.defaultdict(dict)
        self.events = WatchLog(history_per_resource=history_per_resource)
        """The watch event log: history, compaction, watchers."""
        self.listeners: list[Callable[[StorageKey, WatchEvent], None]] = []
        self.create_hooks: list[Callable[[ResourceType, dict[str, Any]], dict[str, Any]]] = []
        """Admission plugins run on every create before the built-in admission (e.g. the
        ServiceAccount plugin of `localcluster.serviceaccounts`); each returns the object or raises."""
        self._dependents: dict[str, set[tuple[StorageKey, ObjectKey]]] = collections.defaultdict(set)
        self._rule_warnings = admission.RuleWarnings()
        for rt in resources.BUILTIN_TYPES:
            self.types[(rt.group, rt.version, rt.plural)] = rt
        for ns in SYSTEM_NAMESPACES:
            self.create(self.type_of("", "v1", "namespaces"), "", {"metadata": {"name": ns}})

    # ------------------------------------------------------------------ types
    def type_of(self, group: str, version: str, plural: str) -> ResourceType:
        """The served type at a URL, or 404."""
        rt = self.types.get((group, version, plural))
        if rt is None:
            raise ApiError(
                404, f"the server could not find the requested resource ({group}/{version} {plural})"
            )
        return rt

    def served(self) -> list[ResourceType]:
        """Every served type (discovery lists these)."""
        return list(self.types.values())

    # ------------------------------------------------------------------ reads
    def get(self, rt: ResourceType, namespace: str, name: str) -> dict[str, Any]:
        """One object, or 404."""
        obj = self.objects[rt.storage_key].get((namespace if rt.namespaced else "", name))
        if obj is None:
            raise not_found(rt.group, rt.plural, name)
        return obj

    def list(
        self,
        rt: ResourceType,
        namespace: str | None,
        labels: tuple[Requirement, ...] = (),
        fields: tuple[Requirement, ...] = (),
    ) -> tuple[list[dict[str, Any]], int]:
        """Matching objects, sorted by namespace and name, with the list's resourceVersion."""
        found = [
            obj
            for (ns, _), obj in sorted(self.objects[rt.storage_key].items())
            if (namespace is None or ns == namespace)
            and labels_match(labels, obj["metadata"].get("labels"))
            and fields_match(fields, obj)
        ]
        return found, self.rv

    # ------------------------------------------------------------------ writes
    def create(
        self, rt: ResourceType, namespace: str, body: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Create an object: name or generateName, uid, timestamps, generation 1, defaults, checks.
        `dry_run`: the object as it would be stored, nothing stored (validating webhooks see it)."""
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        if rt.namespaced:
            namespace = namespace or meta.get("namespace") or "default"
            if meta.get("namespace") not in (None, "", namespace):
                raise ApiError(
                    400,
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            self._require_namespace(namespace)
            meta["namespace"] = namespace
        else:
            namespace = ""
            meta.pop("namespace", None)
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(
                    422,
                    "name or generateName is required",
                    details={
                        "causes": [
                            {
                                "field": "metadata.name",
                                "reason": "FieldValueRequired",
                                "message": "Required value: name or generateName is required",
                            }
                        ]
                    },
                )
            suffix = "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(5))
            meta["name"] = meta["generateName"] + suffix
        name = meta["name"]
        names.check_name(rt, name)
        if (namespace, name) in self.objects[rt.storage_key]:
            raise already_exists(rt.group, rt.plural, name)
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        for drop in ("resourceVersion", "deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(drop, None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_iso()
        meta["generation"] = 1
        obj = fieldrules.on_create(rt, obj)
        obj = self._prepare(rt, obj, None, dry_run=dry_run)
        return obj if dry_run else self._commit(rt, "ADDED", obj, None)

    def update(  # noqa: PLR0912 - one rule per branch, as the real update strategy
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        body: dict[str, Any],
        *,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> dict[str, Any]:
        """Replace an object (PUT, or the result of a PATCH), honouring the status subresource,
        optimistic concurrency, generation and finalizers. `dry_run`: the result, nothing stored."""
        old = self.get(rt, namespace, name)
        new = copy.deepcopy(body)
        meta = new.get("metadata")
        if not isinstance(meta, dict):
            raise ApiError(400, "metadata must be an object")
        if meta.get("name", name) != name:
            raise ApiError(
                400,
                f"the name of the object ({meta.get('name')}) does not match the name on the URL ({name})",
            )
        sent_rv = meta.get("resourceVersion")
        if sent_rv not in (None, "") and sent_rv != old["metadata"]["resourceVersion"]:
            raise conflict(rt.group, rt.plural, name)
        if subresource == "status":
            new = {**copy.deepcopy(old), "status": new.get("status")}
            if new["status"] is None:
                del new["status"]
        elif rt.has_status:
            new.pop("status", None)
            if "status" in old:
                new["status"] = copy.deepcopy(old["status"])
        meta = new["metadata"]
        for kept in (
            "uid",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "namespace",
            "name",
        ):
            if kept in old["metadata"]:
                meta[kept] = old["metadata"][kept]
            else:
                meta.pop(kept, None)
        new["apiVersion"], new["kind"] = rt.api_version, rt.kind
        fieldrules.check_finalizers(rt, old, new)
        meta["generation"] = old["metadata"].get("generation", 1)
        new = self._prepare(rt, new, old, dry_run=dry_run)
        meta = new["metadata"]
        meta["generation"] = fieldrules.generation(rt, old, new, subresource=subresource)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        if dry_run:
            return new
        if new == old:
            return old
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(rt, old)
        return self._commit(rt, "MODIFIED", new, old)

    def delete(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        *,
        grace_seconds: int | None = None,
        propagation: str | None = None,
        precondition_uid: str | None = None,
        precondition_rv: str | None = None,
    ) -> dict[str, Any]:
        """Delete: immediately, or mark with deletionTimestamp while finalizers remain or a scheduled
        pod terminates gracefully (its kubelet finishes the deletion)."""
        old = self.get(rt, namespace, name)
        meta = old["metadata"]
        if precondition_uid and precondition_uid != meta["uid"]:
            raise ApiError(
                409,
                f"Precondition failed: UID in precondition: {precondition_uid}, "
                f"UID in object meta: {meta['uid']}",
            )
        if precondition_rv and precondition_rv != meta["resourceVersion"]:
            raise conflict(rt.group, rt.plural, name)
        finalizers = list(meta.get("finalizers") or [])
        if (
            propagation == "Foreground"
            and self._dependents.get(meta["uid"])
            and "foregroundDeletion" not in finalizers
        ):
            finalizers.append("foregroundDeletion")
        if propagation == "Orphan" and "orphan" not in finalizers and self._dependents.get(meta["uid"]):
            finalizers.append("orphan")
        grace = self._grace(rt, old, grace_seconds)
        # A namespace is held by its spec.finalizers (`kubernetes`) until its objects are gone.
        if not finalizers and grace == 0 and rt.kind != "Namespace":
            return self._remove(rt, old)
        if meta.get("deletionTimestamp") and (grace != 0 or finalizers):
            current = meta.get("deletionGracePeriodSeconds")
            if current is None or current <= grace:
                return old
        new = copy.deepcopy(old)
        new["metadata"]["finalizers"] = finalizers
        new["metadata"]["generation"] = fieldrules.generation_on_delete(old)
        new["metadata"]["deletionTimestamp"] = now_iso()
        new["metadata"]["deletionGracePeriodSeconds"] = grace
        if rt.kind == "Namespace":
            new.setdefault("status", {})["phase"] = "Terminating"
        result = self._commit(rt, "MODIFIED", new, old)
        if "foregroundDeletion" in finalizers:
            self._delete_dependents(meta["uid"], "Foreground")
        if "orphan" in finalizers:
            self._orphan_dependents(meta["uid"])
        if rt.kind == "Namespace":
            self._empty_namespace(name)
        return result

    def _grace(self, rt: ResourceType, obj: dict[str, Any], requested: int | None) -> int:
        if rt.kind != "Pod":
            return 0
        spec, status = obj.get("spec") or {}, obj.get("status") or {}
        if not spec.get("nodeName") or status.get("phase") in {"Succeeded", "Failed"}:
            return 0
        if requested is not None:
            return max(0, int(requested))
        return int(spec.get("terminationGracePeriodSeconds", 30))

    # ------------------------------------------------------------------ internals
    def _require_namespace(self, namespace: str) -> None:
        ns = self.objects[("", "namespaces")].get(("", namespace))
        if ns is None:
            raise ApiError(
                404, f'namespaces "{namespace}" not found', details={"name": namespace, "kind": "namespaces"}
            )
        if ns["metadata"].get("deletionTimestamp"):
            raise ApiError(403, f"namespace {namespace} is being terminated", reason="Forbidden")

    def _prepare(
        self, rt: ResourceType, obj: dict[str, Any], old: dict[str, Any] | None, *, dry_run: bool = False
    ) -> dict[str, Any]:
        """Admission (`localcluster.admission`); a CRD also (re)registers the types it serves (not on
        a dry run)."""
        if rt.kind == "Pod":
            names.check_pod_paths(rt, obj)
        if old is None:
            for hook in self.create_hooks:
                obj = hook(rt, obj)
        obj = admission.admit(rt, obj, old, validation_rules=self.validation_rules)
        if rt.kind == "CustomResourceDefinition" and not dry_run:
            served = admission.crd_types(obj)
            obj["status"] = resources.crd_accepted_status(obj)
            if self.validation_rules:
                self._rule_warnings.warn(obj["metadata"].get("name", ""), served)
            self._unregister(old)
            for served_type in served:
                self.types[(served_type.group, served_type.version, served_type.plural)] = served_type
        return obj

    def _unregister(self, crd: dict[str, Any] | None) -> None:
        if crd is None:
            return
        spec = crd.get("spec") or {}
        plural, group = (spec.get("names") or {}).get("plural"), spec.get("group")
        for key in [k for k in self.types if k[0] == group and k[2] == plural]:
            del self.types[key]

    def _commit(
        self, rt: ResourceType, kind: str, obj: dict[str, Any], old: dict[str, Any] | None
    ) -> dict[str, Any]:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        meta = obj["metadata"]
        key = (meta.get("namespace", ""), meta["name"])
        if kind == "DELETED":
            self.objects[rt.storage_key].pop(key, None)
        else:
            self.objects[rt.storage_key][key] = obj
        self._index_owners(rt.storage_key, key, old, None if kind == "DELETED" else obj)
        event = WatchEvent(self.rv, kind, obj, old)
        self.events.append(rt.storage_key, event)
        for listener in self.listeners:
            listener(rt.storage_key, event)
        return obj

    def _index_owners(
        self, skey: StorageKey, okey: ObjectKey, old: dict[str, Any] | None, new: dict[str, Any] | None
    ) -> None:
        for source, add in ((old, False), (new, True)):
            for ref in (source or {}).get("metadata", {}).get("ownerReferences") or []:
                uid = ref.get("uid")
                if not uid:
                    continue
                if add:
                    self._dependents[uid].add((skey, okey))
                else:
                    self._dependents[uid].discard((skey, okey))
                    if not self._dependents[uid]:
                        del self._dependents[uid]

    def _remove(self, rt: ResourceType, old: dict[str, Any]) -> dict[str, Any]:
        gone = copy.deepcopy(old)
        result = self._commit(rt, "DELETED", gone, old)
        meta = old["metadata"]
        if rt.kind == "CustomResourceDefinition":
            self._drop_crd_objects(old)
        if rt.kind == "Node":
            self._delete_matching(
                "pods", lambda o: (o.get("spec") or {}).get("nodeName") == meta["name"], grace=0
            )
        self._delete_dependents(meta["uid"], "Background")
        self._finish_waiting_owners(meta)
        ns = meta.get("namespace")
        if ns:
            ns_obj = self.objects[("", "namespaces")].get(("", ns))
            if ns_obj is not None and ns_obj["metadata"].get("deletionTimestamp"):
                self._empty_namespace(ns)
        return result

    def _drop_crd_objects(self, crd: dict[str, Any]) -> None:
        spec = crd.get("spec") or {}
        skey = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        rt = self._type_for(skey)
        for obj in list(self.objects[skey].values()):
            if rt is not None:
                self._commit(rt, "DELETED", copy.deepcopy(obj), obj)
        self.objects.pop(skey, None)
        self._unregister(crd)

    def _type_for(self, skey: StorageKey) -> ResourceType | None:
        return next((t for t in self.types.values() if t.storage_key == skey), None)

    def _delete_dependents(self, owner_uid: str, propagation: str) -> None:
        for skey, (ns, name) in sorted(self._dependents.get(owner_uid, set())):
            rt = self._type_for(skey)
            obj = self.objects[skey].get((ns, name)) if rt else None
            if rt is None or obj is None:
                continue
            live_owners = [
                ref
                for ref in obj["metadata"].get("ownerReferences") or []
                if ref.get("uid") != owner_uid and self._uid_alive(ref)
            ]
            if live_owners:
                continue
            if not obj["metadata"].get("deletionTimestamp") or propagation == "Background":
                self.delete(rt, ns, name, propagation=propagation if propagation == "Foreground" else None)

    def _orphan_dependents(self, owner_uid: str) -> None:
        for skey, (ns, name) in sorted(self._dependents.get(owner_uid, set())):
            rt = self._type_for(skey)
            obj = self.objects[skey].get((ns, name)) if rt else None
            if rt is None or obj is None:
                continue
            new = copy.deepcopy(obj)
            new["metadata"]["ownerReferences"] = [
                r for r in obj["metadata"]["ownerReferences"] if r.get("uid") != owner_uid
            ]
            self._commit(rt, "MODIFIED", new, obj)
        self._strip_finalizer_for_uid(owner_uid, "orphan")

    def _uid_alive(self, ref: dict[str, Any]) -> bool:
        return any(
            obj["metadata"]["uid"] == ref.get("uid")
            for (skey, objs) in self.objects.items()
            if self._type_for(skey) is not None and self._type_for(skey).kind == ref.get("kind")  # type: ignore[union-attr]
            for obj in objs.values()
        )

    def _finish_waiting_owners(self, meta: dict[str, Any]) -> None:
        for ref in meta.get("ownerReferences") or []:
            uid = ref.get("uid")
            if uid and not self._dependents.get(uid):
                self._strip_finalizer_for_uid(uid, "foregroundDeletion")

    def _strip_finalizer_for_uid(self, uid: str, finalizer: str) -> None:
        for skey, objs in list(self.objects.items()):
            rt = self._type_for(skey)
            for obj in list(objs.values()):
                if (
                    rt is not None
                    and obj["metadata"]["uid"] == uid
                    and finalizer in (obj["metadata"].get("finalizers") or [])
                ):
                    body = copy.deepcopy(obj)
                    body["metadata"]["finalizers"] = [
                        f for f in obj["metadata"]["finalizers"] if f != finalizer
                    ]
                    self.update(rt, obj["metadata"].get("namespace", ""), obj["metadata"]["name"], body)
                    return

    def _empty_namespace(self, namespace: str) -> None:
        remaining = False
        for skey, objs in list(self.objects.items()):
            rt = self._type_for(skey)
            if rt is None or not rt.namespaced:
                continue
            for ns, name in list(objs):
                obj = objs.get((ns, name))  # a deletion above may have removed it already
                if ns != namespace or obj is None:
                    continue
                remaining = True
                if not obj["metadata"].get("deletionTimestamp"):
                    self.delete(rt, ns, name)
        if not remaining and not any(ns == namespace for objs in self.objects.values() for (ns, _) in objs):
            ns_rt = self.type_of("", "v1", "namespaces")
            ns_obj = self.objects[ns_rt.storage_key].get(("", namespace))
            if ns_obj is not None:
                self._commit(ns_rt, "DELETED", copy.deepcopy(ns_obj), ns_obj)

    def _delete_matching(
        self, plural: str, predicate: Callable[[dict[str, Any]], bool], *, grace: int | None
    ) -> None:
        rt = self.type_of("", "v1", plural)
        for (ns, name), obj in list(self.objects[rt.storage_key].items()):
            if predicate(obj):
                self.delete(rt, ns, name, grace_seconds=grace)

    # ------------------------------------------------------------------ watch
    def watch(
        self, rt: ResourceType, since: int | None, initial: Iterable[dict[str, Any]] = ()
    ) -> tuple[Watcher, builtins.list[WatchEvent]]:
        """Subscribe to a resource (`WatchLog.watch`)."""
        return self.events.watch(rt.storage_key, since, initial)

    def compact(self, rv: int) -> None:
        """Forget the watch history up to `rv` (`WatchLog.compact`)."""
        self.events.compact(rv)

    def unwatch(self, rt: ResourceType, watcher: Watcher) -> None:
        """Stop delivering events to a watcher."""
        self.events.unwatch(rt.storage_key, watcher)
