"""The warm launcher (`elastra.agent.zygote`) with real processes: forked workers behave like
`python script.py` (argv, env, exit codes, signals, the excepthook), and any unsafe state makes the
caller fall back to a plain spawn."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import sys
import time

import pytest

from elastra.agent.workers import WorkerGroup
from elastra.agent.zygote import ForkedWorker, Target, Zygote, ZygoteError, imported_modules, zygote_target

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork + /proc"),
]

SCRIPT = """
import json, os, sys, time
import helper_mod

out = os.environ["OUT"]
with open(out, "w") as f:
    json.dump({"argv": sys.argv, "rank": os.environ.get("RANK"), "name": __name__,
               "preloaded": helper_mod.LOADED_IN, "pid": os.getpid()}, f)
mode = os.environ.get("MODE", "exit")
if mode == "exit":
    sys.exit(int(os.environ.get("CODE", "0")))
if mode == "raise":
    raise ValueError("boom")
if mode == "hook":
    def hook(kind, exc, tb):
        os._exit(75)
    sys.excepthook = hook
    raise RuntimeError("a peer is gone")
while True:  # mode == "sleep"
    time.sleep(0.05)
"""


@pytest.fixture
def script(tmp_path: pathlib.Path) -> pathlib.Path:
    (tmp_path / "helper_mod.py").write_text("import os\nLOADED_IN = os.getpid()\n")
    path = tmp_path / "train.py"
    path.write_text(SCRIPT)
    return path


def _env(tmp_path: pathlib.Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "OUT": str(tmp_path / f"out-{extra.get('RANK', '0')}.json"), **extra}


def _launch(script: pathlib.Path, *args: str) -> Zygote:
    """A zygote for `script` that imports only the script's own modules (torch would be slow here),
    with one OpenMP/BLAS thread as the pods run (numpy's BLAS would start threads otherwise)."""
    target = zygote_target([sys.executable, str(script), *args])
    assert target is not None
    return Zygote(target, {**os.environ, "ELASTRA_ZYGOTE_PRELOAD": "", "OMP_NUM_THREADS": "1"})


def test_forked_worker_runs_the_script_as_main_with_its_env_and_exit_code(
    script: pathlib.Path, tmp_path: pathlib.Path
) -> None:
    zygote = _launch(script, "--steps", "5")
    try:
        workers = [
            ForkedWorker(zygote, zygote.spawn(_env(tmp_path, RANK=str(r), CODE=str(3 + r)))) for r in (0, 1)
        ]
        assert [w.wait(30) for w in workers] == [3, 4]
        for rank in (0, 1):
            seen = json.loads((tmp_path / f"out-{rank}.json").read_text())
            assert seen["argv"] == [str(script), "--steps", "5"]
            assert seen["rank"] == str(rank) and seen["name"] == "__main__"
            # The script's own import ran once, in the zygote, before the fork.
            assert seen["preloaded"] == zygote.proc.pid != seen["pid"]
        assert zygote.ready_seconds is not None
    finally:
        zygote.close()


@pytest.mark.parametrize(
    ("mode", "code"),
    [
        pytest.param("raise", 1, id="uncaught-error-exits-1"),
        pytest.param("hook", 75, id="excepthook-decides"),
    ],
)
def test_uncaught_errors_exit_like_python(
    script: pathlib.Path, tmp_path: pathlib.Path, mode: str, code: int
) -> None:
    zygote = _launch(script)
    try:
        assert ForkedWorker(zygote, zygote.spawn(_env(tmp_path, MODE=mode))).wait(30) == code
    finally:
        zygote.close()


def test_sigterm_reaches_the_worker_not_the_zygote(script: pathlib.Path, tmp_path: pathlib.Path) -> None:
    zygote = _launch(script)
    try:
        worker = ForkedWorker(zygote, zygote.spawn(_env(tmp_path, MODE="sleep")))
        deadline = time.monotonic() + 20
        while not (tmp_path / "out-0.json").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        os.kill(zygote.proc.pid, signal.SIGTERM)  # the pod's process group gets SIGTERM too
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == -signal.SIGTERM
        assert zygote.proc.poll() is None
        again = ForkedWorker(zygote, zygote.spawn(_env(tmp_path, RANK="1", CODE="0")))
        assert again.wait(30) == 0
    finally:
        zygote.close()


def test_zygote_death_fails_its_workers_and_is_reported(script: pathlib.Path, tmp_path: pathlib.Path) -> None:
    zygote = _launch(script)
    try:
        worker = ForkedWorker(zygote, zygote.spawn(_env(tmp_path, MODE="sleep")))
        zygote.proc.kill()
        assert worker.wait(10) == -signal.SIGKILL
        assert zygote.broken is not None
        with pytest.raises(ZygoteError):
            zygote.spawn(_env(tmp_path))
    finally:
        zygote.close()


def test_a_thread_started_at_import_makes_the_group_spawn_plainly(tmp_path: pathlib.Path) -> None:
    (tmp_path / "threaded_mod.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(600,), daemon=True).start()\n"
    )
    script = tmp_path / "train.py"
    script.write_text("import os, sys\nimport threaded_mod\nsys.exit(int(os.environ['CODE']))\n")
    zygote = _launch(script)
    try:
        group = WorkerGroup(1, [sys.executable, str(script)], [{**os.environ, "CODE": "7"}], zygote)
        assert not isinstance(group.procs[0], ForkedWorker)  # refused to fork: spawned instead
        assert zygote.broken is not None
        assert group.wait(30) and group.codes() == [7]
    finally:
        zygote.close()


@pytest.mark.parametrize(
    ("command", "target"),
    [
        pytest.param(["python", "t.py", "-x"], Target(kind="path", name="t.py", args=("-x",)), id="script"),
        pytest.param(
            ["/usr/bin/python3", "-m", "pkg.main"],
            Target(kind="module", name="pkg.main", args=()),
            id="module",
        ),
        pytest.param(["python", "-u", "t.py"], None, id="interpreter-option-not-supported"),
        pytest.param(["torchrun", "t.py"], None, id="not-python"),
        pytest.param(["python"], None, id="no-script"),
    ],
)
def test_zygote_target(command: list[str], target: Target | None) -> None:
    assert zygote_target(command) == target


def test_imported_modules_are_the_top_level_absolute_imports() -> None:
    source = "from __future__ import annotations\nimport a.b, c\nfrom d.e import f\nfrom . import g\n"
    source += "def h():\n    import inner\n"
    assert imported_modules(source) == ["a.b", "c", "d.e"]


def test_torch_preloaded_in_the_zygote_works_in_the_forked_worker(tmp_path: pathlib.Path) -> None:
    script = tmp_path / "torch_train.py"
    script.write_text(
        "import sys\nimport torch\n"
        "x = torch.ones(64, 64)\n"
        "sys.exit(0 if float((x @ x).sum()) == 64.0 ** 3 and torch.get_num_threads() == 1 else 9)\n"
    )
    target = zygote_target([sys.executable, str(script)])
    assert target is not None
    # As the pods run it: one OpenMP thread, so importing torch starts no thread and fork is safe.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ELASTRA_ZYGOTE_PRELOAD": ""}
    zygote = Zygote(target, env)
    try:
        worker = ForkedWorker(zygote, zygote.spawn(env))
        assert worker.wait(60) == 0
        assert zygote.ready_seconds is not None
    finally:
        zygote.close()


def test_agent_holds_its_first_report_until_the_launcher_imported(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The operator takes a pod into a grow once its agent reported: by then its workers can start."""
    from elastra.agent.agent import Agent
    from elastra.agent.config import agent_config_from_env

    (tmp_path / "slow_mod.py").write_text("import time\ntime.sleep(1.0)\n")
    script = tmp_path / "train.py"
    script.write_text("import slow_mod\n")
    cfg = agent_config_from_env(
        {
            "ELASTRA_JOB": "tj",
            "POD_NAME": "tj-w-0",
            "POD_NAMESPACE": "default",
            "ELASTRA_CONTROL_DIR": str(tmp_path / "ctl"),
            "ELASTRA_METRICS_PORT": "0",
        }
    )

    class Link:
        reports: list[dict[str, str]] = []

        def start(self) -> None: ...

        def report(self, annotations: dict[str, str]) -> None:
            self.reports.append(annotations)

        def stop(self, flush_timeout: float = 3.0) -> None: ...

    monkeypatch.setenv("ELASTRA_ZYGOTE_PRELOAD", "")
    agent = Agent(cfg, [sys.executable, str(script)], link=Link())
    agent._start_zygote()
    assert agent.zygote is not None
    try:
        assert agent.zygote.ready_seconds is not None and agent.zygote.ready_seconds >= 1.0
        assert Link.reports == []  # run() reports right after this returns
    finally:
        agent.zygote.close()


def test_forked_workers_do_not_share_random_state(tmp_path: pathlib.Path) -> None:
    """Like fresh processes, each forked worker seeds `random` and numpy's global generator anew."""
    script = tmp_path / "rand.py"
    script.write_text(
        "import json, os, random\nimport numpy\n"
        "open(os.environ['OUT'], 'w').write(json.dumps([random.random(), float(numpy.random.rand())]))\n"
    )
    zygote = _launch(script)
    try:
        envs = [_env(tmp_path, RANK=str(r)) for r in (0, 1)]
        assert [ForkedWorker(zygote, zygote.spawn(env)).wait(30) for env in envs] == [0, 0]
        first, second = (json.loads((tmp_path / f"out-{r}.json").read_text()) for r in (0, 1))
        assert first[0] != second[0] and first[1] != second[1]
    finally:
        zygote.close()
