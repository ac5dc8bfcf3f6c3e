"""One process of the checkpoint benchmark: a gloo rank that saves, restores, or measures the floors.

`benchmarks/checkpoint.py` starts these as fresh processes (one group per method, so peak RSS figures
do not mix) and reads the JSON each writes. Run by hand only for debugging:

    python benchmarks/_checkpoint_worker.py --role save --method dcp_save --rank 0 --world 2 ...
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import resource
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.tensor import DTensor, Shard

COLUMNS = 1024
"""Every tensor of the synthetic state is [rows, COLUMNS] float32, sharded by rows over the ranks."""
LAYERS = 4
ENTRIES = ("weight", "exp_avg", "exp_avg_sq")
"""Per layer: a parameter and its two AdamW moments, as an optimizer-carrying state dict has."""
COMPUTE_SIZE = 2048
COMPUTE_MATMULS = 4
"""The loop's forward/backward stand-in: this many [COMPUTE_SIZE]^2 float32 matmuls on the rank's one
intra-op thread (about 0.4 s on the reference machine), the same fixed work for every method."""
VALUE_MODULUS = 65521
"""Base values are (global element index mod this prime) + tensor index: exact in float32, and a
resharding bug (wrong offset) shows as a mismatch."""


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One tensor of the synthetic state."""

    name: str
    """State-dict key."""
    index: int
    """Position in the state; added to the base values so tensors differ."""
    global_rows: int
    """Rows of the full (unsharded) tensor."""


