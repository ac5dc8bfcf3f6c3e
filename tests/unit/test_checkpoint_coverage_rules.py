"""How a state meets a checkpoint: missing, unexpected, tied, fresh optimizers, Python types."""

from __future__ import annotations

from collections import namedtuple
from typing import Any

import pytest
import torch

from elastra.checkpoint.coverage import StateMismatch, cover, like, optimizer_roots
from elastra.checkpoint.state import split_state

pytestmark = pytest.mark.unit

Pair = namedtuple("Pair", "a b")


@pytest.mark.parametrize(
    ("values", "roots"),
    [
        pytest.param(["optim/param_groups/0/lr"], {"optim/"}, id="checkpointer"),
        pytest.param(["model/optim/param_groups/0/lr", "step"], {"model/optim/"}, id="session"),
        pytest.param(["param_groups/0/lr"], {""}, id="bare"),
        pytest.param(["extra/step"], set(), id="none"),
    ],
)
def test_optimizer_state_dicts_are_recognised(values: list[str], roots: set[str]) -> None:
    assert optimizer_roots(values) == roots


def _state(**extra: Any) -> dict[str, Any]:
    w = torch.zeros(2, 2)
    return {"model": {"w": w, "tied": w, **extra}, "optim": {"state": {}, "param_groups": [{"lr": 0.1}]}}


@pytest.mark.parametrize(
    ("saved", "allow", "outcome"),
    [
        pytest.param({"model/w"}, False, ("ok", (), (), {"model/tied": "model/w"}), id="tied-is-not-missing"),
        pytest.param({"model/w", "model/tied"}, False, ("ok", (), (), {}), id="both-saved"),
        pytest.param(
            {"model/w", "rng/cpu"},
            False,
            ("ok", (), ("rng/cpu",), {"model/tied": "model/w"}),
            id="unexpected-reported",
        ),
        pytest.param(
            {"model/w", "optim/state/0/exp_avg"},
            False,
            ("fresh", None, None, None),
            id="fresh-optimizer-refused",
        ),
        pytest.param(set(), False, ("missing", None, None, None), id="missing-refused"),
        pytest.param(set(), True, ("ok", ("model/w", "model/tied"), (), {}), id="missing-allowed"),
        pytest.param(set(), {"model/w"}, ("missing", None, None, None), id="only-some-allowed"),
    ],
)
def test_cover(saved: set[str], allow: Any, outcome: tuple[Any, ...]) -> None:
    leaves, values = split_state(_state())
    kind, missing, unexpected, tied = outcome
    if kind == "fresh":
        with pytest.raises(StateMismatch, match=r"has no state yet.*get_state_dict"):
            cover(leaves, values, saved, step=3, allow_missing=allow)
        return
    if kind == "missing":
        with pytest.raises(StateMismatch, match=r"not in step 3.*allow_missing"):
            cover(leaves, values, saved, step=3, allow_missing=allow)
        return
    got = cover(leaves, values, saved, step=3, allow_missing=allow)
    assert (got.missing, got.unexpected, got.tied) == (missing, unexpected, tied)
    assert {leaf.path for leaf in got.loadable} == saved & {"model/w", "model/tied"}


@pytest.mark.parametrize(
    ("current", "saved", "expected"),
    [
        pytest.param((0.9, 0.999), [0.8, 0.95], (0.8, 0.95), id="tuple"),
        pytest.param(Pair(1, 2), [3, 4], Pair(3, 4), id="namedtuple"),
        pytest.param(((1, 2), 3), [[5, 6], 7], ((5, 6), 7), id="nested"),
        pytest.param([1, 2], [3, 4], [3, 4], id="list-stays-list"),
        pytest.param((1, 2), [3, 4, 5], [3, 4, 5], id="other-length-stays-list"),
        pytest.param("x", [1], [1], id="other-type"),
        pytest.param(
            {"betas": (1, 2)}, {"betas": [3, 4], "new": [5]}, {"betas": (3, 4), "new": [5]}, id="dict"
        ),
    ],
)
def test_saved_values_take_the_state_types(current: Any, saved: Any, expected: Any) -> None:
    got = like(current, saved)
    assert got == expected and type(got) is type(expected)
