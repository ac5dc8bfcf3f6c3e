"""No silent partial restore (real Checkpointer, one process): a fresh optimizer is refused with what to
do, or restored once its state exists; state tensors the checkpoint lacks are an error unless allowed;
checkpoint tensors nothing takes are reported; tuples come back as tuples."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from elastra.checkpoint import Checkpointer, CheckpointError

pytestmark = pytest.mark.timeout(120)


def trained(seed: int = 0) -> tuple[nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optim = torch.optim.AdamW(model.parameters(), lr=0.01, betas=(0.8, 0.95))
    for _ in range(2):
        model(torch.randn(3, 4)).sum().backward()
        optim.step()
        optim.zero_grad()
    return model, optim


@pytest.fixture
def saved(tmp_path: Path) -> tuple[str, dict[str, Any]]:
    model, optim = trained()
    state = {"model": model.state_dict(), "optim": optim.state_dict(), "rng": {"cpu": torch.get_rng_state()}}
    ckpt = Checkpointer(str(tmp_path / "ck"))
    ckpt.save(2, state).wait()
    ckpt.close()
    return str(tmp_path / "ck"), state


def test_a_fresh_optimizer_is_refused_with_what_to_do(saved: tuple[str, dict[str, Any]]) -> None:
    root, _ = saved
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optim = torch.optim.AdamW(model.parameters(), lr=0.01)
    ckpt = Checkpointer(root)
    with pytest.raises(CheckpointError, match="has no state yet") as info:
        ckpt.load({"model": model.state_dict(), "optim": optim.state_dict()})
    assert "get_state_dict" in str(info.value) and "optim/state/0/exp_avg" in str(info.value)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # nothing was read


def test_an_optimizer_given_its_state_first_is_restored(saved: tuple[str, dict[str, Any]]) -> None:
    from elastra.checkpoint import init_optimizer_state

    root, reference = saved
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    optim = torch.optim.AdamW(model.parameters(), lr=0.5)
    assert init_optimizer_state(optim) and not init_optimizer_state(optim)
    state = {"model": model.state_dict(), "optim": optim.state_dict(),
             "rng": {"cpu": torch.zeros_like(reference["rng"]["cpu"])}}  # fmt: skip
    ckpt = Checkpointer(root)
    assert ckpt.load(state) == 2
    optim.load_state_dict(state["optim"])
    saved_state = reference["optim"]["state"]
    for i, p in enumerate(model.parameters()):
        assert torch.equal(optim.state[p]["exp_avg"], saved_state[i]["exp_avg"])
    assert optim.param_groups[0]["lr"] == 0.01
    assert optim.param_groups[0]["betas"] == (0.8, 0.95) and type(optim.param_groups[0]["betas"]) is tuple
    report = ckpt.last_report
    assert report is not None and not report.missing and not report.unexpected


def test_missing_tensors_are_an_error_unless_allowed(saved: tuple[str, dict[str, Any]]) -> None:
    root, _ = saved
    model, _optim = trained(seed=1)
    state = {"model": {**model.state_dict(), "extra.scale": torch.full((3,), 7.0)}}
    ckpt = Checkpointer(root)
    with pytest.raises(CheckpointError, match=r"model/extra\.scale.*allow_missing"):
        ckpt.load(state)
    assert ckpt.load(state, allow_missing={"model/extra.scale"}) == 2
    assert torch.equal(state["model"]["extra.scale"], torch.full((3,), 7.0))  # kept its value
    report = ckpt.last_report
    assert report is not None and report.missing == ("model/extra.scale",)


def test_unexpected_tensors_are_reported(
    saved: tuple[str, dict[str, Any]], caplog: pytest.LogCaptureFixture
) -> None:
    root, reference = saved
    model, _optim = trained(seed=1)
    state = {"model": model.state_dict()}
    with caplog.at_level(logging.WARNING, logger="elastra.checkpoint.checkpointer"):
        assert Checkpointer(root).load(state) == 2
    for name, value in reference["model"].items():
        assert torch.equal(state["model"][name], value)
    line = next(r.getMessage() for r in caplog.records if "not restored" in r.getMessage())
    assert "13 not restored (unexpected)" in line and "optim/state/0/exp_avg" in line, line
