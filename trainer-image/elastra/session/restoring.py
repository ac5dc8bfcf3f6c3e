"""A session's restore, one generation's worth: the memory tier first, then the checkpoint the
operator chose (falling back to older ones), then a fresh start from pretrained weights or from
nothing. Side effects: it reads into the caller's state in place and publishes what it restored to the
agent (the status file); `Session.restore` is its only caller."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from elastra.api.membership import RestoreSkip
from elastra.checkpoint.handles import RestartRequired
from elastra.session.config import SessionConfig
from elastra.session.starting import (
    announce,
    forget_fresh_optimizers,
    has_checkpoint,
    init_fresh_optimizers,
    load_pretrained_into,
)
from elastra.session.stateful import Stateful, materialize

REASON_CHARS = 512
"""A skipped checkpoint's reason is cut to this many characters in the status (it travels to the
operator in a pod annotation)."""
REPORTED_SKIPS = 16
"""At most this many skipped checkpoints (the newest) are reported."""


@dataclass(kw_only=True, slots=True)
class Restore:
    """What one restore reads from and reports to (the session's own objects)."""

    rank: int
    """This process's global rank (for its one announcement line)."""
    config: SessionConfig
    """The session's configuration: the restore step and URI, whether an agent runs it."""
    checkpointer: Any
    """The session's `Checkpointer`, or None without a checkpoint URI."""
    memory: Any
    """The session's memory-tier snapshotter, or None when the pod has no memory tier."""
    timeline: dict[str, float]
    """The session's timeline (`restoring`/`restored` wall times are set here)."""
    publish: Callable[..., None]
    """The session's status update (`Session._publish`)."""

    def run(
        self, state: Mapping[str, Any], pretrained: str | None, prefix: str | None,
        key_map: Callable[[str], str | None] | None, allow_missing: bool | Collection[str],
    ) -> tuple[int, str | None]:  # fmt: skip
        """(the next step to run, the tier it came from: `memory`, `local`, `durable`, `pretrained`, or
        None for a fresh start from nothing)."""
        step = self.config.restore_step
        started = time.monotonic()
        tier: str | None = None
        created: list[str] = []  # optimizers whose state was created for a restore to fill
        loaded, flat = self._restore_from_memory(state, step, created)
        if loaded is not None:
            tier = "memory"
        else:
            fresh_job = step is None and (
                self.config.under_agent or not has_checkpoint(self.checkpointer, self.config.restore_uri)
            )
            if self.checkpointer is None or fresh_job:
                self._refuse_fresh_start_on_dirtied_state()
                forget_fresh_optimizers(state, created)
                return self._start_from_pretrained(state, pretrained, prefix, key_map, allow_missing)
            if self.timeline:
                self.timeline["restoring"] = time.time()
            if flat is None:
                created += init_fresh_optimizers(state)
                flat = materialize(state)
            assert self.checkpointer is not None
            try:
                # step None: the newest committed one
                loaded = self.checkpointer.load(
                    flat, step=step, source=self.config.restore_uri, fallback=self.config.under_agent,
                    allow_missing=allow_missing,
                )  # fmt: skip
            finally:
                self._publish_restore()
        if loaded is None:
            self._refuse_fresh_start_on_dirtied_state()
            forget_fresh_optimizers(state, created)
            return self._start_from_pretrained(state, pretrained, prefix, key_map, allow_missing)
        assert flat is not None  # something was loaded into it
        for key, value in state.items():
            if isinstance(value, Stateful):
                value.load_state_dict(flat[key])
        seconds = time.monotonic() - started
        self.timeline["restored"] = time.time()
        if tier is None and self.checkpointer is not None:
            by_tier = self.checkpointer.stats.restore_bytes_by_tier
            tier = max(by_tier, key=lambda t: by_tier[t]) if any(by_tier.values()) else "durable"
        self.publish(step=int(loaded), restore_seconds=seconds, restore_tier=str(tier), force=True)
        report = self.checkpointer.last_report if tier != "memory" and self.checkpointer is not None else None
        if report is not None:
            announce(self.rank, report.summary())
        else:
            announce(self.rank, f"restored step {loaded} from {tier} in {seconds:.2f}s")
        return int(loaded), str(tier)

    def _refuse_fresh_start_on_dirtied_state(self) -> None:
        """A memory snapshot that failed mid-read may have overwritten part of the state in place, and
        with no checkpoint to overwrite it again a fresh start would train on that mix: raise instead.
        The failed restore already dropped the pod's snapshots, so the restarted worker starts clean."""
        if self.memory is not None and self.memory.restore_dirtied:
            raise RestartRequired(
                "a memory snapshot failed while being read into the state, and there is no checkpoint "
                "to restore instead: refusing to start fresh on partly overwritten tensors (the "
                "snapshots were dropped: a restarted worker starts clean)"
            )

    def _restore_from_memory(
        self, state: Mapping[str, Any], step: int | None, created: list[str]
    ) -> tuple[int | None, dict[str, Any] | None]:
        """The memory tier first, when the pod has one and its newest snapshot every rank can read is at
        least as new as `step`: (the step loaded or None, the materialized state or None). The keys of
        optimizers whose state it created are added to `created`."""
        if self.memory is None:
            return None, None
        if self.timeline:
            self.timeline["restoring"] = time.time()
        created += init_fresh_optimizers(state)
        flat = materialize(state)
        loaded = self.memory.restore(flat, not_before=step or 0)
        if loaded is None:
            self.timeline.pop("restoring", None)  # nothing was restored from memory
        else:
            self.publish(restored_step=loaded, force=True)
        return loaded, flat

    def _start_from_pretrained(
        self, state: Mapping[str, Any], uri: str | None, prefix: str | None,
        key_map: Callable[[str], str | None] | None, allow_missing: bool | Collection[str],
    ) -> tuple[int, str | None]:  # fmt: skip
        """A fresh start: from the pretrained weights at `uri` when there are some; step 0 either way."""
        if uri is None:
            announce(self.rank, "starting fresh at step 0: no checkpoint to restore, no pretrained weights")
            return 0, None
        started = time.monotonic()
        if self.timeline:
            self.timeline["restoring"] = time.time()
        flat = materialize(state)
        report = load_pretrained_into(flat, uri, prefix=prefix, key_map=key_map, allow_missing=allow_missing)
        for key, value in state.items():
            if isinstance(value, Stateful):
                value.load_state_dict(flat[key])
        self.timeline["restored"] = time.time()
        seconds = time.monotonic() - started
        self.publish(restore_seconds=seconds, restore_tier="pretrained", force=True)
        announce(self.rank, report.summary())
        return 0, "pretrained"

    def _publish_restore(self) -> None:
        """Tell the agent which step the restore actually loaded and which newer ones it skipped."""
        result = self.checkpointer.last_restore if self.checkpointer is not None else None
        if result is None:
            return
        skipped = tuple(
            RestoreSkip(step=s.step, reason=s.reason[:REASON_CHARS]) for s in result.skipped[:REPORTED_SKIPS]
        )
        self.publish(restored_step=result.step, restore_skipped=skipped, force=True)
