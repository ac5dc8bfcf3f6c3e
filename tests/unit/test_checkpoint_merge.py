"""Checkpoint merging: planning tables, hand-computed task-arithmetic and TIES tables (end to end through
real checkpoints on disk), the streaming top-k, and hostile inputs."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from elastra.checkpoint import Checkpointer, FormatError, MergeError, merge
from elastra.checkpoint.cli import main as ckpt_main
from elastra.checkpoint.format import Manifest, TensorEntry
from elastra.checkpoint.geometry import Box
from elastra.checkpoint.merge_math import MagnitudeSelect, keep_count
from elastra.checkpoint.merge_plan import (
    MergeMethod,
    MergeOptions,
    check_options,
    check_sources,
    chunk_boxes,
    plan_merge,
)
from elastra.checkpoint.search import merged_state_dict, open_sources

pytestmark = pytest.mark.unit


# ---------------------------------------------------------------- planning


@pytest.mark.parametrize(
    ("shape", "limit", "count"),
    [
        pytest.param((), 4, 1, id="0-d: one box"),
        pytest.param((0, 3), 4, 0, id="empty: no box"),
        pytest.param((10,), 4, 3, id="1-d: 4+4+2"),
        pytest.param((6, 5), 10, 3, id="2 rows per box"),
        pytest.param((3, 7), 5, 6, id="row too big: 2 pieces per row"),
        pytest.param((2, 3, 4), 5, 6, id="3-d: one 4-wide row piece per box"),
        pytest.param((2, 3, 4), 100, 1, id="whole tensor"),
    ],
)
def test_chunk_boxes_tile_the_tensor_in_row_major_order(
    shape: tuple[int, ...], limit: int, count: int
) -> None:
    boxes = chunk_boxes(shape, limit)
    assert len(boxes) == count
    covered = torch.zeros(shape, dtype=torch.int64) if shape else torch.zeros((), dtype=torch.int64)
    flat_next = 0
    for box in boxes:
        assert box.numel <= limit or not shape
        index = tuple(slice(o, o + n) for o, n in zip(box.offsets, box.shape, strict=True))
        covered[index] += 1
        strides = [math.prod(shape[d + 1 :]) for d in range(len(shape))]
        first = sum(o * s for o, s in zip(box.offsets, strides, strict=True))
        assert first == flat_next, "boxes are contiguous and in order"
        flat_next = first + box.numel
    assert bool((covered == 1).all())


def test_plan_spreads_tensors_by_bytes_and_aligns_pieces() -> None:
    tensors = {"model/a": ("F32", (100, 10)), "model/b": ("F32", (90, 10)), "model/c": ("BF16", (7,)),
               "model/d": ("F64", (3,))}  # fmt: skip
    plan = plan_merge(tensors, workers=2, chunk_bytes=1000, step=5)
    assert [w.file for w in plan.workers] == ["rank-00000.safetensors", "rank-00001.safetensors"]
    assert sorted(p for w in plan.workers for p in w.tensors) == sorted(tensors)
    for worker in plan.workers:
        end = 0
        for piece in worker.pieces:
            assert piece.data_offset == end and (len(worker.header) + piece.data_offset) % 2 == 0
            end += piece.nbytes
    assert plan_merge(tensors, workers=9, chunk_bytes=1000, step=5).workers[-1].index == 3, "capped"


def _manifest(**tensors: tuple[str, tuple[int, ...]]) -> Manifest:
    entries = {p.replace("__", "/"): TensorEntry(d, s, "boxes", "", ()) for p, (d, s) in tensors.items()}
    return Manifest(step=1, world_size=1, tensors=entries, values={})


@pytest.mark.parametrize(
    ("other", "message"),
    [
        pytest.param(_manifest(model__a=("F32", (2, 3))), "source B has no tensor 'model/b'", id="missing"),
        pytest.param(
            _manifest(model__a=("F32", (2, 3)), model__b=("F32", (4,)), model__c=("F32", (1,))),
            "source B has a tensor 'model/c'",
            id="extra",
        ),
        pytest.param(
            _manifest(model__a=("F32", (3, 2)), model__b=("F32", (5,))),
            "tensor 'model/a': shape [3, 2] in source B, [2, 3] in source A",
            id="first of two mismatches is named",
        ),
        pytest.param(
            _manifest(model__a=("F32", (2, 3)), model__b=("BF16", (4,))),
            "tensor 'model/b': dtype BF16 in source B, F32 in source A",
            id="dtype",
        ),
    ],
)
def test_mismatched_sources_name_the_first_mismatch(other: Manifest, message: str) -> None:
    ref = _manifest(model__a=("F32", (2, 3)), model__b=("F32", (4,)), optim__m=("F32", (9,)))
    with pytest.raises(MergeError) as info:
        check_sources([("source A", ref), ("source B", other)], ("model/",))
    assert message in str(info.value)


def test_tensors_outside_include_may_differ() -> None:
    a = _manifest(model__a=("F32", (2,)), optim__m=("F32", (9,)))
    b = _manifest(model__a=("F32", (2,)), optim__m=("F64", (1,)))
    assert check_sources([("A", a), ("B", b)], ("model/",)) == {"model/a": ("F32", (2,))}


@pytest.mark.parametrize(
    ("options", "n", "has_base", "message"),
    [
        pytest.param({"weights": (1.0,)}, 2, False, "1 weight(s) for 2 source(s)", id="too few weights"),
        pytest.param({"weights": (1.0, 2.0, 3.0)}, 2, False, "3 weight(s) for 2", id="too many weights"),
        pytest.param({"weights": (float("nan"), 1.0)}, 2, False, "weight 1 is nan", id="NaN weight"),
        pytest.param({"weights": (1.0, float("inf"))}, 2, False, "weight 2 is inf", id="infinite weight"),
        pytest.param({"weights": (True, 1.0)}, 2, False, "weight 1 is True", id="bool weight"),
        pytest.param({"weights": (1.0,)}, 1, True, "linear merges take none", id="linear with a base"),
        pytest.param(
            {"weights": (1.0,), "method": MergeMethod.TIES}, 1, False, "needs --base", id="ties without base"
        ),
        pytest.param(
            {"weights": (1.0,), "method": MergeMethod.TIES, "density": 0.0},
            1,
            True,
            "density",
            id="density 0",
        ),
        pytest.param({"weights": (1.0,), "include": ()}, 1, False, "include", id="nothing included"),
        pytest.param({"weights": ()}, 0, False, "at least one source", id="no sources"),
    ],
)
def test_invalid_options_are_refused(
    options: dict[str, object], n: int, has_base: bool, message: str
) -> None:
    with pytest.raises(MergeError) as info:
        check_options(MergeOptions(**options), n, has_base)  # type: ignore[arg-type]
    assert message in str(info.value)


# ---------------------------------------------------------------- streaming top-k


@pytest.mark.parametrize(
    ("seed", "numel", "density", "chunk"),
    [
        pytest.param(0, 1000, 0.2, 64, id="random"),
        pytest.param(1, 777, 0.01, 100, id="few kept"),
        pytest.param(2, 500, 1.0, 33, id="all kept"),
        pytest.param(3, 300, 0.5, 7, id="many ties and zeros"),
    ],
)
def test_streaming_kth_magnitude_equals_topk(seed: int, numel: int, density: float, chunk: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(numel, generator=g, dtype=torch.float64)
    if seed == 3:
        x = torch.randint(-3, 4, (numel,), generator=g).double()
    k = keep_count(numel, density)
    select = MagnitudeSelect(k)
    for part in x.split(chunk):
        select.observe_high(part)
    select.settle_high()
    for part in x.split(chunk):
        select.observe_low(part)
    expected = float(torch.topk(x.abs().float(), k).values[-1])
    assert select.threshold() == expected


# ---------------------------------------------------------------- hand-computed tables, end to end


def _save(root: Path, step: int, model: dict[str, torch.Tensor], **extra: object) -> str:
    ckpt = Checkpointer(str(root))
    ckpt.save(step, {"model": model, **extra}).wait()
    ckpt.close()
    return str(root)


def _load(root: str, like: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = {"model": {k: torch.zeros_like(v) for k, v in like.items()}}
    Checkpointer(root).load(state)
    return state["model"]


BASE = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
X1 = [4.0, 0.0, 3.0, -3.0, 1.5, 2.0]  # task vector [3, -1, 2, -4, 0.5, 1]
X2 = [-1.0, 3.0, 2.0, 4.0, 0.0, 0.5]  # task vector [-2, 2, 1, 3, -1, -0.5]


@pytest.mark.parametrize(
    ("method", "weights", "extra", "expected"),
    [
        pytest.param("linear", [0.25, 0.75], {}, [0.25, 2.25, 2.25, 2.25, 0.375, 0.875], id="linear"),
        # base + 0.5 t1 + 2 t2 = 1 + [1.5-4, -0.5+4, 1+2, -2+6, 0.25-2, 0.5-1]
        pytest.param(
            "task-arithmetic", [0.5, 2.0], {}, [-1.5, 4.5, 4.0, 5.0, -0.75, 0.5], id="task arithmetic"
        ),
        # density 0.5 keeps 3 of 6: t1 -> [3,0,2,-4,0,0], t2 -> [-2,2,0,3,0,0]; elected sign
        # [+,+,+,-,0,0]; disjoint mean [3,2,2,-4,0,0]; plus the base
        pytest.param("ties", [1.0, 1.0], {"density": 0.5}, [4.0, 3.0, 3.0, -3.0, 1.0, 1.0], id="ties"),
        # weights 1, 3: mass [-3,6,2,5,0,0], sign [-,+,+,+,0,0]; means [-6/3, 6/3, 2/1, 9/3, 0, 0]
        pytest.param(
            "ties", [1.0, 3.0], {"density": 0.5}, [-1.0, 3.0, 3.0, 4.0, 1.0, 1.0], id="ties weighted"
        ),
        pytest.param(
            "ties",
            [1.0, 1.0],
            {"density": 0.5, "scale": 0.5},
            [2.5, 2.0, 2.0, -1.0, 1.0, 1.0],
            id="ties scaled",
        ),
        # density 1 keeps everything: sign of [1,1,3,-1,-0.5,0.5]; means [3, 2, 1.5, -4, -1, 1]
        pytest.param("ties", [1.0, 1.0], {"density": 1.0}, [4.0, 3.0, 2.5, -3.0, 0.0, 2.0], id="ties dense"),
    ],
)
def test_merges_match_hand_computed_tables(
    tmp_path: Path, method: str, weights: list[float], extra: dict[str, float], expected: list[float]
) -> None:
    shape = (2, 3)
    base = _save(tmp_path / "base", 10, {"w": torch.tensor(BASE).reshape(shape)})
    a = _save(tmp_path / "a", 20, {"w": torch.tensor(X1).reshape(shape)})
    b = _save(tmp_path / "b", 30, {"w": torch.tensor(X2).reshape(shape)})
    result = merge(
        str(tmp_path / "out"),
        [a, b],
        weights=weights,
        base=None if method == "linear" else base,
        method=method,
        chunk_bytes=8,  # two elements per chunk: the TIES top-k runs across three chunks
        **extra,  # type: ignore[arg-type]
    )
    assert result.step == (30 if method == "linear" else 10)
    merged = _load(str(tmp_path / "out"), {"w": torch.zeros(shape)})["w"]
    assert merged.reshape(-1).tolist() == pytest.approx(expected, abs=1e-6)
    meta = result.manifest.meta["merge"]
    assert meta["method"] == method and meta["weights"] == weights
    assert meta["optimizer_state"] == "omitted"
    in_memory = merged_state_dict(
        open_sources([a, b], base=None if method == "linear" else base, include=["model/"]),
        MergeOptions(method=MergeMethod(method), weights=tuple(weights), chunk_bytes=8, **extra),  # type: ignore[arg-type]
        strip="model/",
    )
    assert torch.equal(in_memory["w"], merged)


def test_output_leaves_optimizer_out_and_restores_into_a_fresh_optimizer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    models = [torch.nn.Linear(4, 3) for _ in range(2)]
    roots = []
    for i, m in enumerate(models):
        opt = torch.optim.AdamW(m.parameters())
        m(torch.randn(2, 4)).sum().backward()
        opt.step()
        roots.append(
            _save(
                tmp_path / f"s{i}",
                5,
                dict(m.state_dict()),
                optim={"s": opt.state_dict()["state"][0]["exp_avg"]},
            )
        )
    result = merge(str(tmp_path / "out"), roots, weights=[0.5, 0.5])
    meta = result.manifest.meta["merge"]
    assert meta["optimizer_state"] == "omitted" and meta["left_out_prefixes"] == ["optim/"]
    assert all(p.startswith("model/") for p in result.manifest.tensors)
    fresh = torch.nn.Linear(4, 3)
    state = {"model": dict(fresh.state_dict())}
    Checkpointer(str(tmp_path / "out")).load(state)
    fresh.load_state_dict(state["model"])
    expected = (models[0].weight.double() + models[1].weight.double()) / 2
    torch.testing.assert_close(fresh.weight.detach(), expected.float(), rtol=1.2e-7, atol=0)
    opt = torch.optim.AdamW(fresh.parameters())
    fresh(torch.randn(2, 4)).sum().backward()
    opt.step()


# ---------------------------------------------------------------- hostile inputs


@pytest.fixture
def two(tmp_path: Path) -> tuple[str, str]:
    return (
        _save(tmp_path / "a", 1, {"w": torch.ones(4), "n": torch.tensor([1, 2])}),
        _save(tmp_path / "b", 2, {"w": torch.zeros(4), "n": torch.tensor([1, 2])}),
    )


def test_out_inside_a_source_is_refused(two: tuple[str, str]) -> None:
    for out in (two[0], f"{two[0]}/step-9", f"{two[1]}/sub", str(Path(two[0]).parent)):
        with pytest.raises(MergeError, match="overlaps the source"):
            merge(out, list(two), weights=[1, 1])


def test_existing_committed_output_is_not_replaced(two: tuple[str, str], tmp_path: Path) -> None:
    merge(str(tmp_path / "out"), list(two), weights=[1, 1])
    with pytest.raises(MergeError, match="already a committed checkpoint"):
        merge(str(tmp_path / "out"), list(two), weights=[0, 1])


def test_integer_tensors_must_agree(tmp_path: Path) -> None:
    a = _save(tmp_path / "a", 1, {"w": torch.ones(4), "n": torch.tensor([1, 2])})
    b = _save(tmp_path / "b", 1, {"w": torch.ones(4), "n": torch.tensor([1, 3])})
    with pytest.raises(MergeError, match=r"tensor 'model/n' .* differs between the sources"):
        merge(str(tmp_path / "out"), [a, b], weights=[1, 1])
    assert not (tmp_path / "out" / "step-1" / "manifest.json").exists()


def test_corrupt_source_fails_the_merge_and_commits_nothing(two: tuple[str, str], tmp_path: Path) -> None:
    (shard,) = (Path(two[1]) / "step-2").glob("rank-00000*.safetensors")  # named per save
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(FormatError, match="checksum mismatch"):
        merge(str(tmp_path / "out"), list(two), weights=[1, 1])
    out = tmp_path / "out" / "step-2"
    assert not (out / "manifest.json").exists() and not any(out.glob(".tmp-*"))


def test_root_without_commits_is_an_error(two: tuple[str, str], tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(MergeError, match="no committed checkpoint"):
        merge(str(tmp_path / "out"), [two[0], str(tmp_path / "empty")], weights=[1, 1])


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        pytest.param(["--weights", "1"], 1, "1 weight(s) for 2 source(s)", id="weights count"),
        pytest.param(["--weights", "nan,1"], 1, "weight 1 is nan", id="NaN weight"),
        pytest.param(["--weights", "1,x"], 2, "weights must be numbers", id="not a number"),
        pytest.param(["--weights", "1,1", "--method", "ties"], 1, "needs --base", id="ties without base"),
        pytest.param(
            ["--weights", "1,1", "--include", "optim/"], 1, "nothing to merge", id="empty selection"
        ),
    ],
)
def test_cli_reports_bad_arguments(
    two: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str], *, args: list[str], code: int,
    message: str,
) -> None:  # fmt: skip
    if code == 2:
        with pytest.raises(SystemExit) as info:
            ckpt_main(["merge", str(tmp_path / "out"), *two, *args])
        assert info.value.code == 2
    else:
        assert ckpt_main(["merge", str(tmp_path / "out"), *two, *args]) == code
    assert message in capsys.readouterr().err


def test_cli_merges_and_reports(
    two: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = str(tmp_path / "out" / "step-7")
    assert ckpt_main(["merge", out, *two, "--weights", "0.25,0.5", "--quiet"]) == 0
    assert "merged 2 tensors (linear, weights [0.25, 0.5]) into " in capsys.readouterr().out
    merged = _load(str(tmp_path / "out"), {"w": torch.zeros(4), "n": torch.zeros(2, dtype=torch.int64)})
    assert merged["w"].tolist() == [0.25] * 4 and merged["n"].tolist() == [1, 2]
    assert ckpt_main(["verify", out]) == 0


def test_register_finalizer_matches_the_operator() -> None:
    from elastra.checkpoint.register import FINALIZER as MINE
    from elastra_operator.reconcile.manifests import FINALIZER

    assert MINE == FINALIZER


def test_box_of_a_0d_tensor_merges(tmp_path: Path) -> None:
    a = _save(tmp_path / "a", 1, {"t": torch.tensor(2.0)})
    b = _save(tmp_path / "b", 1, {"t": torch.tensor(4.0)})
    merge(str(tmp_path / "out"), [a, b], weights=[0.5, 0.5])
    assert _load(str(tmp_path / "out"), {"t": torch.tensor(0.0)})["t"].item() == 3.0
    assert Box((), ()).numel == 1
