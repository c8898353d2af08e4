"""The Triton sampler under ``TRITON_INTERPRET=1`` (CPU, small sizes) against the PyTorch reference.

``TRITON_INTERPRET`` is read when triton's kernels are decorated, so it must be set before triton is first
imported — and setting it inside a shared pytest process would also turn other modules' kernels (and the CUDA
tests) into interpreted ones. So in the main test run this module holds a single test that runs this same file
in a fresh process with the variable set; there, the real tests below are collected. By hand:
``TRITON_INTERPRET=1 python -m pytest -q tests/test_sampling_triton.py``.

Kernel and reference share the Philox stream, so the strongest check is equality: same ids, same counts, byte
for byte, across dtypes, temperatures, padding, ``-inf``, rounds from 1 to 255 and kernel geometries small
enough that one row spans many blocks, sub-tiles and pass-2 batches. Statistical tests of the kernel's own
output (chi-square, tail rate, temperature, padding) run too, at sizes the interpreter can afford.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

UNDER_INTERPRETER = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")

if not UNDER_INTERPRETER:

    @pytest.mark.slow
    def test_kernel_under_the_interpreter():
        """Runs this file's interpreter tests in a fresh process with TRITON_INTERPRET=1."""
        pytest.importorskip("triton")
        env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__).resolve())],
            cwd=Path(__file__).resolve().parents[1],
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-4000:]
        assert " passed" in result.stdout and "skipped" not in result.stdout, result.stdout[-2000:]

