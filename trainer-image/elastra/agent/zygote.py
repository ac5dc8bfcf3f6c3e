"""A warm launcher ("zygote"): a process that has already imported the training script's modules and
forks one worker per request, so a restart in place skips `import torch` and the script's imports.

Why: on a new generation every surviving pod restarts its workers; a fresh `python train.py` spends
seconds importing before it can join the process group (docs/benchmarks.md, Recovery).

How it stays safe:
- The zygote never runs training code and never starts a thread; before each fork it checks that it
  has exactly one OS thread (`/proc/self/task`) and refuses otherwise, so no lock or OpenMP pool is
  copied into a child half-held. It imports with `PYTORCH_NVML_BASED_CUDA_CHECK=1` and refuses when
  CUDA got initialised anyway (checked once with a probe fork): a forked child could not use it.
- It ignores SIGTERM and SIGINT (the pod's whole process group gets SIGTERM; the workers, not the
  zygote, decide what happens then) and exits when the agent closes its request pipe.
- Each child sets `PR_SET_PDEATHSIG` (the zygote itself has it towards the agent), restores the default
  signal handlers, replaces its environment with the generation's, and runs the script with `runpy`
  as `__main__`; its exit code is what a plain `python script.py` would exit with.
- The zygote reaps its children and reports each exit on the reply pipe; the agent signals workers by
  pid. Any error (the zygote died, refused, answered nonsense) makes the agent fall back to a plain
  spawn for good (`ZygoteError`).
- Imports run once, with the pod's environment: a module that reads RANK/WORLD_SIZE *at import time*
  would see none. Set `ELASTRA_ZYGOTE=0` for such scripts.

Messages are JSON lines: agent → zygote `{"env": {...}}`; zygote → agent `{"ready": seconds}`,
`{"pid": n}` or `{"error": text}` per request, and `{"exit": pid, "code": c}` per finished child.
"""

from __future__ import annotations

import ast
import atexit
import contextlib
import importlib
import importlib.util
import json
import os
import runpy
import select
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from elastra.agent.lifeline import die_with_parent

SPAWN_TIMEOUT_S = 120.0
"""Longest wait for the zygote's answer to a fork request (it may still be importing)."""


DEFAULT_PRELOAD = "elastra.session,elastra.checkpoint,elastra.storage.s3,boto3,torch._dynamo"
"""Imported besides the script's own imports (`ELASTRA_ZYGOTE_PRELOAD`, comma-separated): what
`elastra.init()`, the first restore and FSDP2's `fully_shard` (torch._dynamo, ~0.9 s here) import lazily."""


