"""Hugging Face locations in one process: an `s3://` prefix on a real (moto) S3 server, symbolic links
refused, an untied GQA model (Llama) exported under the session's prefix with `--dtype bf16`, an export
that would leave weights random refused, and `elastra ckpt inspect | head` without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from hf_models import BUILD

from elastra.checkpoint import Checkpointer, CheckpointError
from elastra.checkpoint.format import FormatError
from elastra.checkpoint.hf_export import export_hf
from elastra.checkpoint.pretrained import load_pretrained

pytestmark = pytest.mark.timeout(180)


def _same_weights(a: Any, b: Any) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_pretrained_from_an_s3_prefix(s3_server: Any, tmp_path: Path) -> None:
    source = BUILD["gpt2"](seed=0)
    source.save_pretrained(tmp_path / "gpt2", max_shard_size="20KB")
    bucket = s3_server.make_bucket("models")
    client = s3_server.client()
    for file in (tmp_path / "gpt2").iterdir():
        client.upload_file(str(file), bucket, f"hub/gpt2/{file.name}")
    target = BUILD["gpt2"](seed=1)
    report = load_pretrained({"model": target.state_dict()}, f"s3://{bucket}/hub/gpt2/")
    assert report.source == f"s3://{bucket}/hub/gpt2" and report.tied
    _same_weights(source, target)


def test_symbolic_links_are_refused(tmp_path: Path) -> None:
    BUILD["llama"](seed=0).save_pretrained(tmp_path / "real")
    (tmp_path / "linked").mkdir()
    (tmp_path / "linked" / "model.safetensors").symlink_to(tmp_path / "real" / "model.safetensors")
    target = BUILD["llama"](seed=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(CheckpointError, match="symbolic link"):
        load_pretrained({"model": target.state_dict()}, str(tmp_path / "linked"))
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # nothing read


def test_llama_under_the_session_prefix_exports_to_bf16(tmp_path: Path) -> None:
    from transformers import LlamaForCausalLM

    model = BUILD["llama"](seed=0)
    model.config.save_pretrained(tmp_path / "config")
    optim = torch.optim.AdamW(model.parameters(), lr=1e-2)
    x = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(0))
    model(x, labels=x).loss.backward()
    optim.step()
    # The session's layout: {"model": {"model": weights, "optim": ...}, "rng": ...}.
    state = {"model": {"model": model.state_dict(), "optim": optim.state_dict()["state"]},
             "rng": {"torch_cpu": torch.get_rng_state()}}  # fmt: skip
    ckpt = Checkpointer(str(tmp_path / "ck"))
    ckpt.save(1, state).wait()
    ckpt.close()
    lines: list[str] = []
    result = export_hf(str(tmp_path / "ck"), str(tmp_path / "out"), dtype="BF16",
                       config=str(tmp_path / "config" / "config.json"), progress=lines.append)  # fmt: skip
    assert result.prefix == "model/model/" and not result.dropped_tied  # untied: lm_head is its own
    assert "lm_head.weight" in result.files["model.safetensors"]
    assert any("model/model/" in line for line in lines)
    exported = LlamaForCausalLM.from_pretrained(tmp_path / "out")
    assert exported.dtype == torch.bfloat16
    _same_weights(model.to(torch.bfloat16), exported)
    with pytest.raises(FileExistsError):
        export_hf(str(tmp_path / "ck"), str(tmp_path / "out"), progress=lines.append)
    # The optimizer's subtree is not a model: export refuses what from_pretrained would fill at random.
    with pytest.raises(FormatError, match="random"):
        export_hf(str(tmp_path / "ck"), str(tmp_path / "out2"), prefix="rng/",
                  config=str(tmp_path / "config" / "config.json"), progress=lines.append)  # fmt: skip


def test_inspect_into_a_closed_pipe_prints_no_traceback(tmp_path: Path) -> None:
    ckpt = Checkpointer(str(tmp_path / "ck"))
    ckpt.save(1, {f"t{i}": torch.zeros(2) for i in range(2000)}).wait()
    ckpt.close()
    done = subprocess.run(
        f"{sys.executable} -m elastra.cli ckpt inspect {tmp_path / 'ck'} | head -1",
        shell=True, capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.stdout.startswith("step 1"), done
    assert "Traceback" not in done.stderr and "BrokenPipe" not in done.stderr, done.stderr


def test_a_merged_checkpoint_exports_to_from_pretrained(tmp_path: Path) -> None:
    """`elastra ckpt merge` output (issue 13) is an ordinary committed checkpoint: it exports with
    `--hf` (issue 18) and `from_pretrained` loads the weighted sum, tied weights included."""
    from transformers import GPT2LMHeadModel

    from elastra.checkpoint import merge

    models = [BUILD["gpt2"](seed=seed) for seed in (0, 1)]
    roots = []
    for index, model in enumerate(models):
        root = tmp_path / f"run-{index}"
        writer = Checkpointer(str(root))
        writer.save(7, {"model": model.state_dict()}).wait()
        writer.close()
        roots.append(str(root))
    merge(str(tmp_path / "merged"), roots, weights=[0.25, 0.75])
    models[0].config.save_pretrained(tmp_path / "config")
    export_hf(str(tmp_path / "merged"), str(tmp_path / "hf"), config=str(tmp_path / "config" / "config.json"))
    loaded = GPT2LMHeadModel.from_pretrained(tmp_path / "hf")
    a, b = models[0].state_dict(), models[1].state_dict()
    for name, value in loaded.state_dict().items():
        expected = (0.25 * a[name].double() + 0.75 * b[name].double()).to(value.dtype)
        assert torch.equal(value, expected), name
    assert loaded.lm_head.weight.data_ptr() == loaded.transformer.wte.weight.data_ptr()  # still tied
