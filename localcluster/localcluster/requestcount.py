"""API requests counted by client (the `User-Agent` product, e.g. `kopf`, `OpenAPI-Generator`) and verb,
served at `/localcluster/v1/requests` so a benchmark can say how many requests one operation cost. A watch
counts once, when it is opened."""

from __future__ import annotations

import collections
from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class RequestCounter:
    """Counts every request that reaches the API server."""

    def __init__(self) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        client = request.headers.get("User-Agent", "").split("/", 1)[0].strip() or "unknown"
        verb = "WATCH" if request.query.get("watch") in {"true", "1"} else request.method
        if not request.path.startswith("/localcluster/"):
            self.counts[(client, verb)] += 1
        return await handler(request)

    def snapshot(self) -> dict[str, dict[str, int]]:
        """client -> verb -> requests so far."""
        out: dict[str, dict[str, int]] = {}
        for (client, verb), count in sorted(self.counts.items()):
            out.setdefault(client, {})[verb] = count
        return out
