"""Running the labeling over several processes (``torchrun``): who does what, and who writes the manifest.

Work is cut into global batches of sequences (batch ``k`` holds sequences ``k*B .. k*B+B-1`` whatever the
number of processes), and each rank takes a contiguous run of whole batches. A sequence therefore meets the
teacher in the same batch, with the same padding, in every run, and with row ids that depend only on its global
position the labels do not depend on the world size: concatenating the shards in rank order gives exactly
what one process writes.

Each rank writes ``shard-RRRRR-of-WWWWW.slbl``; when all are complete, rank 0 writes ``manifest.json`` (so
across nodes the output directory must be on a file system every rank sees).
The final wait uses a gloo group with a long timeout, so a rank that finishes hours earlier (after a
resume, say) waits without tripping NCCL's watchdog. Under NCCL the default group is created on the GPU
backend as users of ``torch.distributed`` expect; the CPU group carries the little coordination there is.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparselabels.errors import CompatibilityError, SparseLabelsError
from sparselabels.io.manifest import MANIFEST_NAME, read_manifest, write_manifest
from sparselabels.io.shards import RUN_SHARD_RE, SHARD_SUFFIX, run_shard_name

DEFAULT_INIT_TIMEOUT = _dt.timedelta(minutes=30)
DEFAULT_WAIT_TIMEOUT = _dt.timedelta(days=7)


@dataclass
class World:
    """This process's place among its peers. ``group`` is the CPU (gloo) group used for coordination."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    group: Any = None
    created: bool = False  # whether this module initialised the default process group
    _torch_dist: Any = field(default=None, repr=False)

    @property
    def distributed(self) -> bool:
        return self.size > 1


def env_world() -> tuple[int, int, int]:
    """(rank, world size, local rank) from the variables ``torchrun`` sets; (0, 1, 0) outside it."""
    def read(name: str, default: int) -> int:
        value = os.environ.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            raise SparseLabelsError(f"environment variable {name}={value!r} is not an integer") from None

    size = read("WORLD_SIZE", 1)
    rank = read("RANK", 0)
    local = read("LOCAL_RANK", 0)
    if size < 1 or not 0 <= rank < size:
        raise SparseLabelsError(f"RANK={rank} and WORLD_SIZE={size} are inconsistent")
    return rank, size, local


def init(device_type: str, *, init_timeout: _dt.timedelta = DEFAULT_INIT_TIMEOUT,
         wait_timeout: _dt.timedelta = DEFAULT_WAIT_TIMEOUT) -> World:
    """Join (or create) the process group when there are several ranks; NCCL for GPUs, gloo for CPUs."""
    rank, size, local = env_world()
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        rank, size = dist.get_rank(), dist.get_world_size()
        created = False
    elif size > 1:
        if not dist.is_available():
            raise SparseLabelsError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        backend = "nccl" if device_type == "cuda" else "gloo"
        if backend == "nccl":
            import torch

            torch.cuda.set_device(local)
        dist.init_process_group(backend=backend, timeout=init_timeout)
        created = True
    else:
        return World()
    if size == 1:
        return World(created=created, _torch_dist=dist)
    group = dist.new_group(backend="gloo", timeout=wait_timeout)
    return World(rank, size, local, group, created, dist)


def all_gather(world: World, value: Any) -> list[Any]:
    """Every rank's ``value`` (picklable), in rank order; ``[value]`` for one process."""
    if not world.distributed:
        return [value]
    out: list[Any] = [None] * world.size
    world._torch_dist.all_gather_object(out, value, group=world.group)
    return out


def barrier(world: World) -> None:
    if world.distributed:
        world._torch_dist.barrier(group=world.group)


def finish(world: World) -> None:
    """Destroy what :func:`init` created (a group the caller made is left alone)."""
    if world._torch_dist is None:
        return
    if world.group is not None:
        world._torch_dist.destroy_process_group(world.group)
        world.group = None
    if world.created:
        world._torch_dist.destroy_process_group()
        world.created = False


def batch_slice(num_batches: int, rank: int, world_size: int) -> range:
    """The contiguous run of global batches that ``rank`` labels (sizes differ by at most one)."""
    return range(num_batches * rank // world_size, num_batches * (rank + 1) // world_size)


def check_no_foreign_shards(out: Path, world_size: int) -> None:
    """Refuse a directory holding shards (complete or partial) of a run with another number of ranks, other
    label files, or a manifest over other files: the run's manifest would replace it, and the directory would
    read as something else than before."""
    if not out.is_dir():
        return
    ours = {run_shard_name(r, world_size) for r in range(world_size)}
    for p in out.iterdir():
        m = RUN_SHARD_RE.match(p.name)
        if m and int(m.group(2)) != world_size:
            raise CompatibilityError(
                f"{str(out)!r} holds {p.name}, written by a run with {int(m.group(2))} ranks, but this run has "
                f"{world_size}; resume with the same number of ranks, use another output directory, or delete that "
                f"run's shards to start again with {world_size}"
            )
        if not m and (p.name.endswith(SHARD_SUFFIX) or p.name.endswith(SHARD_SUFFIX + ".partial")):
            raise CompatibilityError(f"{str(out)!r} holds {p.name}, which is not a shard of this run; use another "
                                     "output directory")
    manifest = out / MANIFEST_NAME
    if manifest.exists():
        try:
            listed = {entry["path"] for entry in read_manifest(manifest)["shards"]}
        except SparseLabelsError:
            listed = None
        if listed is None or not listed <= ours:
            raise CompatibilityError(f"{str(manifest)!r} lists other files than this run's shards; use another "
                                     "output directory")


def write_run_manifest(out: Path, world_size: int) -> Path:
    """Rank 0's last act: the manifest over every rank's shard, in rank order."""
    shards = [out / run_shard_name(r, world_size) for r in range(world_size)]
    missing = [s.name for s in shards if not s.is_file()]
    if missing:
        raise SparseLabelsError(f"cannot write the manifest in {str(out)!r}: shards {missing} are not complete")
    return write_manifest(out / MANIFEST_NAME, shards)