class ZygoteError(RuntimeError):
    """The warm launcher cannot start a worker: the caller spawns a plain process instead."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """What the training command runs."""

    kind: str
    """`path` (python script.py …) or `module` (python -m pkg …)."""
    name: str
    """The script's path or the module's name."""
    args: tuple[str, ...]
    """The arguments after it."""


def zygote_target(command: Sequence[str]) -> Target | None:
    """The command as a `Target`, or None when a zygote cannot run it (not `python script.py …` or
    `python -m module …` without interpreter options). Pure."""
    if len(command) < 2 or not os.path.basename(command[0]).startswith("python"):
        return None
    if command[1] == "-m" and len(command) >= 3:
        return Target(kind="module", name=command[2], args=tuple(command[3:]))
    if command[1].endswith(".py"):
        return Target(kind="path", name=command[1], args=tuple(command[2:]))
    return None


def imported_modules(source: str) -> list[str]:
    """The absolute modules a script imports at its top level, in order. Pure."""
    found: list[str] = []
    for node in ast.parse(source).body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        found.extend(n for n in names if n not in found and n != "__future__")
    return found


# ---------------------------------------------------------------------------- the zygote process
def _send(fd: int, message: Mapping[str, Any]) -> None:
    os.write(fd, (json.dumps(message) + "\n").encode())


def _preload(target: Target) -> None:
    if target.kind == "path":
        sys.path[0] = os.path.dirname(os.path.abspath(target.name))
        with open(target.name, encoding="utf-8") as f:
            modules = imported_modules(f.read())
    else:
        spec = importlib.util.find_spec(target.name)
        origin = spec.origin if spec is not None else None
        modules = []
        if origin and origin.endswith(".py"):
            with open(origin, encoding="utf-8") as f:
                modules = imported_modules(f.read())
    extra = os.environ.get("ELASTRA_ZYGOTE_PRELOAD", DEFAULT_PRELOAD)
    for module in [*modules, *(m.strip() for m in extra.split(",") if m.strip())]:
        with contextlib.suppress(Exception):  # the worker imports it again and reports its own error
            importlib.import_module(module)


def _cuda_unsafe() -> str | None:
    """Why a forked child could not use CUDA (the imports initialised it), or None. One probe fork."""
    torch: Any = sys.modules.get("torch")
    if torch is None or not hasattr(torch, "cuda"):
        return None
    if torch.cuda.is_initialized():
        return "CUDA was initialised while importing: a forked worker could not use it"
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        os._exit(1 if torch.cuda._is_in_bad_fork() else 0)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return "the imports poisoned fork for CUDA (torch's bad-fork flag is set in a child)"
    return None


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run_child(target: Target, env: Mapping[str, str], zygote_pid: int, reply_fd: int) -> None:
    """In the forked child: become the worker, run the script, exit. Never returns."""
    code = 1
    try:
        die_with_parent()
        if os.getppid() != zygote_pid:  # the zygote died between fork and prctl
            os._exit(137)
        os.close(reply_fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(env)
        numpy: Any = sys.modules.get("numpy")
        if numpy is not None:  # a fresh process seeds numpy's global generator from the OS; so do we
            numpy.random.seed()
        if target.kind == "path":
            sys.argv = [target.name, *target.args]
            runpy.run_path(target.name, run_name="__main__")
        else:
            sys.argv = [target.name, *target.args]
            runpy.run_module(target.name, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except BaseException as exc:
        sys.excepthook(type(exc), exc, exc.__traceback__)  # the session's hook exits with its own code
        code = 1
    finally:
        with contextlib.suppress(BaseException):
            atexit._run_exitfuncs()
        with contextlib.suppress(BaseException):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def serve(target: Target, reply_fd: int) -> int:
    """The zygote's loop: preload, then fork a worker per request until the agent hangs up."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    started = time.monotonic()
    # torch.cuda.is_available() by NVML, not cuInit: a CUDA driver initialised here would break every fork.
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    _preload(target)
    unsafe = _cuda_unsafe()
    _send(reply_fd, {"ready": round(time.monotonic() - started, 3)})
    children: set[int] = set()
    buffer = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.05)
        for pid in list(children):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                children.discard(pid)
                _send(reply_fd, {"exit": pid, "code": os.waitstatus_to_exitcode(status)})
        if not readable:
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            return 0  # the agent is done (its workers are already stopped)
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            threads = len(os.listdir("/proc/self/task"))
            if unsafe or threads != 1:
                _send(reply_fd, {"error": unsafe or f"the zygote has {threads} threads: forking is not safe"})
                continue
            env = json.loads(line)["env"]
            sys.stdout.flush()
            sys.stderr.flush()
            zygote_pid = os.getpid()
            pid = os.fork()
            if pid == 0:
                _run_child(target, env, zygote_pid, reply_fd)
            children.add(pid)
            _send(reply_fd, {"pid": pid})


def main(argv: Sequence[str]) -> int:
    spec = json.loads(argv[0])
    target = Target(kind=spec["kind"], name=spec["name"], args=tuple(spec["args"]))
    return serve(target, int(argv[1]))


