"""The watch event log: each resource's recent changes in commit order, etcd-like compaction (a
watch from a forgotten resourceVersion gets 410 Gone), and fan-out of new changes to watchers.

Owned by `localcluster.store.Store`, which appends one event per committed write; runs on the API
server's event loop like the store.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from localcluster.errors import ApiError

StorageKey = tuple[str, str]


@dataclass(slots=True)
class WatchEvent:
    """One change, kept in the per-resource log and fanned out to watchers."""

    rv: int
    """The resourceVersion this change produced."""
    type: str
    """ADDED, MODIFIED or DELETED."""
    obj: dict[str, Any]
    """The object after the change (for DELETED: its last state)."""
    old: dict[str, Any] | None
    """The object before the change (None for ADDED)."""
    wire: bytes | None = None
    """The encoded watch line, shared by every watcher that needs it unfiltered (set on first use)."""


WATCHER_BUFFER = 10_000
"""Events a watcher may fall behind by before the server ends its watch (as kube-apiserver's cacher
does with unresponsive watchers): memory stays bounded, and the client resumes from its last
resourceVersion out of the history, losing nothing."""


@dataclass(slots=True, eq=False)
class Watcher:
    """A subscriber to one resource's changes."""

    queue: asyncio.Queue[WatchEvent] = field(default_factory=lambda: asyncio.Queue(WATCHER_BUFFER))
    """Events in commit order, at most `WATCHER_BUFFER` undelivered."""
    overflowed: bool = False
    """Fell too far behind: no more events are queued, and the server ends the watch once the queue
    is drained."""


class WatchLog:
    """Per resource: the last `history_per_resource` events and the current watchers."""

    def __init__(self, *, history_per_resource: int) -> None:
        self.history: dict[StorageKey, collections.deque[WatchEvent]] = collections.defaultdict(
            lambda: collections.deque(maxlen=history_per_resource)
        )
        self.compacted: dict[StorageKey, int] = collections.defaultdict(int)
        """Per resource: the newest resourceVersion its full history dropped (log overflow)."""
        self.compacted_rv = 0
        """The newest resourceVersion forgotten by `compact` (all resources)."""
        self.watchers: dict[StorageKey, set[Watcher]] = collections.defaultdict(set)

    def append(self, skey: StorageKey, event: WatchEvent) -> None:
        """Log one committed change and deliver it to the resource's watchers."""
        history = self.history[skey]
        if history.maxlen is not None and len(history) == history.maxlen:
            self.compacted[skey] = history[0].rv
        history.append(event)
        watchers = self.watchers[skey]
        for watcher in list(watchers):
            try:
                watcher.queue.put_nowait(event)
            except asyncio.QueueFull:
                watcher.overflowed = True
                watchers.discard(watcher)

    def watch(
        self, skey: StorageKey, since: int | None, initial: Iterable[dict[str, Any]] = ()
    ) -> tuple[Watcher, list[WatchEvent]]:
        """Subscribe to a resource. `since`: replay logged events after it (410 if compacted);
        None: start with synthetic ADDED events for `initial`."""
        watcher = Watcher()
        backlog: list[WatchEvent]
        if since is None:
            backlog = [WatchEvent(int(o["metadata"]["resourceVersion"]), "ADDED", o, None) for o in initial]
        else:
            oldest = max(self.compacted[skey], self.compacted_rv)
            if since < oldest:
                raise ApiError(410, f"too old resource version: {since} ({oldest})", reason="Expired")
            backlog = [e for e in self.history[skey] if e.rv > since]
        self.watchers[skey].add(watcher)
        return watcher, backlog

    def compact(self, rv: int) -> None:
        """Forget the history up to `rv`, as etcd compaction does: watches from older
        resourceVersions then get 410 Gone."""
        self.compacted_rv = max(self.compacted_rv, rv)
        for history in self.history.values():
            while history and history[0].rv <= rv:
                history.popleft()

    def unwatch(self, skey: StorageKey, watcher: Watcher) -> None:
        """Stop delivering events to a watcher."""
        self.watchers[skey].discard(watcher)