else:
    import torch
    import triton

    from sparselabels.errors import InputError
    from sparselabels.sampling.checks import prepare_sampling
    from sparselabels.sampling.reference import sample_counts_reference
    from sparselabels.sampling.testing import chi_square, pooled_counts
    from sparselabels.sampling.triton_kernel import KernelConfig, launch_sampler, sample_counts_triton

    P_MIN = 1e-3
    TINY = KernelConfig(sub=8, block=32, batch=1)  # many blocks, sub-tiles and pass-2 batches per row
    SMALL = KernelConfig(sub=16, block=64, batch=2)
    FLAT = KernelConfig(sub=32, block=32, batch=8)  # one sub-tile per block, wide batches
    # pass 1 inside the sampling kernel instead of its own kernel: the same draws
    TINY_ONE_KERNEL = KernelConfig(sub=8, block=32, batch=1, split=False)
    SMALL_ONE_KERNEL = KernelConfig(sub=16, block=64, batch=2, split=False)

    def test_running_under_the_interpreter():
        assert triton.knobs.runtime.interpret, "TRITON_INTERPRET=1 must be set before triton is imported"

    def _assert_same(kernel, reference):
        assert kernel.ids.dtype == torch.int32 and kernel.counts.dtype == torch.uint8
        assert kernel.indptr.dtype == torch.int64
        assert torch.equal(kernel.indptr, reference.indptr)
        assert torch.equal(kernel.ids, reference.ids)
        assert torch.equal(kernel.counts, reference.counts)

    def _logits(rows, vocab, seed, scale=3.0, dtype=torch.float32):
        g = torch.Generator().manual_seed(seed)
        return (torch.randn(rows, vocab, generator=g) * scale).to(dtype)

    def _case(name):
        """Inputs and sampling options of each equality case."""
        if name == "float32":
            return _logits(6, 1000, 1), {"seed": 3}
        if name == "bfloat16_temperature":
            return _logits(6, 1000, 2, dtype=torch.bfloat16), {"seed": 4, "temperature": 0.7}
        if name == "float16_padding":
            return _logits(6, 1003, 3, dtype=torch.float16), {"seed": 5, "temperature": 2.5, "vocab_size": 999}
        if name == "minus_inf":
            x = _logits(6, 777, 4)
            x[:, ::3] = float("-inf")
            x[2, :770] = float("-inf")  # finite logits only in the last, partial block
            x[3] = float("-inf")
            x[3, 0] = 1.0  # a single finite logit
            return x, {"seed": 6}
        if name == "huge_padding":
            x = _logits(6, 600, 5)
            x[:, 500:] = 1e4
            return x, {"seed": 7, "vocab_size": 500}
        if name == "peaked":
            x = _logits(6, 1500, 6, scale=1.5)
            x[:, 17] += 22.0
            x[:, 1200] += 19.0
            return x, {"seed": 8}
        if name == "multidim_row_ids":
            x = _logits(10, 300, 7).reshape(2, 5, 300)
            return x, {"seed": 9, "row_ids": torch.tensor([5, 9, 1, 2**40, 3, 7, 8, 100, 0, 2**62])}
        if name == "one_column":
            return torch.zeros(3, 1), {"seed": 1}
        if name == "extreme_finite":
            x = _logits(4, 300, 9)
            x[:, 7] = 3.0e38
            x[:, 100] = -3.0e38  # x - max overflows to -inf: weight 0, not NaN
            x[1, 250] = 3.0e38
            return x, {"seed": 4}
        if name == "row_stride":
            wide = _logits(5, 1100, 8)
            return wide[:, :1000], {"seed": 2}  # rows 1100 apart
        if name == "high_bit_seeds":  # both 32-bit halves >= 2**31: passed to the kernel as negative int32
            return _logits(4, 700, 10), {"seed": (0xDEADBEEF << 32) | 0x80000001}
        raise KeyError(name)

    CASES = [
        "float32",
        "bfloat16_temperature",
        "float16_padding",
        "minus_inf",
        "huge_padding",
        "peaked",
        "multidim_row_ids",
        "one_column",
        "extreme_finite",
        "row_stride",
        "high_bit_seeds",
    ]

    @pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # extreme_finite, on purpose
    @pytest.mark.parametrize("name", CASES)
    def test_kernel_equals_reference_byte_for_byte(name):
        x, options = _case(name)
        _assert_same(sample_counts_triton(x, 50, **options), sample_counts_reference(x, 50, **options))

    @pytest.mark.parametrize(
        "config",
        [TINY, SMALL, FLAT, TINY_ONE_KERNEL, SMALL_ONE_KERNEL],
        ids=["tiny", "small", "flat", "tiny-one-kernel", "small-one-kernel"],
    )
    @pytest.mark.parametrize("name", ["float16_padding", "minus_inf", "huge_padding", "peaked", "row_stride"])
    def test_kernel_geometry_does_not_change_the_draws(name, config):
        x, options = _case(name)
        x = x[:3]
        _assert_same(sample_counts_triton(x, 50, config=config, **options), sample_counts_reference(x, 50, **options))

    @pytest.mark.parametrize("rounds", [1, 2, 3, 63, 64, 65, 255])
    def test_kernel_equals_reference_for_any_rounds(rounds):
        x = _logits(3, 900, 10, scale=1.0)
        kernel = sample_counts_triton(x, rounds, seed=11, config=SMALL)
        _assert_same(kernel, sample_counts_reference(x, rounds, seed=11))
        assert torch.equal(
            torch.bincount(torch.repeat_interleave(torch.arange(3), kernel.indptr.diff()), kernel.counts.long()),
            torch.full((3,), rounds),
        )

    def test_kernel_on_wide_rows_equals_reference():
        """Default geometry at a real vocabulary size: ~1000 sub-tiles, 16-ary search over 3 levels."""
        x = _logits(2, 128256, 12, scale=2.0, dtype=torch.bfloat16)
        _assert_same(sample_counts_triton(x, 50, seed=13), sample_counts_reference(x, 50, seed=13))

    # ---- statistics of the kernel's own output ---------------------------------------------------------------

    def _repeated(row, rows):
        return row.unsqueeze(0).expand(rows, -1).contiguous()

    def test_kernel_pooled_counts_match_softmax():
        row = _logits(1, 200, 20, scale=2.5)[0]
        labels = sample_counts_triton(_repeated(row, 120), 50, seed=21)
        observed = pooled_counts(labels.ids, labels.counts, 200)
        assert chi_square(observed, torch.softmax(row.double(), -1)).pvalue > P_MIN
        assert chi_square(observed, torch.softmax(row.double() / 1.25, -1)).pvalue < 1e-6

    def test_kernel_tail_rate():
        """1e-2 of the mass over 20,000 ids (5e-7 each), behind a heavy head in the same sub-tiles."""
        head, tail, tail_mass = 8, 20_000, 1e-2
        probs = torch.cat([torch.full((head,), (1 - tail_mass) / head), torch.full((tail,), tail_mass / tail)])
        row = torch.log(probs.double()).float()
        rows, rounds = 40, 255
        labels = sample_counts_triton(_repeated(row, rows), rounds, seed=22)
        observed = pooled_counts(labels.ids, labels.counts, head + tail)
        n = rows * rounds
        expected, sd = n * tail_mass, math.sqrt(n * tail_mass * (1 - tail_mass))
        assert abs(float(observed[head:].sum()) - expected) < 4 * sd
        assert chi_square(observed, probs).pvalue > P_MIN

    def test_kernel_honours_temperature_and_vocab_size():
        row = _logits(1, 100, 23, scale=2.0)[0]
        row[90:] = 1e4  # padding
        labels = sample_counts_triton(_repeated(row, 120), 50, seed=24, temperature=0.6, vocab_size=90)
        observed = pooled_counts(labels.ids, labels.counts, 100)
        assert float(observed[90:].sum()) == 0
        assert chi_square(observed[:90], torch.softmax(row[:90].double() / 0.6, -1)).pvalue > P_MIN
        assert chi_square(observed[:90], torch.softmax(row[:90].double(), -1)).pvalue < 1e-6

    # ---- determinism, row identity, errors -------------------------------------------------------------------

    def test_kernel_rows_do_not_depend_on_the_batch():
        x = _logits(9, 400, 30)
        ids = torch.arange(50, 59)
        whole = sample_counts_triton(x, 50, seed=31, row_ids=ids)
        order = torch.tensor([8, 2, 5])
        part = sample_counts_triton(x[order], 50, seed=31, row_ids=ids[order])
        for i, r in enumerate(order.tolist()):
            assert torch.equal(part.row(i)[0], whole.row(r)[0]) and torch.equal(part.row(i)[1], whole.row(r)[1])
        again = sample_counts_triton(x, 50, seed=31, row_ids=ids)
        assert torch.equal(again.ids, whole.ids) and torch.equal(again.counts, whole.counts)

    @pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # NaN rows, on purpose
    @pytest.mark.parametrize("config", [SMALL, SMALL_ONE_KERNEL], ids=["split", "one-kernel"])
    def test_kernel_status_flags_bad_rows_and_the_error_names_them(config):
        x = _logits(6, 300, 40)
        x[1, 17] = float("nan")
        x[3, 299] = float("inf")
        x[4] = float("-inf")
        out = launch_sampler(prepare_sampling(x, 50, 1.0, None, 1, None), config)
        assert out.status.tolist() == [0, 1, 0, 1, 2, 0]
        assert int(out.info[-1]) == 2  # the any-bad flag is the max status
        runs = out.info[1:-1]
        assert runs[[1, 3, 4]].tolist() == [0, 0, 0] and bool((runs[[0, 2, 5]] > 0).all())
        with pytest.raises(InputError, match=r"logits row 1 has NaN at column 17"):
            sample_counts_triton(x, 50, seed=1, config=config)
        y = x.reshape(2, 3, 300).clone()
        y[0, 1, 17] = 0.0
        with pytest.raises(InputError, match=r"logits row 3 \(index \(1, 0\)\) has \+inf at column 299"):
            sample_counts_triton(y, 50, seed=1)
        z = _logits(2, 300, 41)
        z[1, :290] = float("-inf")
        with pytest.raises(InputError, match=r"logits row 1 has no finite logit among its first 290 columns"):
            sample_counts_triton(z, 50, seed=1, vocab_size=290)

    def test_kernel_refuses_a_temperature_its_float32_scale_cannot_hold():
        with pytest.raises(InputError, match="too small for the kernel"):
            sample_counts_triton(torch.zeros(2, 10), 5, seed=0, temperature=1e-39)
        assert sample_counts_reference(torch.randn(2, 10), 5, seed=0, temperature=1e-39).num_rows == 2

    def test_kernel_rejects_float64():
        with pytest.raises(InputError, match="float32/bfloat16/float16"):
            sample_counts_triton(torch.zeros(2, 10, dtype=torch.float64), 5, seed=0)

    def test_kernel_zero_rows():
        labels = sample_counts_triton(torch.empty(0, 50), 50, seed=0)
        assert labels.num_rows == 0 and labels.indptr.tolist() == [0]
