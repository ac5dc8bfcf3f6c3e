"""Lazy staging (`save(..., staging="lazy")`): the copy runs on the background thread and only the next
mutation waits for it, through `fence()`, `handle.staged()` or the optimizer guard. World size 1, a
real AdamW, the local file tier."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest
import torch

from elastra.checkpoint import Checkpointer, CheckpointError

pytestmark = pytest.mark.timeout(120)


def training_state(seed: int) -> tuple[torch.nn.Linear, torch.optim.AdamW, dict[str, object]]:
    """A model and AdamW after one step (so the moments exist); the state dict holds references to
    the live tensors, as a trainer's does."""
    torch.manual_seed(seed)
    model = torch.nn.Linear(64, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(8, 64)).square().sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optim": optimizer.state_dict(), "step": 1}
    return model, optimizer, state


def snapshot(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return {k: snapshot(v) for k, v in value.items()}
    if isinstance(value, list):
        return [snapshot(v) for v in value]
    return value


def zeros_like(value: object) -> object:
    if isinstance(value, torch.Tensor):
        return torch.zeros_like(value)
    if isinstance(value, dict):
        return {k: zeros_like(v) for k, v in value.items()}
    return value


def assert_equal(a: object, b: object) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b)
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for k in a:
            assert_equal(a[k], b[k])
    else:
        assert a == b


def hold_background_thread(ckpt: Checkpointer) -> threading.Event:
    """Occupy the checkpointer's one background thread until the returned gate opens, so a lazy
    save's copy has certainly not run yet when `save()` returns."""
    gate = threading.Event()
    ckpt._executor.submit(gate.wait, 30)
    return gate


def open_when_blocked_in(function: str, thread_id: int, gate: threading.Event) -> None:
    """Open `gate` once the thread `thread_id` is inside `function` (or after 30 s)."""
    for _ in range(3000):
        frame = sys._current_frames().get(thread_id)
        while frame is not None and frame.f_code.co_name != function:
            frame = frame.f_back
        if frame is not None:
            break
        threading.Event().wait(0.01)
    gate.set()


def test_guarded_optimizer_step_after_a_lazy_save_does_not_change_what_is_stored(tmp_path: Path) -> None:
    model, optimizer, state = training_state(1)
    ckpt = Checkpointer(str(tmp_path))
    ckpt.guard(optimizer)
    expected = snapshot(state)
    gate = hold_background_thread(ckpt)
    handle = ckpt.save(1, state, staging="lazy")
    assert not handle.done()  # the copy has not started: the state is still being read from
    opener = threading.Thread(target=open_when_blocked_in, args=("fence", threading.get_ident(), gate))
    opener.start()
    model(torch.randn(8, 64)).square().sum().backward()  # forward and backward overlap the copy
    optimizer.step()  # the guard holds this until the copy is done
    opener.join()
    assert not torch.equal(model.weight.detach(), expected["model"]["weight"])  # type: ignore[index]
    handle.wait()
    fresh = zeros_like(expected)
    assert ckpt.load(fresh) == 1
    assert_equal(fresh, expected)
    ckpt.close()


def test_staged_then_mutate_keeps_the_saved_values(tmp_path: Path) -> None:
    _model, _optimizer, state = training_state(2)
    ckpt = Checkpointer(str(tmp_path))
    expected = snapshot(state)
    handle = ckpt.save(3, state, staging="lazy")
    handle.staged()
    for tensor in state["model"].values():  # type: ignore[attr-defined]
        tensor.add_(1.0)
    handle.wait()
    fresh = zeros_like(expected)
    assert ckpt.load(fresh) == 3
    assert_equal(fresh, expected)
    ckpt.close()


def test_removed_guard_no_longer_fences(tmp_path: Path) -> None:
    _model, optimizer, _state = training_state(3)
    ckpt = Checkpointer(str(tmp_path))
    hook = ckpt.guard(optimizer)
    assert len(optimizer._optimizer_step_pre_hooks) == 1
    hook.remove()
    assert len(optimizer._optimizer_step_pre_hooks) == 0


def test_unknown_staging_mode_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="staging must be one of"):
        Checkpointer(str(tmp_path)).save(1, {"w": torch.zeros(2)}, staging="later")


def test_a_failed_lazy_copy_releases_the_fence_and_fails_the_save(tmp_path: Path) -> None:
    weights = torch.ones(1000)
    ckpt = Checkpointer(str(tmp_path))
    gate = hold_background_thread(ckpt)
    handle = ckpt.save(1, {"w": weights}, staging="lazy")
    weights.resize_(10)  # breaks the contract (mutation before the fence): the copy can no longer run
    gate.set()
    handle.staged(timeout=30)  # released, not stuck
    with pytest.raises(CheckpointError, match="staging failed"):
        handle.wait(timeout=30)
    assert not (tmp_path / "step-1" / "manifest.json").exists()
    ckpt.close()
