"""The worker processes of one generation on this pod: start, watch, stop."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
from collections.abc import Sequence

from elastra.agent.lifeline import die_with_parent
from elastra.agent.zygote import ForkedWorker, Zygote, ZygoteError

log = logging.getLogger("elastra.agent")


class WorkerGroup:
    """The local workers of one generation (one process per local rank).

    With a `zygote`, each worker is forked from the warm launcher (no interpreter start, no imports);
    on any zygote error that worker and the rest are spawned as plain processes."""

    def __init__(
        self,
        generation: int,
        command: Sequence[str],
        envs: Sequence[dict[str, str]],
        zygote: Zygote | None = None,
    ) -> None:
        self.generation = generation
        self.procs: list[subprocess.Popen[bytes] | ForkedWorker] = []
        for env in envs:
            proc: subprocess.Popen[bytes] | ForkedWorker | None = None
            if zygote is not None and zygote.broken is None:
                try:
                    proc = ForkedWorker(zygote, zygote.spawn(env))
                except ZygoteError as exc:
                    log.warning("warm launcher unusable (%s): starting workers as new processes", exc)
            how = "forked from the warm launcher"
            if proc is None:
                proc = subprocess.Popen(list(command), env=env, preexec_fn=die_with_parent)  # noqa: PLW1509
                how = "spawned"
            self.procs.append(proc)
            log.info("generation %d: %s rank %s (pid %d)", generation, how, env.get("RANK"), proc.pid)

    def codes(self) -> list[int | None]:
        """Exit code per local rank; None while it runs."""
        return [p.poll() for p in self.procs]

    @property
    def running(self) -> bool:
        return any(code is None for code in self.codes())

    def first_failure(self) -> tuple[int, int] | None:
        """`(local_rank, code)` of the first worker that exited non-zero, if any."""
        for local_rank, code in enumerate(self.codes()):
            if code not in (None, 0):
                return local_rank, code
        return None

    def outcome(self) -> int | None:
        """None while any runs; then 0 if all exited 0, else the first non-zero code."""
        codes = self.codes()
        if any(code is None for code in codes):
            return None
        return next((code for code in codes if code != 0), 0)

    def signal(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(sig)

    def stop(self, sig: int, timeout: float) -> list[int | None]:
        """Send `sig`, wait up to `timeout` seconds, then SIGKILL what is left; the exit codes."""
        self.signal(sig)
        deadline = time.monotonic() + timeout
        while self.running and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.running:
            log.warning("generation %d: workers still running after %.0fs, killing", self.generation, timeout)
            self.signal(signal.SIGKILL)
        for proc in self.procs:
            proc.wait()
        return self.codes()

    def wait(self, timeout: float) -> bool:
        """Wait until all exited (True) or `timeout` passed (False)."""
        deadline = time.monotonic() + timeout
        while self.running:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True


def clear_status_files(control_dir: str) -> None:
    """Remove the previous generation's status files (a new generation starts with none)."""
    for name in os.listdir(control_dir):
        if name.startswith("status-") and name.endswith(".json"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(control_dir, name))
