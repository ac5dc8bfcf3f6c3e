"""The watch log's fan-out: a watcher that falls too far behind is cut off, nobody else is."""

from __future__ import annotations

import pytest

from localcluster import watchlog
from localcluster.watchlog import WatchEvent, WatchLog

KEY = ("", "configmaps")


def _event(rv: int) -> WatchEvent:
    return WatchEvent(rv, "ADDED", {"metadata": {"name": f"cm-{rv}", "resourceVersion": str(rv)}}, None)


@pytest.mark.parametrize(
    ("writes", "buffer", "cut_off"),
    [
        pytest.param(3, 3, False, id="exactly-full-buffer-is-kept"),
        pytest.param(4, 3, True, id="one-past-the-buffer-is-cut-off"),
        pytest.param(0, 1, False, id="idle-watcher-is-kept"),
    ],
)
def test_slow_watcher_is_cut_off_without_losing_history(
    monkeypatch: pytest.MonkeyPatch, writes: int, buffer: int, cut_off: bool
) -> None:
    monkeypatch.setattr(watchlog, "WATCHER_BUFFER", buffer)
    log = WatchLog(history_per_resource=100)
    slow, _ = log.watch(KEY, since=0)
    for rv in range(1, writes + 1):
        log.append(KEY, _event(rv))
    assert slow.overflowed is cut_off
    assert (slow in log.watchers[KEY]) is not cut_off
    delivered = [slow.queue.get_nowait().rv for _ in range(slow.queue.qsize())]
    assert delivered == list(range(1, min(writes, buffer) + 1)), "what was queued stays in commit order"
    # Resuming from the last delivered resourceVersion replays the rest from the history.
    last = delivered[-1] if delivered else 0
    _, backlog = log.watch(KEY, since=last)
    assert [e.rv for e in backlog] == list(range(last + 1, writes + 1))


def test_a_slow_watcher_does_not_affect_a_fast_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watchlog, "WATCHER_BUFFER", 2)
    log = WatchLog(history_per_resource=100)
    slow, _ = log.watch(KEY, since=0)
    fast, _ = log.watch(KEY, since=0)
    for rv in range(1, 6):
        log.append(KEY, _event(rv))
        fast.queue.get_nowait()  # keeps up
    assert slow.overflowed and not fast.overflowed
    assert log.watchers[KEY] == {fast}
