"""`GET .../pods/NAME/log`: a container's output from the file its kubelet writes, whole, the last
`tailLines`, or followed until the container stops running."""

from __future__ import annotations

import asyncio
import pathlib
from collections.abc import Callable

from aiohttp import web

from localcluster.errors import ApiError
from localcluster.store import Store

LogPathFn = Callable[[str, str, str, bool], pathlib.Path | None]
"""(namespace, pod, container, previous) -> the log file of that container run, if any."""
FOLLOW_POLL_S = 0.2


def truthy(value: str | None) -> bool:
    """Query flags: Go clients send `true`, the Python client `True`."""
    return value is not None and value.lower() in {"true", "1"}


async def serve(
    request: web.Request, store: Store, namespace: str, name: str, log_path: LogPathFn | None
) -> web.StreamResponse:
    """The pod log response for `request` (query: container, previous, tailLines, follow)."""
    pods = store.type_of("", "v1", "pods")
    pod = store.get(pods, namespace, name)
    containers = [c["name"] for c in (pod.get("spec") or {}).get("containers") or []]
    container = request.query.get("container") or (containers[0] if containers else "")
    if container not in containers:
        raise ApiError(400, f"container {container} is not valid for pod {name}")
    previous = truthy(request.query.get("previous"))
    path = log_path(namespace, name, container, previous) if log_path else None
    if path is None or not path.exists():
        raise ApiError(
            400,
            f'container "{container}" in pod "{name}" is waiting to start: ContainerCreating',
            reason="BadRequest",
        )
    whole = path.read_bytes()
    offset = len(whole)  # following resumes right after what was read, losing nothing written since
    data = whole
    tail = request.query.get("tailLines")
    if tail is not None:
        try:
            count = int(tail)
        except ValueError as exc:
            raise ApiError(400, f"tailLines must be an integer, got {tail!r}") from exc
        data = b"".join(whole.splitlines(keepends=True)[-count:]) if count > 0 else b""
    if not truthy(request.query.get("follow")):
        return web.Response(body=data, content_type="text/plain")
    response = web.StreamResponse(headers={"Content-Type": "text/plain"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    await response.write(data)
    while True:
        await asyncio.sleep(FOLLOW_POLL_S)
        size = path.stat().st_size if path.exists() else offset
        if size > offset:
            with path.open("rb") as f:
                f.seek(offset)
                await response.write(f.read(size - offset))
            offset = size
        elif not _container_running(store, namespace, name, container):
            break
    await response.write_eof()
    return response


def _container_running(store: Store, namespace: str, pod_name: str, container: str) -> bool:
    try:
        pod = store.get(store.type_of("", "v1", "pods"), namespace, pod_name)
    except ApiError:
        return False
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return "running" in (cs.get("state") or {})
    return False
