"""Triton sampler: teacher logits → RS-KD (id, count) labels, reading each logit about once.

Exact inverse-CDF sampling of ``rounds`` draws per row with a two-level (hierarchical) prefix sum, in two
kernels: pass 1 streams the logits, one program per (row, block); the sampling kernel then takes one row at a
time per program (a persistent grid; each program owns a small scratch area that stays in L2):

1. **Pass 1 — sub-tile statistics.** The row's first ``vocab_size`` logits are read in blocks of ``BLOCK``
   ids, each seen as ``BPS`` sub-tiles of ``SUB`` ids. Per sub-tile: its max ``m`` and ``s = Σ 2^((x - m)·c)``
   with ``c = log2(e) / temperature`` (float32; ``s`` is a sum of at most ``SUB`` terms ≤ 1, so it keeps ~7
   digits), written to a ``[rows, sub-tiles]`` array (8 bytes per ``SUB`` logits: 3.1% of the bytes read for
   bf16 with ``SUB = 128``, written once and read once) that the sampling kernel loads into registers; NaN /
   +inf show up as ``m = +inf`` or ``s = NaN`` and set the row's status. (``KernelConfig(split=False)`` runs
   pass 1 inside the sampling kernel instead: one launch, but while a program does steps 2-4 for a row it reads
   no logits; on an H200 it measures 1.28x slower at the same warps, 1.60 against 1.25 ms.)
2. **Top level.** Sub-tile masses ``T = s · 2^((m - M)·c)`` (``M`` the row max) are prefix-summed in
   **float64**, so each step's rounding is ~1e-16 of the row total: a 256K-id row keeps its tail.
3. **Uniforms.** The row's ``rounds`` uniforms come from Philox4x32-10 keyed by the seed and counted by
   (row id, draw) — bit-identical to ``rng.sorted_uniforms`` — as 53-bit integers, sorted in registers
   (``tl.sort``, a bitonic network) and scaled to float64. A 16-ary search over the float64 sub-tile CDF gives
   each draw its sub-tile and its relative position ``f ∈ [0, 1)`` inside it.
4. **Pass 2 — merge inside the sub-tiles that received draws.** Only those sub-tiles (about as many as the
   row's distinct ids, a few percent of the row) are read again, ``BATCH`` at a time; their float64 prefix sums
   go to the program's scratch and each draw is found by a 16-ary search. Draws come out sorted by id (sorted
   uniforms, monotone inverse CDF), so (id, count) runs fall out of a compare with the previous lane — no
   sort of the vocabulary, no softmax in memory. (Lane shifts go through a ``rounds``-entry scratch: registers
   cannot be indexed, and lanes-by-lanes compare matrices cost ~80 registers per thread, i.e. occupancy.)

Zero-mass ids (``-inf`` logits, padding past ``vocab_size``, underflow) have empty CDF intervals and can never
be picked; a target that rounding pushes to the end of an interval goes to the last id (or sub-tile) whose
prefix first reaches the total, which always has positive mass. The kernel writes per row up to ``rounds``
(id, count) slots and a run count; a cumsum and a compaction kernel make the CSR arrays, and the host reads two
numbers (total labels, any bad row) in one transfer.

Imported lazily by ``sparselabels.sampling`` (only when this backend is used), so the package works without
triton. Runs on CPU tensors under ``TRITON_INTERPRET=1`` (tests, small sizes).
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from sparselabels.errors import InputError

from .checks import SamplingRequest, prepare_sampling, raise_for_bad_row
from .labels import SampledLabels
from .rng import (
    PHILOX_M0,
    PHILOX_M1,
    PHILOX_W0,
    PHILOX_W1,
    STREAM_SORTED_UNIFORMS,
)

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
LOG2_E = 1.4426950408889634
SEARCH_FAN = 16  # probes per lane per search level

_M0: tl.constexpr = tl.constexpr(PHILOX_M0)
_M1: tl.constexpr = tl.constexpr(PHILOX_M1)
_W0: tl.constexpr = tl.constexpr(PHILOX_W0)
_W1: tl.constexpr = tl.constexpr(PHILOX_W1)
_STREAM: tl.constexpr = tl.constexpr(STREAM_SORTED_UNIFORMS)
_NONFINITE: tl.constexpr = tl.constexpr(1)  # status bit: NaN or +inf among the row's logits
_NO_FINITE: tl.constexpr = tl.constexpr(2)  # status bit: no finite logit in the row


@triton.jit
def _philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on uint32 tensors; the same function as ``rng.philox4x32_10``."""
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, _M0)
        lo0 = c0 * _M0
        hi1 = tl.umulhi(c2, _M1)
        lo1 = c2 * _M1
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + _W0
        k1 = k1 + _W1
    return c0, c1, c2, c3


