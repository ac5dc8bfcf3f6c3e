"""How a pod's containers run as local processes: argv, env (with downward-API fieldRefs and
`$(VAR)` expansion), working dir and volume folders. Pure: lookups of ConfigMaps and Secrets are
passed in.

There are no mount namespaces, so a volume's `mountPath` cannot exist as such. Instead every string the
process gets (argv, env values, workingDir) that names a path under a mountPath is rewritten to the
volume's folder on this machine: `/data/ckpt` with a hostPath volume mounted at `/data` becomes
`<workdir>/nodes/<node>/hostpath/<hostPath>/ckpt`.
"""

from __future__ import annotations

import base64
import pathlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from localcluster.selectors import field_value

Lookup = Callable[[str, str, str], dict[str, Any] | None]
"""(plural, namespace, name) -> the ConfigMap or Secret object, if it exists."""

_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)|\$\$")


class PodSpecError(ValueError):
    """A pod that cannot be started as written (e.g. a missing ConfigMap key): reported in its status."""


@dataclass(frozen=True, slots=True)
class Launch:
    """Everything needed to start one container process."""

    name: str
    """Container name."""
    argv: tuple[str, ...]
    """command + args, after `$(VAR)` expansion and path rewriting."""
    env: dict[str, str]
    """The container's own variables (the kubelet adds them over its base environment)."""
    cwd: str | None
    """workingDir, rewritten; None: the kubelet's default."""


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes `$(VAR)` expansion: unknown references stay as written, `$$` is a literal `$`."""
    return _VAR_REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), text)


def inside(folder: pathlib.Path, relative: str) -> pathlib.Path:
    """`folder / relative`, refused (PodSpecError) when it would resolve outside `folder`. The API
    server already refuses `..` in these paths; this is the kubelet's own guard."""
    target = (folder / relative).resolve()
    if not target.is_relative_to(folder.resolve()):
        raise PodSpecError(f"path {relative!r} leaves its volume")
    return target


def volume_folders(
    pod: dict[str, Any], *, node_dir: pathlib.Path, pod_dir: pathlib.Path
) -> dict[str, pathlib.Path]:
    """Volume name -> folder on this machine (hostPath per node, everything else per pod)."""
    folders = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        name = volume["name"]
        if "hostPath" in volume:
            folders[name] = inside(node_dir / "hostpath", volume["hostPath"]["path"].lstrip("/"))
        else:
            folders[name] = pod_dir / "volumes" / name
    return folders


def volume_files(pod: dict[str, Any], lookup: Lookup) -> dict[str, dict[str, bytes]]:
    """Files that configMap and secret volumes hold: volume name -> {relative path: content}."""
    namespace = pod["metadata"].get("namespace", "default")
    out: dict[str, dict[str, bytes]] = {}
    for volume in (pod.get("spec") or {}).get("volumes") or []:
        for kind, plural, ref_key in (
            ("configMap", "configmaps", "name"),
            ("secret", "secrets", "secretName"),
        ):
            source = volume.get(kind)
            if source is None:
                continue
            obj = lookup(plural, namespace, source.get(ref_key, ""))
            if obj is None:
                if source.get("optional"):
                    out[volume["name"]] = {}
                    continue
                raise PodSpecError(f'{kind} "{source.get(ref_key)}" not found')
            data = _decoded(obj, secret=kind == "secret")
            items = source.get("items")
            files = {i["path"]: data[i["key"]] for i in items if i["key"] in data} if items else dict(data)
            out[volume["name"]] = files
    return out


def _decoded(obj: dict[str, Any], *, secret: bool) -> dict[str, bytes]:
    data: dict[str, bytes] = {}
    for key, value in (obj.get("data") or {}).items():
        data[key] = base64.b64decode(value) if secret else str(value).encode()
    for key, value in (obj.get("binaryData") or {}).items():
        data[key] = base64.b64decode(value)
    for key, value in (obj.get("stringData") or {}).items():
        data[key] = str(value).encode()
    return data


