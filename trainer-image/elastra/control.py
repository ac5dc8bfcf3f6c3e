"""Inside the pod: how the pod agent and its workers talk (docs/protocol.md, "Inside the pod").

Small JSON files in `ELASTRA_CONTROL_DIR`, each replaced atomically (write a temporary file, then
`os.replace`), so a reader never sees half a file:

- `control.json`, written by the agent: the generation, the newest checkpoint request, and whether
  to stop (with an emergency checkpoint) now.
- `status-<rank>.json`, written by each worker: step, loss, timings, checkpoints and the newest
  commit (on global rank 0).

Also the worker exit codes both sides read the same way (`EXIT_PEER_LOST`, `EXIT_PEER_STOPPED`).

Reading is cheap when nothing changed: `ControlReader.poll()` is one `os.stat` and parses only when
the file's identity (inode, size, mtime) moved. Shared by `elastra.session` and `elastra.agent`;
no torch here.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from elastra.api.membership import RestoreSkip

CONTROL_FILE = "control.json"
"""Name of the agent's file in the control directory."""
EXIT_PEER_LOST = 75
"""Worker exit code: a collective failed because a peer is gone (the job must rescale; never a
permanent failure)."""
EXIT_PEER_STOPPED = 76
"""Worker exit code: it took the emergency checkpoint because a peer was stopping, not itself: its pod
is not done, the job must rescale."""


def status_file(rank: int) -> str:
    """Name of global rank `rank`'s status file in the control directory."""
    return f"status-{rank}.json"


class _File(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class ControlMessage(_File):
    """What the agent tells its workers."""

    generation: Annotated[int, Field(ge=0)] = 0
    """Generation the workers run in."""
    request_id: str | None = None
    """Id of the newest checkpoint request from the membership record."""
    request_time: Annotated[float, Field(ge=0)] = 0.0
    """`requestedAt` of that request, unix seconds; ranks agree on the largest one they saw."""
    stop: bool = False
    """Take an emergency checkpoint at the next step, then exit 0 (SIGTERM on the pod)."""


class SaveRecord(_File):
    """One checkpoint save as one worker saw it."""

    step: int
    """Checkpoint step (steps completed)."""
    stall_seconds: float
    """Time `save()` blocked the training loop."""
    skipped: str | None = None
    """Policy that skipped or waited instead of saving (e.g. `previous-in-flight`), if any."""


class WorkerStatus(_File):
    """What one worker tells its agent. Counters are cumulative for the worker process."""

    rank: int
    generation: int
    step: int | None = None
    """Last completed step (steps completed, the number a checkpoint at this point would carry)."""
    loss: float | None = None
    step_seconds: float | None = None
    """Mean seconds per step since the previous status."""
    tokens_per_second: float | None = None
    steps_total: int = 0
    """Steps this process completed (for the step-time histogram)."""
    restore_seconds: float | None = None
    restore_tier: str | None = None
    restored_step: int | None = None
    """Step the restore actually loaded (older than `ELASTRA_RESTORE_STEP` after a fallback)."""
    restore_skipped: tuple[RestoreSkip, ...] = ()
    """Newer checkpoints the restore could not use, newest first, with the reason."""
    saves: tuple[SaveRecord, ...] = ()
    """The newest saves (bounded), oldest first."""
    bytes_by_tier: dict[str, int] = {}
    """Checkpoint bytes this rank wrote, per tier (cumulative)."""
    skipped_by_policy: dict[str, int] = {}
    """Saves skipped (`skip`) or that waited for the previous one (`wait`), cumulative."""
    ack_request: str | None = None
    """Id of the newest checkpoint request the ranks agreed on and saved for."""
    last_commit: dict[str, Any] | None = None
    """`elastra.api.membership.CommitReport` JSON of the newest commit (global rank 0 only)."""
    emergency_step: int | None = None
    """Step of the emergency checkpoint taken on stop, once staged."""
    failure: str | None = None
    """Why the worker is about to exit non-zero (a collective failed, …)."""
    memory_snapshot_bytes: int | None = None
    """Bytes of the pod's memory store after this rank's newest memory snapshot (data + parity)."""
    memory_snapshot_seconds: float | None = None
    """Time of this rank's newest committed memory snapshot, from `step()` to its in-memory commit."""


def write_atomic(path: str | os.PathLike[str], model: BaseModel) -> None:
    """Replace `path` with `model` as JSON, atomically (readers see the old or the new file)."""
    target = pathlib.Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(model.model_dump_json())
        os.replace(tmp, target)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


M = TypeVar("M", bound=BaseModel)


class FileReader(Generic[M]):
    """Re-reads a JSON file only when it changed; one `os.stat` otherwise."""

    def __init__(self, path: str | os.PathLike[str], model: type[M]) -> None:
        self.path = pathlib.Path(path)
        self._model = model
        self._identity: tuple[int, int, int] | None = None
        self._value: M | None = None
        self.error: str | None = None
        """Why the newest version could not be read (the previous value is kept)."""

    def poll(self) -> M | None:
        """The newest valid content, or None while the file does not exist."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return self._value
        identity = (st.st_ino, st.st_size, st.st_mtime_ns)
        if identity == self._identity:
            return self._value
        self._identity = identity
        try:
            self._value = self._model.model_validate(json.loads(self.path.read_bytes()))
            self.error = None
        except (OSError, ValueError, ValidationError) as exc:
            self.error = f"{self.path}: {exc}"
        return self._value