# ---------------------------------------------------------------------------- the agent's side
class Zygote:
    """The agent's handle on its warm launcher (one per pod, kept across generations)."""

    def __init__(self, target: Target, env: Mapping[str, str]) -> None:
        read_fd, write_fd = os.pipe()
        spec = json.dumps({"kind": target.kind, "name": target.name, "args": list(target.args)})
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "elastra.agent.zygote", spec, str(write_fd)],
                stdin=subprocess.PIPE,
                pass_fds=(write_fd,),
                env=dict(env),
                preexec_fn=die_with_parent,  # noqa: PLW1509 - only prctl
            )
        finally:
            os.close(write_fd)
        self._replies = read_fd
        os.set_blocking(read_fd, False)
        self._buffer = b""
        self._answers: list[dict[str, Any]] = []
        self.exits: dict[int, int] = {}
        """Exit code of every child the zygote reaped, by pid."""
        self.children: set[int] = set()
        self.ready_seconds: float | None = None
        self.broken: str | None = None
        """Why the zygote is not usable any more (None while it is)."""

    def _read(self, timeout: float) -> None:
        if self.broken:
            return
        ready, _, _ = select.select([self._replies], [], [], timeout)
        if not ready:
            return
        try:
            chunk = os.read(self._replies, 65536)
        except BlockingIOError:
            return
        if not chunk:
            self._break("the zygote exited")
            return
        self._buffer += chunk
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            try:
                message = json.loads(line)
            except ValueError:
                self._break(f"unreadable message from the zygote: {line[:80]!r}")
                return
            if "exit" in message:
                self.exits[int(message["exit"])] = int(message["code"])
            elif "ready" in message:
                self.ready_seconds = float(message["ready"])
            else:
                self._answers.append(message)

    def _break(self, why: str) -> None:
        """Unusable from now on; its children are gone with it (PDEATHSIG), and killed to be sure."""
        self.broken = why
        for pid in self.children - set(self.exits):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.exits[pid] = -signal.SIGKILL

    def wait_ready(self, timeout: float) -> bool:
        """Wait until the zygote has imported everything (True), it broke, or `timeout` passed."""
        deadline = time.monotonic() + timeout
        while self.ready_seconds is None and not self.broken and time.monotonic() < deadline:
            self._read(0.05)
        return self.ready_seconds is not None

    def spawn(self, env: Mapping[str, str]) -> int:
        """Fork a worker with `env`; its pid. Raises `ZygoteError` (then spawn it plainly)."""
        if self.broken:
            raise ZygoteError(self.broken)
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write((json.dumps({"env": dict(env)}) + "\n").encode())
            self.proc.stdin.flush()
        except OSError as exc:
            self._break(f"cannot write to the zygote: {exc}")
            raise ZygoteError(self.broken or "") from exc
        deadline = time.monotonic() + SPAWN_TIMEOUT_S
        while not self._answers:
            if self.broken:
                raise ZygoteError(self.broken)
            if time.monotonic() > deadline:
                self.close()
                raise ZygoteError(f"no answer from the zygote in {SPAWN_TIMEOUT_S:.0f}s")
            self._read(0.05)
        answer = self._answers.pop(0)
        if "pid" not in answer:
            self.close()
            raise ZygoteError(str(answer.get("error", answer)))
        pid = int(answer["pid"])
        self.children.add(pid)
        return pid

    def poll(self) -> None:
        """Collect the exits reported so far (non-blocking)."""
        while not self.broken:
            before = (len(self.exits), len(self._buffer))
            self._read(0)
            if (len(self.exits), len(self._buffer)) == before:
                return

    def close(self) -> None:
        """Hang up: the zygote exits (children still running die with it)."""
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                assert self.proc.stdin is not None
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if not self.broken:
            self._break("closed")
        with contextlib.suppress(OSError):
            os.close(self._replies)


class ForkedWorker:
    """A worker forked by the zygote, with the part of `subprocess.Popen` the agent uses."""

    def __init__(self, zygote: Zygote, pid: int) -> None:
        self.zygote, self.pid = zygote, pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.zygote.poll()
            self.returncode = self.zygote.exits.get(self.pid)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while (code := self.poll()) is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired([str(self.pid)], timeout or 0.0)
            time.sleep(0.02)
        return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