@triton.jit
def _sorted_uniforms(row_id, seed_lo, seed_hi, rounds, NPAD: tl.constexpr):
    """The row's uniforms (float64, ascending) in lanes [0, rounds); lanes beyond hold 1.0."""
    lanes = tl.arange(0, NPAD)
    zero = tl.zeros([NPAD], tl.uint32)
    c0 = (lanes // 2).to(tl.uint32)
    c1 = zero + (row_id & 0xFFFFFFFF).to(tl.uint32)
    c2 = zero + (row_id >> 32).to(tl.uint32)
    c3 = zero + _STREAM
    # the key as vectors: a seed half that is a compile-time int (Triton specializes an int argument equal to 1
    # unless told not to) has no .to(); adding it to a tensor works either way
    k0 = (zero.to(tl.int64) + seed_lo).to(tl.uint32)
    k1 = (zero.to(tl.int64) + seed_hi).to(tl.uint32)
    w0, w1, w2, w3 = _philox4x32_10(c0, c1, c2, c3, k0, k1)
    even = (lanes % 2) == 0
    hi = tl.where(even, w0, w2).to(tl.int64)
    lo = tl.where(even, w1, w3).to(tl.int64)
    key = (hi << 21) | (lo >> 11)
    key = tl.where(lanes < rounds, key, 1 << 53)
    return tl.sort(key).to(tl.float64) * 1.1102230246251565e-16  # 2^-53: exact


@triton.jit
def _previous_lane(values, lanes, shift_ptr, fill):
    """``values`` moved one lane up (lane 0 gets ``fill``): a round trip through the program's scratch, since
    registers cannot be indexed (the alternative, a lanes-by-lanes compare, costs ~80 registers per thread)."""
    tl.debug_barrier()  # earlier readers of the scratch are done
    tl.store(shift_ptr + lanes, values)
    tl.debug_barrier()
    return tl.load(shift_ptr + lanes - 1, mask=lanes > 0, other=fill)


@triton.jit
def _count_at_most(base_ptr, lane_offset, target, active, N: tl.constexpr, LEVELS: tl.constexpr, STRIDE0: tl.constexpr):
    """Per lane: how many of the N nondecreasing float64 values at ``base_ptr + lane_offset`` are <= target.

    A 16-ary search: each level probes 16 evenly spaced entries of the current range per lane (one load of
    [lanes, 16]), so N = 1024 takes 3 dependent loads instead of 10. Probes past N count as +inf.
    """
    probe = tl.arange(0, 16) + 1
    pos = tl.zeros_like(lane_offset).to(tl.int32)
    stride = STRIDE0
    for _ in tl.static_range(LEVELS):
        idx = pos[:, None] + probe[None, :] * stride - 1
        ok = active[:, None] & (idx < N)
        values = tl.load(base_ptr + lane_offset[:, None] + idx, mask=ok, other=float("inf"))
        pos = pos + tl.sum(((values <= target[:, None]) & ok).to(tl.int32), axis=1) * stride
        stride = stride // 16
    return pos


@triton.jit
def _sub_tile_stats(x, scale):
    """Max and scaled sum of exponentials of each row of ``x`` [n, SUB] (float32), and a non-finite flag."""
    m = tl.max(x, axis=1)
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    s = tl.sum(tl.exp2((x - m_ref[:, None]) * scale), axis=1)
    bad = tl.max(((m == float("inf")) | (s != s)).to(tl.int32), axis=0)
    return m, s, bad


@triton.jit
def _sub_tile_stats_kernel(
    logits_ptr, stride_row, vocab, scale, stats_max_ptr, stats_sum_ptr, SUB: tl.constexpr, BPS: tl.constexpr
):
    """Pass 1 on its own (``KernelConfig.split``): one program per (row, block of ``BPS`` sub-tiles) writes the
    sub-tiles' max and sum of exponentials, so the whole GPU streams the logits as a plain reduction does.
    Row r's statistics start at ``r * cdiv(vocab, BPS * SUB) * BPS`` (every sub-tile of the launched blocks)."""
    row = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1)
    sub_rows = tl.arange(0, BPS)
    cols = b * (BPS * SUB) + sub_rows[:, None] * SUB + tl.arange(0, SUB)[None, :]
    x = tl.load(logits_ptr + row * stride_row + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
    m, s, _ = _sub_tile_stats(x, scale)
    out = row * (tl.cdiv(vocab, BPS * SUB) * BPS) + b * BPS + sub_rows
    tl.store(stats_max_ptr + out, m)
    tl.store(stats_sum_ptr + out, s)


@triton.jit(do_not_specialize=["seed_lo", "seed_hi"])  # with the halves passed as int32: one kernel for all seeds
def _sample_rows_kernel(
    logits_ptr,
    stride_row,
    num_rows,
    vocab,
    rounds,
    row_ids_ptr,
    seed_lo,
    seed_hi,
    scale,
    slot_ids_ptr,
    slot_counts_ptr,
    runs_ptr,
    status_ptr,
    any_bad_ptr,
    cdf_scratch_ptr,
    local_scratch_ptr,
    shift_scratch_ptr,
    stats_max_ptr,
    stats_sum_ptr,
    NPAD: tl.constexpr,
    SUB: tl.constexpr,
    BPS: tl.constexpr,
    NB_PAD: tl.constexpr,
    BATCH: tl.constexpr,
    TOP_LEVELS: tl.constexpr,
    TOP_STRIDE0: tl.constexpr,
    SUB_LEVELS: tl.constexpr,
    SUB_STRIDE0: tl.constexpr,
    PIPELINE: tl.constexpr,
    STATS_GIVEN: tl.constexpr,
):
    BLOCK: tl.constexpr = BPS * SUB
    NSUB_PAD: tl.constexpr = NB_PAD * BPS
    pid = tl.program_id(0)
    num_programs = tl.num_programs(0)
    cdf_base = cdf_scratch_ptr + pid.to(tl.int64) * NSUB_PAD
    local_base = local_scratch_ptr + pid.to(tl.int64) * (BATCH * SUB)
    shift_base = shift_scratch_ptr + pid.to(tl.int64) * NPAD
    lanes = tl.arange(0, NPAD)
    sub_rows = tl.arange(0, BPS)
    sub_cols = tl.arange(0, SUB)
    block_offsets = sub_rows[:, None] * SUB + sub_cols[None, :]
    block_index = tl.arange(0, NB_PAD)
    batch_index = tl.arange(0, BATCH)
    one_minus_ulp = tl.full([NPAD], 0.9999999999999999, tl.float64)  # largest float64 below 1

    for step in range(0, tl.cdiv(num_rows - pid, num_programs)):
        row = (pid + step * num_programs).to(tl.int64)
        row_ptr = logits_ptr + row * stride_row

        # ---- pass 1: per-sub-tile max and sum of exponentials, kept in registers ------------------------------
        if STATS_GIVEN:  # written by _sub_tile_stats_kernel (split mode); loaded into registers
            blocks = tl.cdiv(vocab, BLOCK)
            stat_offsets = row * (blocks * BPS) + block_index[:, None] * BPS + sub_rows[None, :]
            written = (block_index < blocks)[:, None]
            sub_max = tl.load(stats_max_ptr + stat_offsets, mask=written, other=float("-inf"))
            sub_sum = tl.load(stats_sum_ptr + stat_offsets, mask=written, other=0.0)
            bad_stats = ((sub_max == float("inf")) | (sub_sum != sub_sum)).to(tl.int32)
            status = tl.max(tl.max(bad_stats, axis=1), axis=0) * _NONFINITE
        else:
            sub_max = tl.full([NB_PAD, BPS], float("-inf"), tl.float32)
            sub_sum = tl.zeros([NB_PAD, BPS], tl.float32)
            status = 0
            full_blocks = vocab // BLOCK
            for b in tl.range(0, full_blocks, num_stages=PIPELINE):
                x = tl.load(row_ptr + b * BLOCK + block_offsets).to(tl.float32)
                m, s, bad = _sub_tile_stats(x, scale)
                sub_max = tl.where(block_index[:, None] == b, m[None, :], sub_max)
                sub_sum = tl.where(block_index[:, None] == b, s[None, :], sub_sum)
                status = status | (bad * _NONFINITE)
            cols = full_blocks * BLOCK + block_offsets  # the last, partial block (empty when BLOCK divides vocab)
            x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
            m, s, bad = _sub_tile_stats(x, scale)
            sub_max = tl.where(block_index[:, None] == full_blocks, m[None, :], sub_max)
            sub_sum = tl.where(block_index[:, None] == full_blocks, s[None, :], sub_sum)
            status = status | (bad * _NONFINITE)
        row_max = tl.max(tl.max(sub_max, axis=1), axis=0)
        status = status | tl.where(row_max == float("-inf"), _NO_FINITE, 0)

        # ---- top level: float64 prefix over sub-tile masses --------------------------------------------------
        row_ref = tl.where(row_max == float("-inf"), 0.0, row_max)
        mass = sub_sum.to(tl.float64) * tl.exp2((sub_max - row_ref) * scale).to(tl.float64)
        cdf = tl.cumsum(tl.reshape(mass, [NSUB_PAD]), axis=0)
        total = tl.max(cdf, axis=0)
        last_sub = tl.sum((cdf < total).to(tl.int32), axis=0)  # where the prefix first reaches the total
        tl.debug_barrier()  # every lane is done with the previous row's scratch
        tl.store(cdf_base + tl.arange(0, NSUB_PAD), cdf)
        tl.debug_barrier()

        # ---- sorted uniforms → sub-tile and relative position of each draw ---------------------------------
        valid = lanes < rounds
        u = _sorted_uniforms(tl.load(row_ids_ptr + row), seed_lo, seed_hi, rounds, NPAD)
        target = u * total
        tile = _count_at_most(cdf_base, lanes * 0, target, valid, NSUB_PAD, TOP_LEVELS, TOP_STRIDE0)
        tile = tl.minimum(tile, last_sub)
        upper = tl.load(cdf_base + tile, mask=valid, other=1.0)
        lower = tl.load(cdf_base + tile - 1, mask=valid & (tile > 0), other=0.0)
        frac = (target - lower) / (upper - lower)
        frac = tl.minimum(tl.maximum(frac, 0.0), one_minus_ulp)
        tile = tl.where(valid, tile, NSUB_PAD)

        # ---- pass 2: re-read the sub-tiles that received draws, BATCH at a time -----------------------------
        first_of_tile = valid & (tile != _previous_lane(tile, lanes, shift_base, -1))  # lanes are sorted
        tile_rank = tl.cumsum(first_of_tile.to(tl.int32), axis=0) - 1
        num_tiles = tl.sum(first_of_tile.to(tl.int32), axis=0)
        draw = tl.zeros([NPAD], tl.int32)
        for batch_start in range(0, num_tiles, BATCH):
            slot = batch_start + batch_index
            pick = first_of_tile[None, :] & (tile_rank[None, :] == slot[:, None])
            batch_tile = tl.sum(tl.where(pick, tile[None, :], 0), axis=1)
            batch_cols = batch_tile[:, None] * SUB + sub_cols[None, :]
            live = (slot < num_tiles)[:, None] & (batch_cols < vocab)
            batch_x = tl.load(row_ptr + batch_cols, mask=live, other=float("-inf")).to(tl.float32)
            batch_max = tl.max(batch_x, axis=1)
            batch_ref = tl.where(batch_max == float("-inf"), 0.0, batch_max)
            local_cdf = tl.cumsum(tl.exp2((batch_x - batch_ref[:, None]) * scale).to(tl.float64), axis=1)
            local_total = tl.max(local_cdf, axis=1)
            local_last = tl.sum((local_cdf < local_total[:, None]).to(tl.int32), axis=1)
            tl.debug_barrier()
            tl.store(local_base + batch_index[:, None] * SUB + sub_cols[None, :], local_cdf)
            tl.debug_barrier()
            lane_slot = tile_rank - batch_start
            in_batch = valid & (lane_slot >= 0) & (lane_slot < BATCH)
            match = lane_slot[:, None] == batch_index[None, :]
            lane_total = tl.sum(tl.where(match, local_total[None, :], 0.0), axis=1)
            lane_last = tl.sum(tl.where(match, local_last[None, :], 0), axis=1)
            pos = _count_at_most(local_base, lane_slot * SUB, frac * lane_total, in_batch, SUB, SUB_LEVELS, SUB_STRIDE0)
            pos = tl.minimum(pos, lane_last)
            draw = tl.where(in_batch, tile * SUB + pos, draw)

        # ---- (id, count) runs of the ascending draws: run d starts at lane start[d], ends where d+1 starts -----
        run_start = valid & (draw != _previous_lane(draw, lanes, shift_base, -1))
        out_slot = tl.cumsum(run_start.to(tl.int32), axis=0) - 1
        num_runs = tl.sum(run_start.to(tl.int32), axis=0)
        out_base = row * NPAD
        tl.store(slot_ids_ptr + out_base + out_slot, draw, mask=run_start)
        tl.debug_barrier()
        tl.store(shift_base + out_slot, lanes, mask=run_start)
        tl.debug_barrier()
        start = tl.load(shift_base + lanes, mask=lanes < num_runs, other=0)
        end = tl.load(shift_base + lanes + 1, mask=lanes + 1 < num_runs, other=rounds)
        tl.store(slot_counts_ptr + out_base + lanes, (end - start).to(tl.uint8), mask=lanes < num_runs)
        tl.store(runs_ptr + row, tl.where(status == 0, num_runs, 0).to(tl.int64))
        tl.store(status_ptr + row, status)
        tl.atomic_max(any_bad_ptr, status.to(tl.int64))


@triton.jit
def _compact_kernel(slot_ids_ptr, slot_counts_ptr, indptr_ptr, ids_ptr, counts_ptr, NPAD: tl.constexpr):
    """Copy row r's runs from its fixed slots to ``[indptr[r], indptr[r+1])`` of the CSR arrays."""
    row = tl.program_id(0).to(tl.int64)
    start = tl.load(indptr_ptr + row)
    count = tl.load(indptr_ptr + row + 1) - start
    lanes = tl.arange(0, NPAD)
    keep = lanes < count
    ids = tl.load(slot_ids_ptr + row * NPAD + lanes, mask=keep)
    counts = tl.load(slot_counts_ptr + row * NPAD + lanes, mask=keep)
    tl.store(ids_ptr + start + lanes, ids, mask=keep)
    tl.store(counts_ptr + start + lanes, counts, mask=keep)


# ------------------------------------------------------------------------------------------------------------------
# host side


@dataclass(frozen=True)
class KernelConfig:
    """Tuning knobs. Any valid choice samples the same distribution; ids can differ only at float near-ties.

    ``sub``: ids per sub-tile, the unit pass 2 re-reads (power of 2). ``block``: ids per pass-1 program when
    split, per pass-1 loop step otherwise (a multiple of ``sub``, power of 2). ``batch``: sub-tiles re-read
    together in pass 2. ``split``: pass 1 runs as its own kernel, one program per block of every row, writing
    the sub-tile statistics (8 bytes per sub-tile) that the sampling kernel then reads; otherwise the sampling
    kernel streams the row itself, and reads no logits while it does the per-row work after pass 1 (uniforms,
    searches, pass 2). ``stats_warps``: warps of the split pass-1 kernel. ``pipeline``: pass-1 loads in flight
    per program when not split (Triton software pipelining: ``cp.async`` into shared memory). ``num_warps``,
    ``max_registers``: of the sampling kernel (CUDA; ``None`` lets ptxas choose — it may pick ~190, halving
    occupancy). ``programs_per_sm``: persistent programs per multiprocessor on CUDA; ``None`` derives it from
    the compiled kernel's registers and shared memory.
    """

    sub: int
    block: int
    batch: int = 4
    num_warps: int = 4
    pipeline: int = 3
    max_registers: int | None = 128
    programs_per_sm: int | None = None
    split: bool = True
    stats_warps: int = 4

    def __post_init__(self) -> None:
        for name in ("sub", "block", "batch", "num_warps", "stats_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise InputError(f"KernelConfig.{name} must be a power of 2, got {value}")
        if self.block < self.sub:
            raise InputError(f"KernelConfig.block ({self.block}) must be at least sub ({self.sub})")
        if self.pipeline < 1:
            raise InputError(f"KernelConfig.pipeline must be >= 1, got {self.pipeline}")


def default_config(vocab: int, element_size: int) -> KernelConfig:
    """Sub-tiles small enough that pass 2 re-reads a few percent of a row and few enough (<= ~1024 per row) for
    their statistics to stay in registers; 8 KiB of logits per pass-1 program; pass 1 split from the sampling
    kernel, which runs 4 warps at <= 128 registers (4 programs per SM; ptxas spills some registers to the stack
    there and is still faster). Split mode and the warps were chosen on an H200 by ``tools/bench_sampler.py``'s
    sweep at R = 8,192, V = 128,256 bf16 (``tools/results/bench_sampler.json``, one run): 1.12 ms, against 1.25
    ms with 8 warps and 1.60 ms as one kernel. Pass-2 batch 8 (1.08 ms) and block 8,192 (1.11 ms) differ from
    this by less than one run can tell apart."""
    sub = max(128, _next_pow2(-(-vocab // 1024)))
    block = max(sub, 8192 // element_size)
    return KernelConfig(sub=sub, block=block)


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def _search_levels(n: int) -> tuple[int, int]:
    """Levels and first stride of a 16-ary search over n entries."""
    levels = max(1, math.ceil(math.log2(max(n, 2)) / math.log2(SEARCH_FAN)))
    return levels, SEARCH_FAN ** (levels - 1)


def interpreter_active() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def sample_counts_triton(
    logits: torch.Tensor,
    rounds: int = 50,
    *,
    temperature: float = 1.0,
    vocab_size: int | None = None,
    seed: int | None = None,
    row_ids: torch.Tensor | None = None,
    config: KernelConfig | None = None,
) -> SampledLabels:
    """``sample_counts`` on the Triton kernel (CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``)."""
    request = prepare_sampling(logits, rounds, temperature, vocab_size, seed, row_ids)
    return run_kernel(request, config)


@dataclass
class KernelOutput:
    """What the sampling kernel writes, before compaction (exposed for the benchmark and tests)."""

    slot_ids: torch.Tensor  # int32 [R, NPAD]; row r's runs in slots [0, runs[r])
    slot_counts: torch.Tensor  # uint8 [R, NPAD]
    info: torch.Tensor  # int64 [R + 2]: 0, then the runs of each row (cumsum'd in place into indptr), any-bad flag
    status: torch.Tensor  # int32 [R]: 0, or bit 1 (NaN/+inf) / bit 2 (no finite logit)
    npad: int


@dataclass(frozen=True)
class KernelResources:
    """What the compiler gave the kernel (CUDA): the occupancy behind the persistent grid."""

    registers: int
    spills: int
    shared_bytes: int
    programs_per_sm: int


_RESOURCES: dict[tuple, KernelResources] = {}


def _cuda_options(cfg: KernelConfig) -> dict:
    options: dict = {"num_warps": cfg.num_warps}
    if cfg.max_registers is not None:
        options["maxnreg"] = cfg.max_registers
    return options


def kernel_resources(args: tuple, constants: dict, cfg: KernelConfig, device: torch.device) -> KernelResources:
    """Compile (once per geometry) and read registers / shared memory to size the persistent grid."""
    key = (device.index, args[0].dtype, tuple(sorted(constants.items())), cfg)
    if key in _RESOURCES:
        return _RESOURCES[key]
    try:
        props = triton.runtime.driver.active.utils.get_device_properties(device.index)
        compiled = _sample_rows_kernel.warmup(*args, **constants, **_cuda_options(cfg), grid=(1,))
        compiled._init_handles()
        threads = cfg.num_warps * props.get("warpSize", 32)
        by_registers = props["max_num_regs"] // max(1, compiled.n_regs * threads)
        by_shared = props["max_shared_mem"] // max(1, compiled.metadata.shared)
        by_threads = 2048 // threads  # Hopper (and Ampere): 2,048 threads per multiprocessor
        programs = max(1, min(by_registers, by_shared, by_threads))
        resources = KernelResources(compiled.n_regs, compiled.n_spills, compiled.metadata.shared, programs)
    except Exception as error:  # triton's introspection API moved: size the grid from the config instead
        threads = cfg.num_warps * 32
        programs = max(1, min(2048 // threads, 65536 // (threads * (cfg.max_registers or 255))))
        message = f"sampler: could not read the kernel's occupancy ({error!r}); using {programs} programs per SM"
        warnings.warn(message, RuntimeWarning, stacklevel=3)
        resources = KernelResources(-1, -1, -1, programs)
    if cfg.programs_per_sm is not None:
        resources = KernelResources(resources.registers, resources.spills, resources.shared_bytes, cfg.programs_per_sm)
    _RESOURCES[key] = resources
    return resources


def launch_sampler(request: SamplingRequest, config: KernelConfig | None = None) -> KernelOutput:
    """Run the sampling kernel only (no host sync): per-row (id, count) slots, run counts and status."""
    rows = request.rows
    x = rows.matrix
    if x.dtype not in KERNEL_DTYPES:
        raise InputError(f"the Triton sampler takes float32/bfloat16/float16 logits, got {x.dtype}")
    if not (x.is_cuda or interpreter_active()):
        raise InputError("the Triton sampler needs CUDA logits (or TRITON_INTERPRET=1); use the reference on CPU")
    scale = LOG2_E / request.temperature
    if not math.isfinite(float(torch.tensor(scale, dtype=torch.float32))):
        raise InputError(
            f"temperature {request.temperature!r} is too small for the kernel's float32 arithmetic "
            "(log2(e) / temperature overflows); use backend='reference'"
        )
    if x.stride(-1) != 1:
        x = x.contiguous()
    num_rows, vocab = rows.num_rows, rows.vocab_size
    cfg = config or default_config(vocab, x.element_size())
    constants = geometry(vocab, request.rounds, cfg)
    npad, nsub_pad = constants["NPAD"], constants["NB_PAD"] * constants["BPS"]
    device = x.device
    slot_ids = torch.empty((num_rows, npad), dtype=torch.int32, device=device)
    slot_counts = torch.empty((num_rows, npad), dtype=torch.uint8, device=device)
    info = torch.zeros(num_rows + 2, dtype=torch.int64, device=device)
    status = torch.empty(num_rows, dtype=torch.int32, device=device)
    seed = request.seed
    if cfg.split:  # pass 1 for every row first, as its own kernel
        stats_max, stats_sum = launch_pass1(x, vocab, scale, cfg)
    else:
        stats_max = stats_sum = torch.empty(1, dtype=torch.float32, device=device)  # unused

    def arguments(programs: int) -> tuple:
        return (
            x,
            x.stride(0),
            num_rows,
            vocab,
            request.rounds,
            request.row_ids,
            _as_int32(seed & 0xFFFFFFFF),
            _as_int32(seed >> 32),
            scale,
            slot_ids,
            slot_counts,
            info[1:],
            status,
            info[num_rows + 1 :],
            torch.empty((programs, nsub_pad), dtype=torch.float64, device=device),  # top-level CDF
            torch.empty((programs, cfg.batch * cfg.sub), dtype=torch.float64, device=device),  # pass-2 CDFs
            torch.empty((programs, npad), dtype=torch.int32, device=device),  # lane shifts
            stats_max,
            stats_sum,
        )

    if x.is_cuda:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        per_sm = kernel_resources(arguments(1), constants, cfg, device).programs_per_sm
        programs = max(1, min(num_rows, sms * per_sm))
        _sample_rows_kernel[(programs,)](*arguments(programs), **constants, **_cuda_options(cfg))
    else:  # the interpreter: a few programs, so that the persistent loop is exercised
        programs = max(1, min(num_rows, 3))
        _sample_rows_kernel[(programs,)](*arguments(programs), **constants, num_warps=cfg.num_warps)
    return KernelOutput(slot_ids, slot_counts, info, status, npad)


def _as_int32(half: int) -> int:
    """A seed half (0 <= half < 2**32) as the signed int32 with the same bits: Triton types an int argument by
    its value (i32 below 2**31, else i64), and one type for every seed keeps one compiled kernel."""
    return half - (1 << 32) if half >= 1 << 31 else half


def launch_pass1(x: torch.Tensor, vocab: int, scale: float, cfg: KernelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Split mode's pass 1 over the ``[R, >= vocab]`` logits ``x``: the (max, scaled sum) of every sub-tile, as two
    float32 ``[R, sub-tiles]`` arrays (8 bytes per sub-tile and row, alive until the sampling kernel has run)."""
    bps = cfg.block // cfg.sub
    blocks = triton.cdiv(vocab, cfg.block)
    stats_max = torch.empty((x.shape[0], blocks * bps), dtype=torch.float32, device=x.device)
    stats_sum = torch.empty_like(stats_max)
    _sub_tile_stats_kernel[(x.shape[0], blocks)](
        x, x.stride(0), vocab, scale, stats_max, stats_sum, SUB=cfg.sub, BPS=bps, num_warps=cfg.stats_warps
    )
    return stats_max, stats_sum


_TRITON_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def geometry(vocab: int, rounds: int, cfg: KernelConfig) -> dict[str, int]:
    """The kernel's compile-time constants for a vocabulary, a number of rounds and a config."""
    bps = cfg.block // cfg.sub
    nb_pad = _next_pow2(-(-vocab // cfg.block))
    top_levels, top_stride0 = _search_levels(nb_pad * bps)
    sub_levels, sub_stride0 = _search_levels(cfg.sub)
    return {
        "NPAD": max(2, _next_pow2(rounds)),
        "SUB": cfg.sub,
        "BPS": bps,
        "NB_PAD": nb_pad,
        "BATCH": cfg.batch,
        "TOP_LEVELS": top_levels,
        "TOP_STRIDE0": top_stride0,
        "SUB_LEVELS": sub_levels,
        "SUB_STRIDE0": sub_stride0,
        "PIPELINE": 1 if cfg.split else cfg.pipeline,  # split: no pass-1 loop, so no recompile per value
        "STATS_GIVEN": cfg.split,
    }


def compile_offline(
    vocab: int,
    dtype: torch.dtype,
    *,
    rounds: int = 50,
    config: KernelConfig | None = None,
    arch: int = 90,
    ones: tuple[str, ...] = (),
    kernel: str = "sampling",
):
    """Compile a sampler kernel for an NVIDIA GPU of compute capability ``arch`` on a machine without one:
    ``kernel="sampling"`` (the per-row kernel) or ``"stats"`` (split mode's pass 1).

    Catches what the interpreter cannot (type and shape errors of compiled Triton) and shows what the compiler
    made of it (``.asm['cubin']`` for cuobjdump). The argument types mirror ``launch_sampler``'s call, with the
    16-byte divisibility a contiguous ``[R, V]`` tensor with V % 16 == 0 gets at run time. ``ones`` names int
    arguments to compile as the constant 1, as Triton's launcher does with an int argument equal to 1 (a seed of 1,
    a single row): the kernel body must compile either way.
    """
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    cfg = config or default_config(vocab, torch.empty(0, dtype=dtype).element_size())
    constants = geometry(vocab, rounds, cfg)
    arg_types = {  # every runtime argument of both kernels, typed as launch_sampler / launch_pass1 pass them
        "logits_ptr": "*" + _TRITON_DTYPES[dtype],
        "stride_row": "i32",
        "num_rows": "i32",
        "vocab": "i32",
        "rounds": "i32",
        "row_ids_ptr": "*i64",
        "seed_lo": "i32",
        "seed_hi": "i32",
        "scale": "fp32",
        "slot_ids_ptr": "*i32",
        "slot_counts_ptr": "*u8",
        "runs_ptr": "*i64",
        "status_ptr": "*i32",
        "any_bad_ptr": "*i64",
        "cdf_scratch_ptr": "*fp64",
        "local_scratch_ptr": "*fp64",
        "shift_scratch_ptr": "*i32",
        "stats_max_ptr": "*fp32",
        "stats_sum_ptr": "*fp32",
    }
    if kernel == "sampling":
        fn, options = _sample_rows_kernel, _cuda_options(cfg)
        divisible = ("logits_ptr", "stride_row", "vocab", "row_ids_ptr", "slot_ids_ptr")
    elif kernel == "stats":
        fn, options = _sub_tile_stats_kernel, {"num_warps": cfg.stats_warps}
        constants = {"SUB": constants["SUB"], "BPS": constants["BPS"]}
        divisible = ("logits_ptr", "stride_row", "vocab", "stats_max_ptr", "stats_sum_ptr")
    else:
        raise InputError(f"compile_offline: kernel must be 'sampling' or 'stats', got {kernel!r}")
    types = {name: arg_types[name] for name in fn.arg_names if name in arg_types}  # in the kernel's order
    unknown = [name for name in ones if types.get(name) not in ("i32", "i64")]
    if unknown:
        raise InputError(f"compile_offline: ones={unknown} are not int arguments of the kernel")
    names = list(types) + list(constants)
    signature = {**types, **dict.fromkeys(constants, "constexpr"), **dict.fromkeys(ones, "constexpr")}
    source = ASTSource(
        fn=fn,
        signature=signature,
        constexprs={(names.index(k),): v for k, v in {**constants, **dict.fromkeys(ones, 1)}.items()},
        attrs={(names.index(n),): [["tt.divisibility", 16]] for n in divisible if n not in ones},
    )
    return triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)


def run_kernel(request: SamplingRequest, config: KernelConfig | None = None) -> SampledLabels:
    """Kernel, then CSR assembly: cumsum of run counts, compaction, and one host read of (labels, any bad)."""
    num_rows = request.rows.num_rows
    device = request.rows.matrix.device
    if num_rows == 0:
        return SampledLabels(
            torch.empty(0, dtype=torch.int32, device=device),
            torch.empty(0, dtype=torch.uint8, device=device),
            torch.zeros(1, dtype=torch.int64, device=device),
        )
    out = launch_sampler(request, config)
    info = out.info
    indptr = info[: num_rows + 1]
    indptr[1:].cumsum_(0)
    ids = torch.empty(num_rows * request.rounds, dtype=torch.int32, device=device)  # distinct ids <= rounds
    counts = torch.empty(num_rows * request.rounds, dtype=torch.uint8, device=device)
    _compact_kernel[(num_rows,)](out.slot_ids, out.slot_counts, indptr, ids, counts, NPAD=out.npad, num_warps=1)
    total, any_bad = info[num_rows:].tolist()
    if any_bad:
        bad_row = int(torch.nonzero(out.status)[0, 0])
        raise_for_bad_row(request.rows, bad_row, note=f"kernel status {int(out.status[bad_row])}")
    return SampledLabels(ids[:total], counts[:total], indptr)