def _path_rewriter(mounts: list[tuple[str, pathlib.Path]]) -> Callable[[str], str]:
    ordered = sorted(mounts, key=lambda m: len(m[0]), reverse=True)
    patterns = [
        (re.compile(r"(?<![\w/.-])" + re.escape(mp.rstrip("/")) + r"(?=/|$|[^\w.-])"), str(host))
        for mp, host in ordered
        if mp.rstrip("/")
    ]

    def rewrite(text: str) -> str:
        for pattern, host in patterns:
            text, count = pattern.subn(lambda _m, h=host: h, text)  # type: ignore[misc]
            if count:
                break
        return text

    return rewrite


def _env_value(spec: dict[str, Any], pod: dict[str, Any], lookup: Lookup, env: dict[str, str]) -> str | None:
    if "value" in spec:
        return expand(str(spec["value"]), env)
    source = spec.get("valueFrom") or {}
    namespace = pod["metadata"].get("namespace", "default")
    if "fieldRef" in source:
        path = source["fieldRef"]["fieldPath"]
        label = re.fullmatch(r"metadata\.(labels|annotations)\['([^']+)'\]", path)
        if label:
            return str((pod["metadata"].get(label.group(1)) or {}).get(label.group(2), ""))
        return field_value(pod, path)
    for kind, plural in (("configMapKeyRef", "configmaps"), ("secretKeyRef", "secrets")):
        ref = source.get(kind)
        if ref is None:
            continue
        obj = lookup(plural, namespace, ref.get("name", ""))
        data = _decoded(obj, secret=plural == "secrets") if obj else None
        if data is None or ref["key"] not in data:
            if ref.get("optional"):
                return None
            raise PodSpecError(
                f"{kind} {ref.get('name')}/{ref.get('key')} not found for env {spec.get('name')}"
            )
        return data[ref["key"]].decode()
    if "resourceFieldRef" in source:
        return ""
    raise PodSpecError(f"unsupported env source for {spec.get('name')}: {sorted(source)}")


def plan_container(
    container: dict[str, Any], pod: dict[str, Any], *, folders: dict[str, pathlib.Path], lookup: Lookup
) -> Launch:
    """The process to start for one container of a pod (pod must already carry its podIP)."""
    namespace = pod["metadata"].get("namespace", "default")
    mounts = []
    for mount in container.get("volumeMounts") or []:
        if mount["name"] not in folders:
            raise PodSpecError(
                f"volumeMount {mount['name']} of container {container['name']} names no volume"
            )
        folder = folders[mount["name"]]
        host = inside(folder, mount["subPath"]) if mount.get("subPath") else folder
        mounts.append((mount["mountPath"], host))
    rewrite = _path_rewriter(mounts)
    env: dict[str, str] = {}
    for source in container.get("envFrom") or []:
        for kind, plural in (("configMapRef", "configmaps"), ("secretRef", "secrets")):
            ref = source.get(kind)
            if ref is None:
                continue
            obj = lookup(plural, namespace, ref.get("name", ""))
            if obj is None and not ref.get("optional"):
                raise PodSpecError(f"{kind} {ref.get('name')} not found")
            for key, raw in (_decoded(obj, secret=plural == "secrets") if obj else {}).items():
                env[source.get("prefix", "") + key] = raw.decode()
    for spec in container.get("env") or []:
        value = _env_value(spec, pod, lookup, env)
        if value is not None:
            env[spec["name"]] = rewrite(value)
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    if not argv:
        raise PodSpecError(
            f"container {container['name']}: the image is ignored here, so command is required"
        )
    argv = [rewrite(expand(str(a), env)) for a in argv]
    cwd = rewrite(container["workingDir"]) if container.get("workingDir") else None
    return Launch(container["name"], tuple(argv), env, cwd)


def exit_code(returncode: int) -> int:
    """A process's exit status as Kubernetes reports it (killed by signal N: 128 + N)."""
    return 128 - returncode if returncode < 0 else returncode