def state_layout(state_bytes_per_rank: int, world: int) -> list[TensorSpec]:
    """The tensors of a state holding about `state_bytes_per_rank` bytes on each of `world` ranks (pure)."""
    count = LAYERS * len(ENTRIES)
    rows_per_rank = max(1, state_bytes_per_rank // (count * COLUMNS * 4))
    names = [f"layers.{layer}.{entry}" for layer in range(LAYERS) for entry in ENTRIES]
    return [TensorSpec(name=n, index=i, global_rows=rows_per_rank * world) for i, n in enumerate(names)]


def base_values(spec: TensorSpec, row_start: int, rows: int) -> torch.Tensor:
    """The base values of rows [row_start, row_start + rows) of `spec`."""
    first = row_start * COLUMNS
    flat = torch.arange(first, first + rows * COLUMNS, dtype=torch.int64).remainder_(VALUE_MODULUS)
    return flat.to(torch.float32).add_(spec.index).view(rows, COLUMNS)


def build_state(
    layout: list[TensorSpec], mesh: DeviceMesh, rank: int, world: int, *, empty: bool
) -> dict[str, DTensor]:
    """This rank's shard of every tensor, a DTensor sharded by rows; zeros when `empty` (restore target)."""
    state: dict[str, DTensor] = {}
    for spec in layout:
        rows = spec.global_rows // world
        local = torch.zeros(rows, COLUMNS) if empty else base_values(spec, rank * rows, rows)
        state[spec.name] = as_dtensor(local, mesh, spec, 0)
    return state


def build_column_target(layout: list[TensorSpec], mesh: DeviceMesh, world: int) -> dict[str, DTensor]:
    """Zeroed restore target sharded by columns over `world` ranks: a different sharding than saved."""
    return {
        spec.name: as_dtensor(torch.zeros(spec.global_rows, COLUMNS // world), mesh, spec, 1)
        for spec in layout
    }


def as_dtensor(local: torch.Tensor, mesh: DeviceMesh, spec: TensorSpec, dim: int) -> DTensor:
    return DTensor.from_local(
        local,
        mesh,
        [Shard(dim)],
        run_check=False,
        shape=torch.Size([spec.global_rows, COLUMNS]),
        stride=(COLUMNS, 1),
    )


def rss_bytes() -> int:
    return int(psutil.Process().memory_info().rss)


def peak_rss_bytes() -> int:
    """This process's peak resident set (Linux reports ru_maxrss in KiB)."""
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def cpu_seconds() -> float:
    """User + system CPU seconds of this process (all its threads) and of its children: the live ones
    (a method's background writer process) and those already reaped."""
    me = psutil.Process()
    times = me.cpu_times()
    total = times.user + times.system
    for child in me.children(recursive=True):
        try:
            child_times = child.cpu_times()
        except psutil.Error:  # exited between the listing and the read
            continue
        total += child_times.user + child_times.system
    reaped = resource.getrusage(resource.RUSAGE_CHILDREN)
    return float(total + reaped.ru_utime + reaped.ru_stime)


def evict_from_page_cache(root: pathlib.Path) -> int:
    """fsync then posix_fadvise(DONTNEED) every file under `root`, so the next read comes from disk.

    DONTNEED drops only clean pages, hence the fsync first. Returns the bytes of the files evicted.
    """
    total = 0
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            total += os.fstat(fd).st_size
        finally:
            os.close(fd)
    return total


def fsync_path(path: pathlib.Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------------------ save


@dataclass(frozen=True, slots=True)
class Saver:
    """How one method saves."""

    save: Callable[[int, dict[str, DTensor]], Callable[[], float]]
    """save(step, state) blocks the training loop exactly as long as the method does and returns a
    waiter that blocks until the checkpoint is durable (fsynced) and returns the seconds from the
    save call until it was."""
    fence: Callable[[], object] = lambda: None
    """What the loop must call before it next mutates the state (Elastra's lazy staging only)."""
    finish: Callable[[], object] = lambda: None
    """Called once after the last save: wait for anything in flight, stop background threads."""


def make_saver(method: str, root: pathlib.Path, rank: int) -> Saver:
    """The Saver of `method`, writing its checkpoints under `root`."""
    if method == "torch_save":

        def save_torch(step: int, state: dict[str, DTensor]) -> Callable[[], float]:
            start = time.perf_counter()
            path = root / f"step-{step}" / f"rank-{rank}.pt"
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({k: v.to_local() for k, v in state.items()}, path)
            saved = time.perf_counter() - start

            def durable() -> float:
                # torch.save does not fsync; the durable time adds the fsync a careful caller would do.
                began = time.perf_counter()
                fsync_path(path)
                return saved + time.perf_counter() - began

            return durable

        return Saver(save=save_torch)
    if method == "dcp_save":

        def save_dcp(step: int, state: dict[str, DTensor]) -> Callable[[], float]:
            # FileSystemWriter's default sync_files=True fsyncs every file before save() returns.
            start = time.perf_counter()
            dcp.save(state, checkpoint_id=str(root / f"step-{step}"))
            done = time.perf_counter() - start
            return lambda: done

        return Saver(save=save_dcp)
    if method == "dcp_async_save":

        def save_dcp_async(step: int, state: dict[str, DTensor]) -> Callable[[], float]:
            start = time.perf_counter()
            response = dcp.async_save(state, checkpoint_id=str(root / f"step-{step}"))
            future = getattr(response, "upload_completion", response)
            finished: list[float] = []
            future.add_done_callback(lambda _f: finished.append(time.perf_counter()))

            def durable() -> float:
                future.result()
                while not finished:  # the callback runs right after the result is set
                    time.sleep(0.001)
                return finished[0] - start

            return durable

        return Saver(save=save_dcp_async)
    if method == "torch_checkpointing":
        manager = torch_checkpointing_manager()

        def save_tc(step: int, state: dict[str, DTensor]) -> Callable[[], float]:
            start = time.perf_counter()
            path = root / f"step-{step}"
            future = manager.save(str(path), {"model": state})
            assert future is not None, "the async saver returns its write future"

            def durable() -> float:
                future.result()
                # torch_checkpointing does not fsync (its writer process flushes and closes; O_DIRECT
                # where the file system allows it): like torch.save, the waiter adds the fsync.
                if path.is_dir():
                    for file in sorted(p for p in path.rglob("*") if p.is_file()):
                        fsync_path(file)
                return time.perf_counter() - start

            return durable

        def fence_tc() -> None:
            with manager.lock():  # what `with manager.lock(): optimizer.step()` waits for
                pass

        return Saver(save=save_tc, fence=fence_tc, finish=manager.close)
    if method in ("elastra", "elastra_lazy"):
        from elastra.checkpoint import Checkpointer

        checkpointer = Checkpointer(str(root), local_dir=None, keep=3, process_group=None)
        staging = "lazy" if method == "elastra_lazy" else "eager"

        def save_elastra(step: int, state: dict[str, DTensor]) -> Callable[[], float]:
            handle = checkpointer.save(step, state, staging=staging)

            def durable() -> float:
                info = handle.wait()
                assert info is not None
                return info.commit_seconds  # save() called -> manifest committed, the engine's clock

            return durable

        def finish() -> None:
            checkpointer.wait()
            checkpointer.close()

        return Saver(save=save_elastra, fence=checkpointer.fence, finish=finish)
    raise ValueError(f"unknown method {method!r}")


def torch_checkpointing_manager() -> Any:
    """Meta's torch_checkpointing as its docs configure it on a CPU-only host (Troubleshooting: gate
    pinned memory and non-blocking copies on an accelerator; buffered writes where O_DIRECT fails),
    asynchronous save (its default: host
    staging on a thread, a background writer process), a `DefaultResharder` on the item so a load
    may reshard (the resharding guide: a resharder on each item, metadata on save and load, which the
    manager wires itself when an item declares a resharder). No barrier (its default): every rank
    writes its own file straight into the step directory, and the benchmark waits for every rank."""
    from torch_checkpointing import CheckpointManager, ItemSpec
    from torch_checkpointing.config import AsyncCheckpointSaverConfig
    from torch_checkpointing.default_resharder import DefaultResharder
    from torch_checkpointing.metadata_manager import DefaultMetadataManager
    from torch_checkpointing.staging import CheckpointStagerConfig
    from torch_checkpointing.storage.filesystem import LocalFileSystemStorageConfig

    # 0.1.1 exchanges the (small, pickled) sharding metadata of a multi-rank save through tensors it
    # puts on "cuda" unconditionally, so on a CPU-only job with more than one rank a save with a
    # resharder raises "Torch not compiled with CUDA enabled". The benchmark swaps in the same
    # exchange over the CPU (gloo) group; the data path is untouched.
    def all_gather_pickled_on_cpu(_self: object, data: Any, process_group: Any = None) -> dict[int, Any]:
        gathered: list[Any] = [None] * dist.get_world_size(process_group)
        dist.all_gather_object(gathered, data, group=process_group)
        return dict(enumerate(gathered))

    setattr(DefaultMetadataManager, "_all_gather_pickled_data", all_gather_pickled_on_cpu)  # noqa: B010

    accelerator = torch.accelerator.is_available()
    staging = CheckpointStagerConfig(use_pinned_memory=accelerator, use_non_blocking_copy=accelerator)
    config = CheckpointManager.Config(
        items={"model": ItemSpec(resharder=DefaultResharder())},
        save=AsyncCheckpointSaverConfig(staging_config=staging),
        # Its default O_DIRECT write stream fails on this ext4 disk (the open succeeds, then
        # torch.save's unaligned writes get EINVAL); its Troubleshooting page's setting for file
        # systems without direct I/O is this one.
        storage_config=LocalFileSystemStorageConfig(use_direct_io=False),
    )
    return config.build()


class Compute:
    """The fixed compute phase of the loop (forward + backward stand-in)."""

    def __init__(self) -> None:
        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(COMPUTE_SIZE, COMPUTE_SIZE, generator=gen)
        self.b = torch.randn(COMPUTE_SIZE, COMPUTE_SIZE, generator=gen)
        self.out = torch.empty(COMPUTE_SIZE, COMPUTE_SIZE)

    def run(self) -> None:
        for _ in range(COMPUTE_MATMULS):
            torch.mm(self.a, self.b, out=self.out)


def run_saves(args: argparse.Namespace, mesh: DeviceMesh) -> dict[str, Any]:
    """Two phases on one state; every save is checked later against the increments it claims.

    Saves alone (`args.saves` rounds): a mutation (every value += 1), save, wait until durable: the
    durable time and the RSS after each save. Then the loop (`args.loop_rounds` rounds), each round a
    pair of iterations on the same fixed work: without a save (compute, mutate) and with one (save,
    compute, fence, mutate). The stall is the time the loop is blocked in the save call plus the fence
    before the mutation; the loop overhead is (iteration with a save) - (iteration without).
    """
    layout = state_layout(args.state_bytes, args.world)
    state = build_state(layout, mesh, args.rank, args.world, empty=False)
    root = pathlib.Path(args.dir)
    saver = make_saver(args.method, root, args.rank)
    increments = 0

    def mutate() -> None:
        nonlocal increments
        for tensor in state.values():
            tensor.to_local().add_(1.0)
        increments += 1

    def settle(step: int, wait_durable: Callable[[], float]) -> float:
        durable = wait_durable()
        dist.barrier()
        # Peers keep every step; drop the one before (outside the timed region) to bound the disk.
        previous = root / f"step-{step - 1}"
        if not args.method.startswith("elastra") and args.rank == 0 and previous.exists():
            shutil.rmtree(previous)
        return durable

    rss_before = rss_bytes()
    calls, durables, rss_after, saved_increments, cpu = [], [], [], {}, []
    for step in range(1, args.saves + 1):
        mutate()
        dist.barrier()
        cpu_before = cpu_seconds()
        start = time.perf_counter()
        wait_durable = saver.save(step, state)
        calls.append(time.perf_counter() - start)
        saver.fence()
        saved_increments[step] = increments
        durable = wait_durable()
        cpu.append(cpu_seconds() - cpu_before)  # everything this save cost, on every core
        durables.append(settle(step, lambda durable=durable: durable))  # type: ignore[misc]
        rss_after.append(rss_bytes())
    compute = Compute()
    compute.run()  # warm up
    stalls, overheads, plain_iterations = [], [], []
    for round_ in range(args.loop_rounds):
        step = args.saves + round_ + 1
        dist.barrier()
        start = time.perf_counter()
        compute.run()
        mutate()
        plain = time.perf_counter() - start
        dist.barrier()
        start = time.perf_counter()
        wait_durable = saver.save(step, state)
        returned = time.perf_counter()
        saved_increments[step] = increments
        compute.run()
        fenced = time.perf_counter()
        saver.fence()
        mutating = time.perf_counter()
        mutate()
        end = time.perf_counter()
        stalls.append((returned - start) + (mutating - fenced))
        overheads.append((end - start) - plain)
        plain_iterations.append(plain)
        settle(step, wait_durable)
    saver.finish()
    dist.barrier()
    last = args.saves + args.loop_rounds
    return {
        "stall_s": stalls,
        "loop_overhead_s": overheads,
        "loop_iteration_s": plain_iterations,
        "save_call_alone_s": calls,
        "durable_s": durables,
        "cpu_s_per_save": cpu,
        "rss_after_each_save_bytes": rss_after,
        "rss_before_saves_bytes": rss_before,
        "peak_rss_bytes": peak_rss_bytes(),
        "last_step": last,
        "last_increments": saved_increments[last],
    }


# --------------------------------------------------------------------------------------- restore


def run_restore(args: argparse.Namespace, mesh: DeviceMesh) -> dict[str, Any]:
    """Restore the newest checkpoint of `args.method` (saved by `args.saved_world` ranks sharded by rows).

    On 1 rank the target is the full tensors (2->1); on 2 ranks it is sharded by columns (2->2
    resharded). `args.rounds` times: zero the target, evict the checkpoint from the page cache, time
    the load, check every value against the step it claims.
    """
    saved_layout = state_layout(args.state_bytes, args.saved_world)
    state: dict[str, DTensor] = {}
    if args.method != "torch_save":  # torch.load allocates what it reads; the others fill a target
        state = build_column_target(saved_layout, mesh, args.world)
    root = pathlib.Path(args.dir)
    step = args.last_step
    times, evicted = [], 0
    for _ in range(args.rounds):
        for tensor in state.values():
            tensor.to_local().zero_()
        if args.rank == 0:
            evicted = evict_from_page_cache(root)
        dist.barrier()
        start = time.perf_counter()
        restored, shards = load_newest(args.method, root, step, args.saved_world, state)
        times.append(time.perf_counter() - start)
        if restored != step:
            raise RuntimeError(f"{args.method}: restored step {restored}, expected the newest {step}")
        check_restored(args, saved_layout, state, shards, args.last_increments)
        del shards
    raw = raw_read_needed(args, root / f"step-{step}") if args.raw_read_needed else []
    return {
        "restore_s": times,
        "raw_read_needed_s": raw,
        "peak_rss_bytes": peak_rss_bytes(),
        "checkpoint_dir_bytes": evicted,
    }


def raw_read_needed(args: argparse.Namespace, step_dir: pathlib.Path) -> list[float]:
    """The floor of a restore 2->2 by columns: every rank at once reads, after the same eviction, the
    bytes its target needs with plain sequential reads into a prefaulted buffer.

    A rank's columns are half of every saved row, and a row (4 KiB) is one page, so every page of
    every shard file holds bytes each rank needs: the bytes a rank must read from the disk are the
    shard files, whole. (The checkpoint's small metadata files are read too.)"""
    files = sorted(p for p in step_dir.iterdir() if p.is_file())
    into = bytearray(max(f.stat().st_size for f in files))
    into[:] = bytes(len(into))  # fault the pages in
    times = []
    for _ in range(args.rounds):
        if args.rank == 0:
            evict_from_page_cache(step_dir)
        dist.barrier()
        start = time.perf_counter()
        for path in files:
            with open(path, "rb", buffering=0) as source:
                view = memoryview(into)
                while count := source.readinto(view):
                    view = view[count:]
        times.append(time.perf_counter() - start)
    return times


def check_restored(
    args: argparse.Namespace,
    layout: list[TensorSpec],
    state: dict[str, DTensor],
    shards: list[dict[str, torch.Tensor]],
    increments: int,
) -> None:
    """Raise unless every restored value equals the base values plus `increments` (what was saved)."""
    columns = COLUMNS // args.world
    for spec in layout:
        if shards:
            rows = spec.global_rows // args.saved_world
            pieces = [(shard[spec.name], base_values(spec, r * rows, rows)) for r, shard in enumerate(shards)]
        else:
            full = base_values(spec, 0, spec.global_rows)
            mine = full[:, args.rank * columns : (args.rank + 1) * columns]
            pieces = [(state[spec.name].to_local(), mine)]
        for got, base in pieces:
            if not torch.equal(got, base + increments):
                raise RuntimeError(f"{args.method}: restored {spec.name} differs from what was saved")


def load_newest(
    method: str, root: pathlib.Path, step: int, saved_world: int, state: dict[str, DTensor]
) -> tuple[int, list[dict[str, torch.Tensor]]]:
    """Load `method`'s checkpoint of `step` (Elastra: its newest); the step loaded and, for torch.save,
    the rank files' contents (the others load into `state` in place)."""
    if method == "torch_save":
        files = [root / f"step-{step}" / f"rank-{r}.pt" for r in range(saved_world)]
        return step, [torch.load(path, weights_only=True) for path in files]
    if method in ("dcp_save", "dcp_async_save"):
        dcp.load(state, checkpoint_id=str(root / f"step-{step}"))
        return step, []
    if method == "torch_checkpointing":
        manager = torch_checkpointing_manager()
        try:
            manager.load(str(root / f"step-{step}"), into={"model": state})
        finally:
            manager.close()
        return step, []
    from elastra.checkpoint import Checkpointer

    return Checkpointer(str(root), local_dir=None, keep=3, process_group=None).load(state), []


# -------------------------------------------------------------------------------------------- S3


def s3_client() -> Any:
    """A plain boto3 client with its defaults, pointed at the benchmark's S3 (the AWS_* environment)."""
    import boto3

    return boto3.client("s3")


def run_s3_save(args: argparse.Namespace, mesh: DeviceMesh) -> dict[str, Any]:
    """Elastra saves to S3 (time until the manifest is committed), then raw boto3 `upload_fileobj` (its
    default transfer settings) of the same bytes, each rank at once, `args.saves` rounds of each."""
    from elastra.checkpoint import Checkpointer

    layout = state_layout(args.state_bytes, args.world)
    state = build_state(layout, mesh, args.rank, args.world, empty=False)
    checkpointer = Checkpointer(f"s3://{args.bucket}/elastra", local_dir=None, keep=2, process_group=None)
    durables, cpu, sizes = [], [], []
    for step in range(1, args.saves + 1):
        for tensor in state.values():
            tensor.to_local().add_(1.0)
        dist.barrier()
        cpu_before = cpu_seconds()
        info = checkpointer.save(step, state).wait()
        assert info is not None
        cpu.append(cpu_seconds() - cpu_before)
        durables.append(info.commit_seconds)
        sizes.append(info.bytes)
    checkpointer.close()
    blob = b"".join(t.to_local().numpy().tobytes() for t in state.values())
    client = s3_client()
    raw = []
    for round_ in range(args.saves):
        dist.barrier()
        start = time.perf_counter()
        client.upload_fileobj(io.BytesIO(blob), args.bucket, f"raw/{round_ % 2}/rank-{args.rank}")
        raw.append(time.perf_counter() - start)
    dist.barrier()
    return {"durable_s": durables, "cpu_s_per_save": cpu, "raw_upload_s": raw, "last_step": args.saves,
            "checkpoint_bytes": sizes[-1], "raw_bytes": len(blob)}  # fmt: skip


def run_s3_restore(args: argparse.Namespace, mesh: DeviceMesh) -> dict[str, Any]:
    """Elastra's 2->1 restore from S3, then raw boto3 `download_fileobj` (its defaults: parallel ranged
    GETs) of the same bytes (both ranks' raw objects), `args.rounds` rounds of each."""
    from elastra.checkpoint import Checkpointer

    saved_layout = state_layout(args.state_bytes, args.saved_world)
    state = build_column_target(saved_layout, mesh, args.world)
    times = []
    checkpointer = Checkpointer(f"s3://{args.bucket}/elastra", local_dir=None, keep=2, process_group=None)
    for _ in range(args.rounds):
        for tensor in state.values():
            tensor.to_local().zero_()
        start = time.perf_counter()
        restored = checkpointer.load(state)
        times.append(time.perf_counter() - start)
        if restored != args.last_step:
            raise RuntimeError(f"S3 restore: restored step {restored}, expected {args.last_step}")
        check_restored(args, saved_layout, state, [], args.last_increments)
    checkpointer.close()
    client = s3_client()
    raw = []
    for _ in range(args.rounds):
        start = time.perf_counter()
        for rank in range(args.saved_world):
            sink = io.BytesIO()
            client.download_fileobj(args.bucket, f"raw/0/rank-{rank}", sink)
        raw.append(time.perf_counter() - start)
    return {"restore_s": times, "raw_download_s": raw}


# ---------------------------------------------------------------------------------------- floors


def run_floors(args: argparse.Namespace, mesh: DeviceMesh) -> dict[str, Any]:
    """memcpy into preallocated buffers; raw sequential write + fsync; raw read (rank 0 reads all files)."""
    layout = state_layout(args.state_bytes, args.world)
    locals_ = [t.to_local() for t in build_state(layout, mesh, args.rank, args.world, empty=False).values()]
    buffers = [torch.empty_like(t) for t in locals_]
    for buffer, tensor in zip(buffers, locals_, strict=True):
        buffer.copy_(tensor)  # fault the pages in: "preallocated" means ready to copy into
    memcpy = []
    for _ in range(args.saves):
        dist.barrier()
        start = time.perf_counter()
        for buffer, tensor in zip(buffers, locals_, strict=True):
            buffer.copy_(tensor)
        memcpy.append(time.perf_counter() - start)
    del buffers
    root = pathlib.Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    mine = root / f"rank-{args.rank}.bin"
    writes = []
    for _ in range(args.io_rounds):
        dist.barrier()
        start = time.perf_counter()
        with open(mine, "wb", buffering=0) as out:
            for tensor in locals_:
                view = memoryview(tensor.numpy()).cast("B")
                while view:
                    view = view[out.write(view) :]
            os.fsync(out.fileno())
        writes.append(time.perf_counter() - start)
    dist.barrier()
    reads: list[float] = []
    if args.rank == 0:
        files = [root / f"rank-{r}.bin" for r in range(args.world)]
        into = bytearray(max(f.stat().st_size for f in files))
        into[:] = bytes(len(into))  # fault the pages in
        for _ in range(args.io_rounds):
            evict_from_page_cache(root)
            start = time.perf_counter()
            for path in files:
                with open(path, "rb", buffering=0) as source:
                    view = memoryview(into)
                    while count := source.readinto(view):
                        view = view[count:]
            reads.append(time.perf_counter() - start)
    dist.barrier()
    return {"memcpy_s": memcpy, "disk_write_s": writes, "disk_read_s": reads}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--role", choices=("save", "restore", "floors", "s3save", "s3restore"), required=True)
    parser.add_argument("--bucket", default="", help="S3 roles: the bucket (endpoint from AWS_* env)")
    parser.add_argument("--method", default="floors")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--world", type=int, required=True)
    parser.add_argument("--saved-world", type=int, default=2, help="restore: ranks that saved")
    parser.add_argument("--state-bytes", type=int, required=True, help="state per rank of the saving job")
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--io-rounds", type=int, default=3, help="floors: rounds of raw write and read")
    parser.add_argument("--rounds", type=int, default=3, help="restore: rounds (median)")
    parser.add_argument(
        "--raw-read-needed", action="store_true", help="restore: also time the raw read of the bytes needed"
    )
    parser.add_argument("--last-step", type=int, default=0)
    parser.add_argument("--last-increments", type=int, default=0, help="restore: mutations before it")
    parser.add_argument("--loop-rounds", type=int, default=5, help="save: rounds of the training loop")
    parser.add_argument("--dir", required=True, help="checkpoint root of this method")
    parser.add_argument("--result", required=True, help="where this rank writes its JSON")
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    torch.set_num_threads(args.threads)
    dist.init_process_group("gloo", rank=args.rank, world_size=args.world)
    try:
        mesh = init_device_mesh("cpu", (args.world,))
        role = {
            "save": run_saves,
            "restore": run_restore,
            "floors": run_floors,
            "s3save": run_s3_save,
            "s3restore": run_s3_restore,
        }[args.role]
        result = role(args, mesh)
    finally:
        dist.destroy_process_group()
    pathlib.Path(args.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
