"""The training-loop side of Elastra: process group, restore, interval and requested checkpoints.

Side effects live here (process group, signals, the checkpointer, status files); the decisions they
follow are the pure functions in `config` and `elastra.data`.

Step numbers: `session.step(step, state)` is called after step `step` ran, so the checkpoint it may
take holds `step + 1` completed steps and carries that number; `restore()` returns it, which is the
next step to run.

Staging (when `step` returns relative to the copy of the state): eager by default, so the script may
mutate its state the moment `step` returns. `session.guard(optimizer)` opts in to lazy staging: `step`
then returns right after the save plan is agreed, the copy runs on the checkpoint thread and overlaps
the next forward and backward pass, and the guarded optimizer's `step()` first waits for the copy
(`fence()`). Once any optimizer is guarded, the session also fences before the `step()` of every other
optimizer in the process (a global step pre-hook), so an optimizer the script forgot cannot tear a
checkpoint. What the script must still do itself in lazy mode: call `session.fence()` before any
other in-place change of checkpointed tensors between `session.step` and the next optimizer step (an
EMA or clamp of the weights, a forward pass that updates buffers such as BatchNorm's running stats).
The session's own `Stateful` objects are safe: `RngState` returns a fresh copy of the generator
state and `ReshardableSampler` plain ints. The emergency (SIGTERM) and final saves are always eager
and wait for their commit, and `finish()` fences first, so no copy is running when the process exits.
The stall of a save: in the status (`saves`, the agent's stall histogram) the `step` call; in the
commit report, for a lazy save, that plus the wait of the first fence after it.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import pathlib
import signal
import socket
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable, Collection, Mapping
from types import TracebackType
from typing import Any

import torch
import torch.distributed as dist

from elastra.api.membership import EXIT_RESTART_CLEAN
from elastra.checkpoint.handles import RestartRequired
from elastra.control import (
    CONTROL_FILE,
    EXIT_PEER_LOST,
    EXIT_PEER_STOPPED,
    ControlMessage,
    FileReader,
    SaveRecord,
    WorkerStatus,
    status_file,
    write_atomic,
)
from elastra.session.config import SessionConfig, from_env, save_due
from elastra.session.fences import Fences, Stall
from elastra.session.restoring import Restore
from elastra.session.stateful import materialize

log = logging.getLogger("elastra.session")

EXIT_CRASHED = 1
"""Exit code of a worker whose training code raised."""
STATUS_INTERVAL_S = 0.5
"""Least time between two routine status writes; events (saves, commits) write at once."""
KEPT_SAVES = 16


PEER_FAILURE_MARKERS = (
    "gloo/transport",
    "Connection closed by peer",
    "Connection reset by peer",
    "Broken pipe",
    "NCCL",
    "TCPStore",
    "Socket Timeout",
)
"""Texts of the errors torch raises (as plain RuntimeError) when a peer of a collective is gone."""


def is_peer_failure(exc: BaseException) -> bool:
    """Whether `exc` means a peer of a collective died (the job must rescale), not a bug here. Pure."""
    if isinstance(exc, dist.DistError):
        return True
    return isinstance(exc, RuntimeError) and any(marker in str(exc) for marker in PEER_FAILURE_MARKERS)


def worker_exit_code(exc: BaseException) -> int:
    """How a worker killed by `exc` exits under an agent: a peer's failure (rescale), a state that only a
    fresh process can start over from (restart; never permanent), else a crash (user code). Pure."""
    if is_peer_failure(exc):
        return EXIT_PEER_LOST
    if isinstance(exc, RestartRequired):
        return EXIT_RESTART_CLEAN
    return EXIT_CRASHED


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Session:
    """One worker's view of an elastic job. Build it with `elastra.init()`."""

    def __init__(self, config: SessionConfig, *, backend: str | None = None) -> None:
        self.config = config
        self.rank = config.rank
        self.world_size = config.world_size
        self.local_rank = config.local_rank
        self.generation = config.generation or 0
        use_cuda = torch.cuda.is_available() and backend != "gloo"
        self.backend = backend or ("nccl" if use_cuda else "gloo")
        self.device = torch.device(f"cuda:{config.local_rank}" if self.backend == "nccl" else "cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self._timeline: dict[str, float] = {"init": time.time()}
        """Wall times of this worker's start (launched, init, group, restored), for one log line."""
        self.checkpointer: Any = None
        self._control = (
            FileReader(pathlib.Path(config.control_dir) / CONTROL_FILE, ControlMessage)
            if (config.control_dir)
            else None
        )
        self._lock = threading.Lock()
        self._terminate = threading.Event()
        self._agreed_request_time = 0.0
        self._last_save_time = time.monotonic()
        self._last_saved_step: int | None = None
        self._last_step_time: float | None = None
        self._last_loss: tuple[int, float | None] = (-1, None)
        """(steps completed, the loss `step` was given then): the final save carries it too."""
        self._status = WorkerStatus(rank=self.rank, generation=self.generation)
        self._saves: deque[SaveRecord] = deque(maxlen=KEPT_SAVES)
        self._steps_since_status = 0
        self._seconds_since_status = 0.0
        self._tokens_since_status = 0
        self._last_status_write = 0.0
        self._waiters: list[threading.Thread] = []
        self._fences: Fences | None = None
        """Lazy staging's hooks and pending stall; None without a checkpointer."""
        if config.under_agent:
            # Before the rendezvous: a peer that resets it (e.g. a member of the previous generation
            # still holding the store's port) is a peer failure (exit 75, the job rescales), not a
            # crash in user code (exit 1, which the operator takes for a permanent failure).
            self._install_worker_hooks()
        self._init_process_group()
        self._timeline["group"] = time.time()
        if config.checkpoint_uri:
            from elastra.checkpoint import Checkpointer

            # Under an agent the operator owns durable retention (Checkpoint objects and their
            # finalizers); the trainers prune only their node-local tier.
            self.checkpointer = Checkpointer(
                config.checkpoint_uri,
                local_dir=config.local_dir,
                keep=config.keep,
                local_keep=config.local_keep,
                prune_durable=not config.under_agent,
            )
            self._fences = Fences(self.checkpointer.fence, self.rank)
        self.restore_tier: str | None = None
        """Tier the newest `restore()` read from (`memory`, `local`, `durable`), None before one."""
        self.memory: Any = None
        """The in-memory snapshot tier (`elastra.checkpoint.memory`), when the pod has one."""
        if os.environ.get("ELASTRA_MEMORY_DIR"):
            from elastra.checkpoint.memory import from_env as memory_from_env

            self.memory = memory_from_env()

    # ------------------------------------------------------------------ setup
    def _init_process_group(self) -> None:
        if dist.is_initialized():
            return
        addr, port = self.config.master_addr, self.config.master_port
        if not addr or not port:
            addr, port = "127.0.0.1", _free_port()
        dist.init_process_group(
            backend=self.backend,
            init_method=f"tcp://{addr}:{port}",
            rank=self.rank,
            world_size=self.world_size,
            timeout=dt.timedelta(seconds=self.config.collective_timeout_s),
        )

    def _install_worker_hooks(self) -> None:
        """Under an agent: SIGTERM asks for an emergency checkpoint; an uncaught error exits now."""
        signal.signal(signal.SIGTERM, lambda *_: self._terminate.set())

        def excepthook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
            traceback.print_exception(kind, exc, tb)
            self._publish(failure=f"{kind.__name__}: {exc}", force=True)
            sys.stderr.flush()
            os._exit(worker_exit_code(exc))

        sys.excepthook = excepthook

    # ------------------------------------------------------------------ restore
    def restore(
        self,
        state: Mapping[str, Any],
        *,
        pretrained: str | None = None,
        prefix: str | None = None,
        key_map: Callable[[str], str | None] | None = None,
        allow_missing: bool | Collection[str] = False,
    ) -> int:
        """Load the checkpoint this generation restores into `state`; the next step to run.

        Under an agent, the step is the one the operator chose (`ELASTRA_RESTORE_STEP`), read from
        its step directory (`ELASTRA_RESTORE_URI`: in this job's root, or another job's for a fork
        with `restoreFrom`), 0 when it chose none; when that checkpoint is corrupt or gone, every rank
        falls back together to the next older committed one of the same root, and the status says
        which step was restored and why the newer ones were skipped. Run by hand, the newest
        committed checkpoint under the URI, if any. The world size may differ from the one that
        saved: every rank loads its own slice. The memory tier, when the pod has one, is tried first.

        With no checkpoint to restore, a job with pretrained weights (`pretrained`, else
        `ELASTRA_PRETRAINED_URI` from `restoreFrom`: a Hugging Face model location) starts from them:
        the weights under `prefix` (found when None; `key_map` renames) are filled, each rank reading
        its own slices, and the optimizer and the step start fresh (0). An optimizer handed here as is
        with no state yet gets its state created before a checkpoint restore fills it.
        `allow_missing`: state tensors the source may lack (True: any). Each restore prints one line:
        the step, the tier, the seconds, and what was skipped. The order of the tiers and the fresh
        start live in `restoring.Restore`.
        """
        restore = Restore(
            rank=self.rank, config=self.config, checkpointer=self.checkpointer, memory=self.memory,
            timeline=self._timeline, publish=self._publish,
        )  # fmt: skip
        loaded, tier = restore.run(
            state, pretrained or self.config.pretrained_uri, prefix, key_map, allow_missing
        )
        if tier not in (None, "pretrained"):  # a checkpoint or snapshot: the step it holds was saved
            self.restore_tier = tier
            self._last_saved_step = loaded
        return loaded

    # ------------------------------------------------------------------ lazy staging
    @property
    def staging(self) -> str:
        """How interval and requested saves stage: `"lazy"` once an optimizer is guarded, else `"eager"`."""
        return "lazy" if self._fences is not None and self._fences.lazy else "eager"

    def guard(self, *optimizers: torch.optim.Optimizer) -> None:
        """Opt in to lazy staging: each optimizer's `step()` first waits for the copy of the newest save.

        Guard every optimizer whose state or parameters are in the checkpoint (any other one is fenced
        by a global hook, with a warning). In-place changes of checkpointed tensors outside
        `optimizer.step()` need `fence()` first (see the module docstring). A no-op without a
        checkpoint URI."""
        if self._fences is not None:
            self._fences.guard(optimizers)

    def fence(self) -> None:
        """Wait until the newest save has copied the state; after this the state may be mutated.

        Cheap when nothing is being copied (always, with eager staging)."""
        if self._fences is not None:
            self._fences.fence()

    # ------------------------------------------------------------------ per step
    def step(
        self, step: int, state: Mapping[str, Any], *, loss: float | None = None, tokens: int = 0
    ) -> bool:
        """Step `step` ran: save on the interval, on a request, or on SIGTERM. True when it saved.

        Interval and requested saves stage lazily once an optimizer is guarded (`guard`), else
        eagerly; the SIGTERM save is eager and waits for its commit, then the process exits.

        Cheap otherwise: a stat of the control file and, every `agree_every` steps, one all-reduce of
        two numbers so that every rank takes a requested checkpoint at the same step.
        """
        now = time.monotonic()
        if self._timeline:
            self._log_start()
        if self._last_step_time is not None:
            self._seconds_since_status += now - self._last_step_time
            self._steps_since_status += 1
            self._tokens_since_status += tokens
        self._last_step_time = now
        completed = step + 1
        self._last_loss = (completed, loss)
        by_steps = save_due(
            completed=completed, every_steps=self.config.every_steps, every_seconds=None, seconds_since_save=0
        )
        by_time = save_due(
            completed=completed,
            every_steps=None,
            every_seconds=self.config.every_seconds,
            seconds_since_save=now - self._last_save_time,
        )
        # Clocks differ between ranks: a time-based save is agreed on like a request.
        request_time, stop, by_time = self._agree(completed, by_time)
        requested = request_time > self._agreed_request_time
        due = self.checkpointer is not None and (by_steps or by_time)
        saved = False
        if self.checkpointer is not None and (due or requested or stop):
            ack = self._current_request_id() if requested else None
            self._save(completed, state, ack_request=ack, wait=stop, loss=loss)
            saved = True
        if requested:
            self._agreed_request_time = request_time
        memory = self.memory.step(completed, lambda: materialize(state)) if self.memory else {}
        self._publish(step=completed, loss=loss, force=saved, **memory)
        self._last_step_time = time.monotonic()  # do not count the save in the next step time
        if stop:
            asked_here = self._stop_asked_here()
            log.warning(
                "rank %d: %s; emergency checkpoint at step %d taken",
                self.rank,
                "stop requested" if asked_here else "a peer is stopping",
                completed,
            )
            self.finish()
            sys.exit(0 if asked_here else EXIT_PEER_STOPPED)
        return saved

    def _log_start(self) -> None:
        """Once, after the first step: where this worker's start went (docs/benchmarks.md, Recovery)."""
        t, self._timeline = self._timeline, {}
        if self.config.launched_at is None:
            return
        now = time.time()
        init, group = t["init"], t["group"]
        restored = t.get("restored", group)
        restoring = t.get("restoring", restored)
        stamp = dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
        print(
            f"{stamp} elastra-session INFO rank {self.rank} generation {self.generation} start: "
            f"launch+imports {init - self.config.launched_at:.2f}s, process group {group - init:.2f}s, "
            f"model {restoring - group:.2f}s, restore {restored - restoring:.2f}s, "
            f"first step {now - restored:.2f}s",
            file=sys.stderr,
            flush=True,
        )

    def _stop_asked_here(self) -> bool:
        """This worker itself was told to stop (SIGTERM or its agent), not only one of its peers."""
        message = self._control.poll() if self._control else None
        return self._terminate.is_set() or bool(message and message.stop) or self._control is None

    def _current_request_id(self) -> str | None:
        message = self._control.poll() if self._control else None
        return message.request_id if message else None

    def _agree(self, completed: int, time_due: bool) -> tuple[float, bool, bool]:
        """Agreed by all ranks: the newest checkpoint request seen, whether to stop, whether a
        time-based save is due. Steps between agreements (`agree_every`) take neither."""
        message = self._control.poll() if self._control else None
        request_time = message.request_time if message else 0.0
        stop = self._terminate.is_set() or bool(message and message.stop)
        if self.world_size == 1:
            return request_time, stop, time_due
        if completed % self.config.agree_every != 0:  # every rank skips the same steps
            return 0.0, False, False
        flags = torch.tensor(
            [request_time * 1000.0, 1.0 if stop else 0.0, 1.0 if time_due else 0.0], dtype=torch.float64
        )
        if self.backend == "nccl":
            flags = flags.to(self.device)
        try:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)
            flags = flags.cpu()  # NCCL is asynchronous: its error (blocking wait) surfaces at this sync
        except Exception as exc:  # gloo/nccl raise several types when a peer is gone
            self._peer_lost(exc)
        return float(flags[0]) / 1000.0, bool(flags[1] > 0), bool(flags[2] > 0)

    def _peer_lost(self, exc: BaseException) -> None:
        message = f"collective failed (a peer is gone?): {type(exc).__name__}: {exc}"
        log.error("rank %d: %s", self.rank, message)
        self._publish(failure=message, force=True)
        sys.stderr.flush()
        os._exit(EXIT_PEER_LOST)

    # ------------------------------------------------------------------ saving
    def _save(
        self,
        completed: int,
        state: Mapping[str, Any],
        *,
        ack_request: str | None,
        wait: bool,
        loss: float | None = None,
    ) -> None:
        """Save after `completed` steps; `wait`: stage eagerly and block until the commit (the emergency
        and final saves, after which the process exits)."""
        self.fence()  # the previous lazy save's stall is final before this one starts
        staging = "eager" if wait else self.staging
        started = time.monotonic()
        handle = self.checkpointer.save(completed, materialize(state), staging=staging)
        self._last_save_time = time.monotonic()
        # The state dicts (FSDP gathers metadata) count too.
        stall = Stall(seconds=self._last_save_time - started)
        self._last_saved_step = completed
        record = SaveRecord(
            step=completed, stall_seconds=stall.seconds, skipped="skip" if handle.skipped else None
        )
        with self._lock:
            self._saves.append(record)
            if ack_request is not None:
                self._status = self._status.model_copy(update={"ack_request": ack_request})
        if staging == "lazy" and not handle.skipped and self._fences is not None:
            self._fences.copying(stall)  # settled by the next fence
        else:
            stall.settled.set()
        if wait:
            self._await_commit(handle, ack_request, stall, loss)
            self._publish(emergency_step=completed, force=True)
            return
        waiter = threading.Thread(
            target=self._await_commit,
            args=(handle, ack_request, stall, loss),
            name=f"elastra-commit-{completed}",
            daemon=True,
        )
        waiter.start()
        self._waiters = [t for t in self._waiters if t.is_alive()] + [waiter]

    def _await_commit(
        self, handle: Any, ack_request: str | None, stall: Stall, loss: float | None = None
    ) -> None:
        """Wait for one save to commit; on global rank 0, publish its commit report (once its stall
        is final: a lazy save's first fence comes from the training thread)."""
        try:
            info = handle.wait()
        except Exception as exc:
            log.error("rank %d: checkpoint %d did not commit: %s", self.rank, handle.step, exc)
            return
        if info is None or self.rank != 0:
            self._publish(force=True)
            return
        from elastra.api.membership import CommitReport

        stall.settled.wait()
        report = CommitReport(
            step=info.step,
            uri=info.uri,
            tiers=info.tiers,
            bytes=info.bytes,
            manifest_digest=info.manifest_digest,
            world_size=info.world_size,
            format_version=info.format_version,
            generation=self.generation,
            stall_seconds=stall.seconds,
            commit_seconds=info.commit_seconds,
            request_id=ack_request,
            loss=loss if loss is not None and math.isfinite(loss) else None,
            time=dt.datetime.now(dt.UTC),
        )
        self._publish(last_commit=report.model_dump(mode="json", by_alias=True), force=True)

    # ------------------------------------------------------------------ status
    def _publish(self, *, force: bool = False, **update: Any) -> None:
        """Fold `update` into this worker's status; write it when due (or `force`)."""
        if self.config.control_dir is None:
            return
        now = time.monotonic()
        with self._lock:
            if self._steps_since_status:
                update["step_seconds"] = self._seconds_since_status / self._steps_since_status
                if self._seconds_since_status > 0 and self._tokens_since_status:
                    update["tokens_per_second"] = self._tokens_since_status / self._seconds_since_status
            if "step" in update and update["step"] is not None:
                update["steps_total"] = self._status.steps_total + self._steps_since_status
                self._steps_since_status = 0
                self._seconds_since_status = 0.0
                self._tokens_since_status = 0
            if self.checkpointer is not None:
                stats = self.checkpointer.stats
                update["bytes_by_tier"] = dict(stats.bytes_by_tier)
                update["skipped_by_policy"] = {"skip": stats.skipped, "wait": stats.waited}
            update = {k: v for k, v in update.items() if v is not None}
            self._status = self._status.model_copy(update={**update, "saves": tuple(self._saves)})
            if not force and now - self._last_status_write < STATUS_INTERVAL_S:
                return
            self._last_status_write = now
            status = self._status
        write_atomic(pathlib.Path(self.config.control_dir) / status_file(self.rank), status)

    # ------------------------------------------------------------------ end
    def finish(self, state: Mapping[str, Any] | None = None, *, step: int | None = None) -> None:
        """Optionally save a final checkpoint, wait for every save to commit, leave the group."""
        self.fence()
        final = state is not None and step is not None and self._last_saved_step != step + 1
        if final and self.checkpointer is not None and state is not None and step is not None:
            loss = self._last_loss[1] if self._last_loss[0] == step + 1 else None
            self._save(step + 1, state, ack_request=None, wait=True, loss=loss)
        if self._fences is not None:
            self._fences.remove()
        if self.memory is not None:
            self.memory.close()
        if self.checkpointer is not None:
            try:
                self.checkpointer.wait()
            finally:
                self.checkpointer.close()
        for waiter in self._waiters:
            waiter.join()
        self._publish(force=True)
        if dist.is_initialized():
            dist.destroy_process_group()


def init(
    *,
    checkpoint_uri: str | None = None,
    local_dir: str | None = None,
    every_steps: int | None = None,
    every_seconds: float | None = None,
    keep: int | None = None,
    backend: str | None = None,
) -> Session:
    """The session of this worker: process group from the agent's env, checkpointer from the job's.

    Keyword arguments override the environment (for running a script by hand).
    """
    config = from_env(
        os.environ,
        checkpoint_uri=checkpoint_uri,
        local_dir=local_dir,
        every_steps=every_steps,
        every_seconds=every_seconds,
        keep=keep,
    )
    return Session(config, backend=backend)
