"""`elastra ckpt`: list, inspect, verify, consolidate, merge and export checkpoints.

URIs are a checkpoint root (`s3://bucket/prefix` or a directory) or one step under it (`…/step-N`).
Exit codes: 0 fine, 1 damage found (verify) or nothing to act on, 2 usage errors.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import Any

from elastra.checkpoint.format import FormatError, parse_step_dir
from elastra.checkpoint.geometry import Box
from elastra.checkpoint.merge_plan import MergeMethod
from elastra.checkpoint.reader import Sources, read_box, read_manifest, verify_all
from elastra.checkpoint.register import RegisterError
from elastra.checkpoint.retention import committed_steps
from elastra.storage import Storage, StorageError, open_storage


def split_uri(uri: str) -> tuple[str, int | None]:
    """`root/step-N` → (`root`, N); a bare root → (`root`, None)."""
    stripped = uri.rstrip("/")
    head, _, tail = stripped.rpartition("/")
    step = parse_step_dir(tail)
    return (head, step) if step is not None and head else (stripped, None)


class NothingCommitted(Exception):
    """A root without any committed step: nothing to inspect, verify or consolidate."""


def _resolve(uri: str) -> tuple[Storage, list[int]]:
    """The storage and the steps to act on, newest first: the one named, or every committed one."""
    root, step = split_uri(uri)
    storage = open_storage(root)
    if step is not None:
        return storage, [step]
    steps = sorted((s for s, ok in committed_steps(storage).items() if ok), reverse=True)
    if not steps:
        raise NothingCommitted(f"no committed checkpoint under {uri}")
    return storage, steps


def cmd_ls(uri: str) -> int:
    storage = open_storage(split_uri(uri)[0])
    steps = committed_steps(storage)
    if not steps:
        print(f"no checkpoints under {storage.uri}")
        return 1
    print(f"{'step':>10}  {'state':<11} {'world':>5} {'bytes':>14}")
    for step in sorted(steps):
        if not steps[step]:
            print(f"{step:>10}  {'uncommitted':<11} {'-':>5} {'-':>14}")
            continue
        try:
            m = read_manifest(storage, step)
            print(f"{step:>10}  {'committed':<11} {m.world_size:>5} {m.nbytes:>14}")
        except (FormatError, StorageError) as exc:
            print(f"{step:>10}  {'unreadable':<11} {'-':>5} {'-':>14}  {exc}")
    return 0


def cmd_inspect(uri: str) -> int:
    storage, steps = _resolve(uri)
    m = read_manifest(storage, steps[0])
    print(f"step {m.step}  world size {m.world_size}  files {len(m.files)}  bytes {m.nbytes}")
    for path, t in sorted(m.tensors.items()):
        print(
            f"  {path}  {t.dtype} {list(t.shape)}  {t.sharding}  "
            f"{len(t.fragments)} fragment(s)  {t.nbytes} bytes"
        )
    for path, value in sorted(m.values.items()):
        print(f"  {path} = {value!r}")
    return 0


def cmd_verify(uri: str) -> int:
    storage, steps = _resolve(uri)
    damaged = 0
    for step in steps:
        try:
            problems = verify_all(Sources(read_manifest(storage, step), storage))
        except (FormatError, StorageError) as exc:
            problems = [str(exc)]
        print(f"step-{step}: {'OK' if not problems else 'DAMAGED'}")
        for problem in problems:
            print(f"  {problem}")
        damaged += bool(problems)
    return 1 if damaged else 0


def cmd_consolidate(uri: str, out: str) -> int:
    from safetensors.torch import save_file

    storage, steps = _resolve(uri)
    m = read_manifest(storage, steps[0])
    sources = Sources(m, storage)
    tensors = {}
    for path, t in m.tensors.items():
        whole = (
            read_box(sources, path, Box((0,) * len(t.shape), t.shape), "boxes")
            if t.layout == "boxes"
            else (read_box(sources, path, Box((0,), t.space), "flat").reshape(t.shape))
        )
        tensors[path] = whole.contiguous()
    save_file(tensors, out, metadata={"step": str(m.step), "source": storage.uri})
    print(f"wrote {len(tensors)} tensors of step {m.step} to {out}")
    return 0


def _weights(text: str) -> list[float]:
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"weights must be numbers separated by commas, got {text!r}"
        ) from None


def cmd_merge(ns: argparse.Namespace) -> int:
    from elastra.checkpoint.merging import merge
    from elastra.checkpoint.register import check_name, connect

    if ns.name:
        check_name(ns.name)
    registrar = connect(ns.register, ns.namespace) if ns.register else None  # fail before the work
    result = merge(
        ns.out,
        ns.sources,
        weights=ns.weights,
        base=ns.base,
        method=ns.method,
        include=ns.include or ["model/"],
        step=ns.step,
        workers=ns.workers,
        density=ns.density,
        scale=ns.scale,
        progress=not ns.quiet,
    )
    merge_meta = result.manifest.meta["merge"]
    print(
        f"merged {result.tensors} tensors ({merge_meta['method']}, weights {merge_meta['weights']}) into "
        f"{result.uri}: {result.bytes} bytes in {result.files} file(s), {result.seconds:.1f}s; "
        f"left out {merge_meta['left_out_tensors']} tensors "
        f"({', '.join(merge_meta['left_out_prefixes']) or '-'})"
    )
    if registrar is not None:
        created = registrar.create(
            name=ns.name,
            uri=result.uri,
            step=result.step,
            world_size=result.manifest.world_size,
            nbytes=result.bytes,
            manifest_digest=result.manifest_digest,
            sources=[s["uri"] for s in merge_meta["sources"]],
        )
        meta = created["metadata"]
        print(f"registered Checkpoint {meta['namespace']}/{meta['name']} (job {ns.register})")
    return 0


def _merge_parser(sub: Any) -> None:
    p = sub.add_parser(
        "merge",
        help="merge checkpoints (weighted, task arithmetic, TIES) into a new one, streaming",
        description="Merge committed checkpoints (any world size or sharding) into a new committed "
        "checkpoint at OUT, tensor by tensor in chunks. SRC and BASE are roots (newest committed step) "
        "or root/step-N.",
    )
    p.add_argument("out", metavar="OUT", help="output root (directory or s3://bucket/prefix) or root/step-N")
    p.add_argument("sources", metavar="SRC", nargs="+")
    p.add_argument("--weights", type=_weights, required=True, help="w1,w2,...: one per SRC")
    p.add_argument("--base", help="the checkpoint task vectors start from (task-arithmetic, ties)")
    p.add_argument("--method", choices=[m.value for m in MergeMethod], default=MergeMethod.LINEAR.value)
    p.add_argument(
        "--include", action="append", metavar="PREFIX", help="state-path prefix to merge (repeatable; model/)"
    )
    p.add_argument("--step", type=int, help="step of the output (default: the base's, else the newest SRC's)")
    p.add_argument("--workers", type=int, default=1, help="processes; each writes one output file")
    p.add_argument("--density", type=float, default=0.2, help="ties: fraction of each task vector kept")
    p.add_argument("--scale", type=float, default=1.0, help="ties: factor on the merged task vector")
    p.add_argument("--register", metavar="JOB", help="create a Checkpoint object for the result under JOB")
    p.add_argument("--namespace", help="namespace for --register (default: the kubeconfig context's)")
    p.add_argument("--name", help="name of the Checkpoint object (default: JOB-merge-<digest>)")
    p.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def cmd_export(ns: argparse.Namespace) -> int:
    from elastra.checkpoint.hf_export import DTYPES, export_hf
    from elastra.checkpoint.hf_format import parse_size

    root, step = split_uri(ns.uri)
    result = export_hf(
        root,
        ns.hf,
        step=ns.step if ns.step is not None else step,
        prefix=ns.prefix,
        dtype=DTYPES[ns.dtype] if ns.dtype else None,
        config=ns.config,
        max_shard_bytes=parse_size(ns.max_shard_size),
    )
    tensors = sum(len(names) for names in result.files.values())
    tied = "".join(f"; {t} not written (tied to {s})" for t, s in sorted(result.dropped_tied.items()))
    print(
        f"exported {tensors} tensors ({result.total_bytes} bytes) of step {result.step}, prefix "
        f"{result.prefix!r}, to {ns.hf} in {len(result.files)} file(s){tied}"
    )
    return 0


def _export_parser(sub: Any) -> None:
    export = sub.add_parser(
        "export", help="write the model weights as a Hugging Face from_pretrained directory"
    )
    export.add_argument("uri", help="checkpoint root (newest committed step) or root/step-N")
    export.add_argument("--hf", required=True, metavar="OUTDIR", help="directory to create (must be empty)")
    export.add_argument("--step", type=int, default=None, help="step to export (default: the newest)")
    export.add_argument(
        "--prefix", default=None, help="state prefix of the weights, e.g. model/ (default: found)"
    )
    export.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default=None,
                        help="cast floating tensors (default: as saved)")  # fmt: skip
    export.add_argument("--config", default=None, help="config.json to include (and to learn tied weights)")
    export.add_argument("--max-shard-size", default="5GB", help="shard above this size (default 5GB)")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="elastra ckpt", description="Inspect, verify and merge checkpoints."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("ls", help="list the steps under a root").add_argument("uri")
    sub.add_parser("inspect", help="tensors, shapes, sharding and bytes of a step").add_argument("uri")
    sub.add_parser("verify", help="check every checksum; non-zero exit on damage").add_argument("uri")
    consolidate = sub.add_parser("consolidate", help="write the full unsharded state as one safetensors file")
    consolidate.add_argument("uri")
    consolidate.add_argument("--out", required=True)
    _merge_parser(sub)
    _export_parser(sub)
    ns = parser.parse_args(argv)
    run: dict[str, Callable[[argparse.Namespace], int]] = {
        "ls": lambda ns: cmd_ls(ns.uri),
        "inspect": lambda ns: cmd_inspect(ns.uri),
        "verify": lambda ns: cmd_verify(ns.uri),
        "consolidate": lambda ns: cmd_consolidate(ns.uri, ns.out),
        "merge": cmd_merge,
        "export": cmd_export,
    }
    try:
        return run[ns.command](ns)
    except NothingCommitted as exc:
        print(exc, file=sys.stderr)
        return 1
    except (FormatError, StorageError, ValueError, FileExistsError, RegisterError) as exc:
        print(f"elastra ckpt {ns.command}: {exc}", file=sys.stderr)
        return 1
